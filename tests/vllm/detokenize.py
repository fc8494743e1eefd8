"""vLLM 0.32's streaming detokenizer as a co-process: what text each generated token gives.

Run with the vLLM environment's python (it has ``tokenizers``)::

    .venv-vllm/bin/python tests/vllm/detokenize.py TOKENIZER_JSON

One JSON request a line on stdin, one JSON answer a line on stdout:

- ``{"encode": TEXT}`` -> the text's token ids (no special tokens added);
- ``{"prompt": IDS, "ids": IDS}`` -> the text each of ``ids`` gives when streamed after
  ``prompt``, as vLLM streams it: ``tokenizers.decoders.DecodeStream`` primed with the prompt
  (``vllm.v1.engine.detokenizer.FastIncrementalDetokenizer``), a fresh stream after an
  "Invalid prefix" error, ``""`` for a token whose bytes it holds back.

When the prompt ends with bytes that are no whole character, the first text is the whole
prompt's (the echo ``spotd.lb.sse.Splicer`` drops)."""

from __future__ import annotations

import json
import sys


def main() -> None:
    from tokenizers import Tokenizer
    from tokenizers.decoders import DecodeStream

    tok = Tokenizer.from_file(sys.argv[1])
    for line in sys.stdin:
        req = json.loads(line)
        if "encode" in req:
            out: object = tok.encode(req["encode"], add_special_tokens=False).ids
        else:
            stream = DecodeStream(ids=req["prompt"], skip_special_tokens=True)
            texts = []
            for t in req["ids"]:
                try:
                    got = stream.step(tok, t)
                except Exception as e:  # what vLLM recovers from, as vLLM does
                    if not str(e).startswith("Invalid prefix encountered"):
                        raise
                    stream = DecodeStream(skip_special_tokens=True)
                    got = stream.step(tok, t)
                texts.append(got or "")
            out = texts
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
