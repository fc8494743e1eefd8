"""What the LB reads in an OpenAI-style request body, and the request that continues a stream.

The LB parses a JSON body only where it must: for ``prefix_aware`` routing (the prompt's
start) and for a stream it may have to continue on another replica (``/v1/completions`` and
``/v1/chat/completions`` with ``"stream": true``). Bodies are read only when they were
buffered anyway (``LBConfig.buffer_limit``, 1 MiB): a larger body is never parsed and such a
request is routed and relayed as any other.

Prefix key (``prefix_key``): the model name, then the text the model sees first — the prompt,
or the chat messages in order (``role: content``, system prompt included) — cut to
``chars`` characters. Token-id prompts use their first ``chars // 4`` ids. Two requests that
share a system prompt of more than ``chars`` characters get the same key whatever follows.

Continuation (``continuation``): when a stream must move, the new request asks for the rest
of the same answer:

- with the token ids the replica sent (vLLM's ``return_token_ids``, which the LB asks for):
  ``POST /v1/completions`` with ``prompt`` = the prompt's token ids + the ids generated so
  far — exact, whatever the tokenizer would make of the text — for completions and chat
  alike (a chat answer is then converted back into chat chunks, ``sse.Splicer``);
- without ids (another server): completions re-send ``prompt + text so far``; chat appends
  the partial assistant message with ``continue_final_message: true,
  add_generation_prompt: false``.

``max_tokens`` (and ``min_tokens``) shrink by the tokens already generated.

Cost (``estimate_tokens``, for ``least_tokens`` routing): what a request will occupy on its
replica, in tokens, before anything is tokenized — the prompt (token ids counted; text, chat
messages included, at 4 characters a token) plus the most it may generate (``max_tokens`` or
``max_completion_tokens``; when absent, 16 for completions as the API says, and
``ASSUMED_CHAT_MAX_TOKENS`` for chat, whose real limit is the model's context), times ``n``
and the prompts in a batch.
A prompt of 4,000 characters asking for 1,000 tokens costs 2,000; ``"hi"`` with
``max_tokens`` 30 costs 30. A continuation costs what its stream had left (its longer prompt
and shorter ``max_tokens`` add up to the same).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Generated",
    "LlmKind",
    "LlmRequest",
    "continuable",
    "continuation",
    "estimate_tokens",
    "llm_kind",
    "parse_llm_request",
    "prefix_key",
    "prompt_mark",
    "upstream_body",
]

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's and vLLM's default for /v1/completions
# what a chat request without max_tokens is assumed to generate (the server's limit is the
# model's context; a typical chat answer is a few hundred tokens)
ASSUMED_CHAT_MAX_TOKENS = 512
CHARS_PER_TOKEN = 4  # English text under common BPE tokenizers, roughly

# sampling parameters a chat request's continuation on /v1/completions keeps
_SAMPLING = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "stop",
    "stop_token_ids",
    "ignore_eos",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "include_stop_str_in_output",
    "logit_bias",
    "stream_options",
)
# chat features a completions request cannot carry: such a chat continues as chat (by text)
_CHAT_ONLY = ("tools", "tool_choice", "response_format", "logprobs", "top_logprobs")


class LlmKind(enum.StrEnum):
    COMPLETIONS = "completions"
    CHAT = "chat"


def llm_kind(path: str) -> LlmKind | None:
    """``/v1/completions`` or ``/v1/chat/completions`` (query string ignored), else None."""
    path = path.split("?", 1)[0].rstrip("/")
    if path.endswith("/v1/chat/completions"):
        return LlmKind.CHAT
    if path.endswith("/v1/completions"):
        return LlmKind.COMPLETIONS
    return None


@dataclass(frozen=True, slots=True)
class LlmRequest:
    kind: LlmKind
    path: str  # the request's raw path (continuations of completions go to the same one)
    body: Mapping[str, Any]
    stream: bool
    wants_ids: bool  # the client itself asked for ``return_token_ids``


def parse_llm_request(path: str, body: bytes | None) -> LlmRequest | None:
    """The request as an LLM request, or None (another path, no body, not a JSON object)."""
    kind = llm_kind(path)
    if kind is None or not body:
        return None
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    return LlmRequest(
        kind=kind,
        path=path,
        body=obj,
        stream=obj.get("stream") is True,
        wants_ids=obj.get("return_token_ids") is True,
    )


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, {"type": "image_url"...}]
        return "".join(str(p.get("text", "")) if isinstance(p, Mapping) else "" for p in content)
    return ""


PROMPT_MARK_CHARS = 32  # see prompt_mark


def prompt_mark(req: LlmRequest) -> str | None:
    """The end of ``req``'s prompt as the client wrote it (at most ``PROMPT_MARK_CHARS``
    characters, stripped): of the last message's text (its last text part), or of a text
    prompt; None for a prompt of token ids. A replica's echo of the prompt holds it
    (``sse.Splicer._unecho``)."""
    body = req.body
    if req.kind is LlmKind.CHAT:
        messages = body.get("messages")
        last = messages[-1] if isinstance(messages, list) and messages else None
        content = last.get("content") if isinstance(last, Mapping) else None
        if isinstance(content, list):  # the last text part (templates join parts with "\n")
            texts = [p.get("text") for p in content if isinstance(p, Mapping)]
            content = next((t for t in reversed(texts) if isinstance(t, str) and t.strip()), "")
        text = _content_text(content)
    else:
        text = _text_prompt(body) or ""
    text = text.strip()
    return text[-PROMPT_MARK_CHARS:] if text else None


def prefix_key(req: LlmRequest, chars: int) -> str | None:
    """The routing key of ``req`` for ``prefix_aware``: model + the prompt's first ``chars``
    characters (None when there is no prompt to read)."""
    body = req.body
    model = str(body.get("model", ""))
    if req.kind is LlmKind.CHAT:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return None
        parts: list[str] = []
        size = 0
        for m in messages:
            if not isinstance(m, Mapping):
                continue
            part = f"{m.get('role', '')}: {_content_text(m.get('content'))}\n"
            parts.append(part)
            size += len(part)
            if size >= chars:
                break
        text = "".join(parts)
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
            prompt = prompt[0]  # a batch: the first prompt routes it
        if isinstance(prompt, list):  # token ids
            return f"{model}\x00ids:" + ",".join(map(str, prompt[: max(1, chars // 4)]))
        if not isinstance(prompt, str):
            return None
        text = prompt
    return f"{model}\x00{text[:chars]}"


def _prompt_tokens(prompt: Any) -> tuple[int, int]:
    """(tokens, prompts) of a completions ``prompt``: text, token ids, or a batch of them."""
    if isinstance(prompt, str):
        return len(prompt) // CHARS_PER_TOKEN, 1
    if isinstance(prompt, list):
        if all(isinstance(t, int) for t in prompt):
            return len(prompt), 1  # token ids
        tokens = prompts = 0
        for p in prompt:  # a batch of prompts
            t, k = _prompt_tokens(p)
            tokens, prompts = tokens + t, prompts + k
        return tokens, prompts
    return 0, 1


def _int_field(body: Mapping[str, Any], *keys: str) -> int | None:
    for key in keys:
        v = body.get(key)
        if isinstance(v, int) and not isinstance(v, bool):
            return max(0, v)
    return None


def estimate_tokens(req: LlmRequest) -> int:
    """The tokens ``req`` will occupy on its replica: prompt + the most it may generate, at
    least 1 (see the module docstring)."""
    body = req.body
    prompts = 1
    if req.kind is LlmKind.CHAT:
        prompt = 0
        messages = body.get("messages")
        if isinstance(messages, list):
            chars = sum(
                len(_content_text(m.get("content"))) for m in messages if isinstance(m, Mapping)
            )
            prompt = chars // CHARS_PER_TOKEN
        limit = _int_field(body, "max_completion_tokens", "max_tokens")
        out = ASSUMED_CHAT_MAX_TOKENS if limit is None else limit
    else:
        prompt, prompts = _prompt_tokens(body.get("prompt"))
        limit = _int_field(body, "max_tokens")
        out = COMPLETIONS_DEFAULT_MAX_TOKENS if limit is None else limit
    n = _int_field(body, "n") or 1
    return max(1, prompt + out * n * max(1, prompts))


def continuable(req: LlmRequest) -> bool:
    """Can this request's stream be continued elsewhere? One choice (``n`` 1), a stream."""
    n = req.body.get("n", 1)
    if not req.stream or (n not in (None, 1)):
        return False
    if req.kind is LlmKind.COMPLETIONS:
        prompt = req.body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            return True
        return isinstance(prompt, str) or (
            isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)
        )
    return isinstance(req.body.get("messages"), list)


