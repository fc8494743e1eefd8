"""Build a tiny Llama model that vLLM can serve, in a few seconds, with no download.

Run with the vLLM environment's python (it needs torch, tokenizers and transformers, which the
spotd venv does not have)::

    .venv-vllm/bin/python tests/vllm/tiny_model.py OUT_DIR
    .venv-vllm/bin/python tests/vllm/tiny_model.py OUT_DIR --hidden 512 --heads 8 --layers 4 \
        --max-positions 2048   # larger, where prefill must cost something (bench/llm_serving.py)

What it writes to OUT_DIR: a byte-level BPE tokenizer trained on a few sentences, wrapped as a
``PreTrainedTokenizerFast`` with a chat template, and a randomly initialised (seeded)
``LlamaForCausalLM``: hidden 64, 2 heads of 32 (vLLM's CPU attention needs a head size of 32
or more: 16 passes /health, then the first request kills the engine), 2 layers, float32. Its
output is random tokens, the same ones every time at temperature 0 — enough for serving tests.
"""

from __future__ import annotations

import json
from pathlib import Path

SENTENCES = [
    "spotd runs AI workloads on spot capacity as if it were reliable.",
    "A managed job survives preemption: it is relaunched in another zone and resumes.",
    "A service keeps its replicas behind a load balancer that retries and drains.",
    "The quick brown fox jumps over the lazy dog, again and again.",
    "Hello! How are you today? I am a tiny model with random weights.",
    "user assistant system: the chat template wraps every message in role markers.",
    "0123456789 + - * / = ( ) [ ] { } < > , . ; : ' \" ! ? @ # $ % ^ & _ ~",
]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

SPECIAL = ["<s>", "</s>", "<unk>", "<pad>"]


def build(
    out: Path,
    *,
    vocab_size: int = 512,
    hidden: int = 64,
    heads: int = 2,
    layers: int = 2,
    seed: int = 0,
    max_positions: int = 256,
) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(SENTENCES * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=max_positions,
    )
    fast.save_pretrained(out)

    assert hidden // heads >= 32, "vLLM's CPU attention needs a head size of 32 or more"
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    # Random init gives nearly uniform logits; widen them so greedy decoding has clear winners
    # (temperature-0 output then does not hinge on float rounding between batch shapes).
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    model.save_pretrained(out, safe_serialization=True)
    (out / "spotd-tiny-model.json").write_text(
        json.dumps(
            {
                "vocab_size": len(fast),
                "hidden": hidden,
                "heads": heads,
                "layers": layers,
                "seed": seed,
            }
        )
    )
    return out


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--max-positions", type=int, default=256)
    a = ap.parse_args()
    print(
        build(
            Path(a.out),
            hidden=a.hidden,
            heads=a.heads,
            layers=a.layers,
            max_positions=a.max_positions,
        )
    )
