"""OpenAI endpoints of real vLLM CPU replicas, through the spotd load balancer: plain and
streamed completions, chat completions; deterministic at temperature 0, so the answer through
the LB is the one each replica gives directly."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from .conftest import TIER_TIMEOUT_S, Service, http_json

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(TIER_TIMEOUT_S)]

MAX_TOKENS = 16
PROMPT = "The load balancer sends each request to"
MESSAGES = [
    {"role": "system", "content": "You are a tiny model."},
    {"role": "user", "content": "Hello! How are you today?"},
]


def completion(base: str, model: str, **extra: Any) -> dict[str, Any]:
    body = {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "ignore_eos": True,
        **extra,
    }
    status, data = http_json("POST", f"{base}/v1/completions", body, timeout=60)
    assert status == 200, data
    return data  # type: ignore[no-any-return]


def chat(base: str, model: str) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": MESSAGES,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "ignore_eos": True,
    }
    status, data = http_json("POST", f"{base}/v1/chat/completions", body, timeout=60)
    assert status == 200, data
    return data  # type: ignore[no-any-return]


def sse(url: str, body: dict[str, Any]) -> tuple[str, list[str]]:
    """POST and read a server-sent-event answer: (content type, the `data:` payloads)."""
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    events: list[str] = []
    with urllib.request.urlopen(req, timeout=60) as r:
        ctype = r.headers.get("Content-Type", "")
        for raw in r:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("data:"):
                events.append(line[len("data:") :].strip())
    return ctype, events


def test_models_listed_through_the_lb(vllm_service: Service) -> None:
    status, data = http_json("GET", f"{vllm_service.url}/v1/models")
    assert status == 200, data
    assert [m["id"] for m in data["data"]] == [vllm_service.model]


def test_completion_through_lb_is_the_direct_answer(vllm_service: Service) -> None:
    direct = [completion(r.url, vllm_service.model) for r in vllm_service.replicas]
    texts = {d["choices"][0]["text"] for d in direct}
    assert len(texts) == 1, f"the two replicas disagree at temperature 0: {texts}"
    (expected,) = texts
    assert expected  # random weights, but MAX_TOKENS tokens of something
    for _ in range(4):  # least-load spreads these over both replicas
        via_lb = completion(vllm_service.url, vllm_service.model)
        assert via_lb["object"] == "text_completion"
        assert via_lb["model"] == vllm_service.model
        assert via_lb["choices"][0]["text"] == expected
        assert via_lb["choices"][0]["finish_reason"] == "length"
        assert via_lb["usage"]["completion_tokens"] == MAX_TOKENS
        assert via_lb["usage"]["prompt_tokens"] == direct[0]["usage"]["prompt_tokens"] > 0
        assert via_lb["usage"]["total_tokens"] == MAX_TOKENS + direct[0]["usage"]["prompt_tokens"]
    rows = vllm_service.lb.replicas()
    assert all(row["in_flight"] == 0 and not row["ejected"] for row in rows.values()), rows


def test_streamed_completion_through_lb(vllm_service: Service) -> None:
    plain = completion(vllm_service.replicas[0].url, vllm_service.model)
    body = {
        "model": vllm_service.model,
        "prompt": PROMPT,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    ctype, events = sse(f"{vllm_service.url}/v1/completions", body)
    assert ctype.startswith("text/event-stream"), ctype
    assert events[-1] == "[DONE]", events[-3:]
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["text"] for c in chunks if c.get("choices"))
    assert text == plain["choices"][0]["text"]
    usage = [c["usage"] for c in chunks if c.get("usage")]
    # Tokens are counted from `usage`, not from the number of chunks.
    assert usage[-1]["completion_tokens"] == MAX_TOKENS
    assert usage[-1]["prompt_tokens"] == plain["usage"]["prompt_tokens"]
    assert len([c for c in chunks if c.get("choices")]) >= 2  # really streamed, in pieces


def test_chat_completion_through_lb_is_the_direct_answer(vllm_service: Service) -> None:
    direct = [chat(r.url, vllm_service.model) for r in vllm_service.replicas]
    contents = {d["choices"][0]["message"]["content"] for d in direct}
    assert len(contents) == 1, contents
    for _ in range(2):
        via_lb = chat(vllm_service.url, vllm_service.model)
        assert via_lb["object"] == "chat.completion"
        msg = via_lb["choices"][0]["message"]
        assert msg["role"] == "assistant"
        assert msg["content"] in contents
        assert via_lb["usage"]["completion_tokens"] == MAX_TOKENS
        # the chat template's role markers count as prompt tokens
        assert via_lb["usage"]["prompt_tokens"] == direct[0]["usage"]["prompt_tokens"]
        assert via_lb["usage"]["prompt_tokens"] > 10


def test_streamed_chat_completion_through_lb(vllm_service: Service) -> None:
    plain = chat(vllm_service.replicas[1].url, vllm_service.model)
    body = {
        "model": vllm_service.model,
        "messages": MESSAGES,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    ctype, events = sse(f"{vllm_service.url}/v1/chat/completions", body)
    assert ctype.startswith("text/event-stream"), ctype
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")
    )
    assert text == plain["choices"][0]["message"]["content"]
    assert [c["usage"] for c in chunks if c.get("usage")][-1]["completion_tokens"] == MAX_TOKENS