def upstream_body(req: LlmRequest) -> dict[str, Any]:
    """The body sent to the first replica: the client's, asking for token ids as well."""
    return {**req.body, "return_token_ids": True}


@dataclass(frozen=True, slots=True)
class Generated:
    """What a stream produced before it moved."""

    text: str = ""
    token_ids: tuple[int, ...] | None = None  # None: the replica sent no ids
    prompt_token_ids: tuple[int, ...] | None = None
    tokens: int = 0  # tokens generated (ids counted, else events with text)


def _limit_left(body: Mapping[str, Any], key: str, done: int) -> int | None:
    v = body.get(key)
    return max(0, int(v) - done) if isinstance(v, int) else None


def _stops(body: Mapping[str, Any]) -> bool:
    """Does vLLM hold back text for the request's stop strings? Their longest length less one
    characters, unless the stop string goes out with the answer
    (``include_stop_str_in_output``)."""
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    longest = max((len(s) for s in stops if isinstance(s, str)), default=0)
    return longest > 1 and body.get("include_stop_str_in_output") is not True


def _text_prompt(body: Mapping[str, Any]) -> str | None:
    """A completions request's prompt as text (None: token ids, or no prompt)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    return prompt if isinstance(prompt, str) else None


def continuation(req: LlmRequest, gen: Generated) -> tuple[str, dict[str, Any], bool]:
    """``(path, body, as_completions)``: the request for the rest of ``req``'s answer.

    ``as_completions`` is True when a chat request continues on ``/v1/completions`` (by
    token ids); its chunks must then be converted back into chat chunks."""
    body = dict(req.body)
    body.pop("echo", None)
    ids = gen.token_ids is not None and gen.prompt_token_ids is not None
    if ids and _stops(body) and (req.kind is LlmKind.CHAT or _text_prompt(body) is not None):
        # vLLM holds back the answer's last characters (the longest stop string's length less
        # one): the ids carry tokens whose text the client never got. Continued by text, that
        # text is made again and a stop string across the cut is still seen; by ids, not.
        ids = False
    if req.kind is LlmKind.CHAT and ids and not any(k in body for k in _CHAT_ONLY):
        assert gen.token_ids is not None and gen.prompt_token_ids is not None
        out: dict[str, Any] = {k: body[k] for k in _SAMPLING if k in body}
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        out.update(
            model=body.get("model"),
            prompt=[*gen.prompt_token_ids, *gen.token_ids],
            max_tokens=max(0, int(limit) - gen.tokens) if isinstance(limit, int) else None,
            stream=True,
            return_token_ids=True,
        )
        if isinstance(body.get("min_tokens"), int):
            out["min_tokens"] = max(0, body["min_tokens"] - gen.tokens)
        base = req.path.split("?", 1)[0].rstrip("/")[: -len("/chat/completions")]
        return base + "/completions", out, True
    for key in ("max_tokens", "max_completion_tokens", "min_tokens"):
        left = _limit_left(body, key, gen.tokens)
        if left is not None:
            body[key] = left
    if req.kind is LlmKind.COMPLETIONS:
        if "max_tokens" not in body:
            body["max_tokens"] = max(0, COMPLETIONS_DEFAULT_MAX_TOKENS - gen.tokens)
        if ids:
            assert gen.token_ids is not None and gen.prompt_token_ids is not None
            body["prompt"] = [*gen.prompt_token_ids, *gen.token_ids]
            body["return_token_ids"] = True  # a later handoff continues from these ids too
        else:
            prompt = _text_prompt(body)
            if prompt is None:  # token ids, but the replica sent none back
                raise ValueError("a token-id prompt needs the replica's token ids to continue")
            body["prompt"] = f"{prompt}{gen.text}"
        return req.path, body, False
    messages = list(body.get("messages") or [])
    if gen.tokens or gen.text:
        messages.append({"role": "assistant", "content": gen.text})
        body.update(continue_final_message=True, add_generation_prompt=False)
    body["messages"] = messages
    return req.path, body, False
