"""A moved stream reads as if it never moved, against vLLM's own streaming detokenizer.

vLLM 0.32 answers a continuation whose prompt ends with bytes that are no whole character
(a token it held back) with an echo of the whole prompt as its first text. In CI a stream
moved after such a token hidden inside an event of several tokens (vLLM merges the ones its
client has not read yet), and the client got the chat template, question and answer so far
a second time. Here random answers of the tiny model's tokenizer are streamed through
``detokenize.py`` (``tokenizers.DecodeStream``, primed as vLLM primes it), cut at random,
continued from what ``Splicer.generated`` hands on, and spliced; the client's text must be
the uninterrupted text. The seeds are fixed: the counts are the same every run.
"""

from __future__ import annotations

import json
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from spotd.lb.sse import ECHO_MIN_CHARS, Splicer

from .conftest import HERE, TIER_TIMEOUT_S

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(TIER_TIMEOUT_S)]

USER = "Stream 3: how are you today?"
# the chat template's rendering (tiny_model.CHAT_TEMPLATE), and what it decodes to
RENDERED = f"<s><|system|>\nYou are a tiny model.</s>\n<|user|>\n{USER}</s>\n<|assistant|>\n"
ECHO = RENDERED.replace("<s>", "").replace("</s>", "")
TRIALS = 3000


class Detokenizer:
    def __init__(self, python: str, tokenizer: Path) -> None:
        self.proc = subprocess.Popen(
            [python, str(HERE / "detokenize.py"), str(tokenizer)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, req: dict[str, object]) -> list[object]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "detokenize.py ended"
        out = json.loads(line)
        assert isinstance(out, list)
        return out

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def detok(vllm_python: str, tiny_model: Path) -> Iterator[Detokenizer]:
    d = Detokenizer(vllm_python, tiny_model / "tokenizer.json")
    yield d
    d.close()


def _event(text: str, ids: list[int]) -> bytes:
    choice = {"index": 0, "text": text, "token_ids": ids, "finish_reason": None}
    obj = {"id": "x", "object": "text_completion", "created": 1, "model": "m", "choices": [choice]}
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _events(texts: list[str], ids: list[int], rng: random.Random, merge: list[int]) -> list[bytes]:
    """The stream's events: tokens one an event, or ``merge``d as vLLM merges them."""
    out, i = [], 0
    while i < len(ids):
        k = min(len(ids) - i, rng.choice(merge))
        out.append(_event("".join(texts[i : i + k]), ids[i : i + k]))
        i += k
    return out


def _text(raw: bytes) -> str:
    return "".join(
        json.loads(e[6:])["choices"][0]["text"]
        for e in raw.split(b"\n\n")
        if e.startswith(b"data: {")
    )


def _run(detok: Detokenizer, merge: list[int], seed: int) -> dict[str, int]:
    prompt = [int(str(t)) for t in detok.ask({"encode": RENDERED})]
    rng = random.Random(seed)
    counts = {"echoed": 0, "wrong": 0, "wrong_long": 0}
    for _ in range(TRIALS):
        ids = [rng.randrange(4, 512) for _ in range(rng.randrange(2, 60))]
        cut = rng.randrange(1, len(ids))
        full = [str(t) for t in detok.ask({"prompt": prompt, "ids": ids})]
        sp = Splicer(chat=False, keep_ids=False, mark=USER)
        out = [sp.feed(e) for e in _events(full[:cut], ids[:cut], rng, merge)]
        gen = sp.generated()
        assert gen.token_ids is not None and ids[: len(gen.token_ids)] == list(gen.token_ids)
        rest = ids[len(gen.token_ids) :]
        texts = [str(t) for t in detok.ask({"prompt": prompt + list(gen.token_ids), "ids": rest})]
        counts["echoed"] += ECHO.strip() in "".join(texts)
        sp.begin_continuation(as_completions=False)
        out += [sp.feed(e) for e in _events(texts, rest, rng, merge)]
        if _text(b"".join(out)) != "".join(full):
            counts["wrong"] += 1
            counts["wrong_long"] += len("".join(full[:cut])) >= ECHO_MIN_CHARS
    return counts


def test_one_token_an_event_moves_without_an_echo(detok: Detokenizer) -> None:
    # the tokens held back at the cut are made again, not handed on: vLLM never echoes
    assert _run(detok, [1], seed=0) == {"echoed": 0, "wrong": 0, "wrong_long": 0}


def test_an_echo_after_merged_events_is_dropped(detok: Detokenizer) -> None:
    counts = _run(detok, [1, 1, 1, 2, 3], seed=0)
    assert counts["echoed"] > 50, counts  # the case CI met is here, many times over
    # every answer so far of 16 characters or more reads right; a shorter one may be found
    # in the new text instead (the echo is then cut short): rare, and counted here
    assert counts["wrong_long"] == 0, counts
    assert counts["wrong"] <= counts["echoed"] // 100, counts
    print(f"\nechoed continuations {counts['echoed']} of {TRIALS}, read wrong {counts['wrong']}")
