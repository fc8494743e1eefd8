"""What the LB reads in an LLM request: the prefix it routes on, and the request that continues
a stream elsewhere (tables of request + what was generated -> the continuation)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from spotd.lb.openai import (
    Generated,
    LlmKind,
    continuable,
    continuation,
    llm_kind,
    parse_llm_request,
    prefix_key,
    prompt_mark,
)

SYSTEM = "You are a helpful assistant for the spotd project. " * 10  # 510 characters


def req(path: str, body: dict[str, Any]) -> Any:
    parsed = parse_llm_request(path, json.dumps(body).encode())
    assert parsed is not None
    return parsed


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/v1/completions", LlmKind.COMPLETIONS),
        ("/v1/chat/completions", LlmKind.CHAT),
        ("/v1/chat/completions?x=1", LlmKind.CHAT),
        ("/openai/v1/completions/", LlmKind.COMPLETIONS),
        ("/v1/embeddings", None),
        ("/health", None),
    ],
)
def test_llm_kind(path: str, kind: LlmKind | None) -> None:
    assert llm_kind(path) is kind


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[1, 2]", b'"text"'],
    ids=["empty", "not-json", "a-list", "a-string"],
)
def test_unreadable_bodies_are_not_llm_requests(body: bytes) -> None:
    assert parse_llm_request("/v1/completions", body) is None


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        # a long shared system prompt: the same key whatever the user asks
        (
            {
                "model": "m",
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": "one"},
                ],
            },
            {
                "model": "m",
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": "two"},
                ],
            },
            True,
        ),
        # another system prompt: another key
        (
            {"model": "m", "messages": [{"role": "system", "content": SYSTEM}]},
            {"model": "m", "messages": [{"role": "system", "content": "Be terse. " + SYSTEM}]},
            False,
        ),
        # content as parts reads as the same text
        (
            {"model": "m", "messages": [{"role": "system", "content": SYSTEM}]},
            {
                "model": "m",
                "messages": [{"role": "system", "content": [{"type": "text", "text": SYSTEM}]}],
            },
            True,
        ),
        # another model never shares a cache
        (
            {"model": "m", "prompt": SYSTEM + "q1"},
            {"model": "other", "prompt": SYSTEM + "q1"},
            False,
        ),
        # completions: the prompt's start
        ({"model": "m", "prompt": SYSTEM + "q1"}, {"model": "m", "prompt": SYSTEM + "q2"}, True),
        ({"model": "m", "prompt": "short one"}, {"model": "m", "prompt": "short two"}, False),
        # token-id prompts: their first ids
        (
            {"model": "m", "prompt": list(range(200))},
            {"model": "m", "prompt": [*range(100), 7]},
            True,
        ),
    ],
)
def test_prefix_key(a: dict[str, Any], b: dict[str, Any], same: bool) -> None:
    path = "/v1/chat/completions" if "messages" in a else "/v1/completions"
    ka, kb = prefix_key(req(path, a), 256), prefix_key(req(path, b), 256)
    assert ka is not None and kb is not None
    assert (ka == kb) is same


@pytest.mark.parametrize(
    ("path", "body", "mark"),
    [
        ("/v1/completions", {"prompt": "  the quick brown fox \n"}, "the quick brown fox"),
        ("/v1/completions", {"prompt": ["a prompt"]}, "a prompt"),
        ("/v1/completions", {"prompt": [1, 2, 3]}, None),  # token ids: no text to look for
        ("/v1/completions", {"prompt": "x" * 40 + "the end"}, ("x" * 40 + "the end")[-32:]),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi?"}]},
            "hi?",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "look"}]}]},
            "look",
        ),
        (  # the last text part: templates join parts with a newline
            "/v1/chat/completions",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "A document about boats."},
                            {"type": "text", "text": "Summarize it."},
                            {"type": "image_url", "image_url": {"url": "x"}},
                        ],
                    }
                ]
            },
            "Summarize it.",
        ),
        ("/v1/chat/completions", {"messages": []}, None),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "  "}]}, None),
    ],
)
def test_prompt_mark_is_the_end_of_the_clients_prompt(
    path: str, body: dict[str, Any], mark: str | None
) -> None:
    assert prompt_mark(req(path, {"model": "m", **body})) == mark


def test_no_prompt_no_prefix() -> None:
    assert prefix_key(req("/v1/chat/completions", {"model": "m", "messages": []}), 256) is None
    assert prefix_key(req("/v1/completions", {"model": "m"}), 256) is None


@pytest.mark.parametrize(
    ("path", "body", "ok"),
    [
        ("/v1/completions", {"prompt": "x", "stream": True}, True),
        ("/v1/completions", {"prompt": ["x"], "stream": True}, True),
        ("/v1/completions", {"prompt": [1, 2, 3], "stream": True}, True),
        ("/v1/completions", {"prompt": ["x", "y"], "stream": True}, False),  # a batch
        ("/v1/completions", {"prompt": "x", "stream": True, "n": 2}, False),
        ("/v1/completions", {"prompt": "x"}, False),  # not a stream
        ("/v1/chat/completions", {"messages": [], "stream": True}, True),
    ],
)
def test_continuable(path: str, body: dict[str, Any], ok: bool) -> None:
    assert continuable(req(path, body)) is ok


IDS = Generated(text=" b c", token_ids=(8, 9), prompt_token_ids=(1, 2, 3), tokens=2)
TEXT = Generated(text=" t0 t1 t2", tokens=3)


@pytest.mark.parametrize(
    ("path", "body", "gen", "want_path", "want", "as_completions"),
    [
        # completions with the replica's ids: prompt ids + generated ids, max_tokens shrinks
        (
            "/v1/completions",
            {"model": "m", "prompt": "a", "max_tokens": 10, "stream": True, "echo": True},
            IDS,
            "/v1/completions",
            {
                "model": "m",
                "prompt": [1, 2, 3, 8, 9],
                "max_tokens": 8,
                "stream": True,
                "return_token_ids": True,  # a second handoff needs this one's ids
            },
            False,
        ),
        # completions without ids: the text is appended; no max_tokens means OpenAI's 16
        (
            "/v1/completions",
            {"model": "m", "prompt": "hi", "stream": True},
            TEXT,
            "/v1/completions",
            {"model": "m", "prompt": "hi t0 t1 t2", "max_tokens": 13, "stream": True},
            False,
        ),
        # chat without ids: the partial assistant message, continued
        (
            "/v1/chat/completions",
            {
                "model": "m",
                "messages": [{"role": "user", "content": "q"}],
                "max_tokens": 5,
                "stream": True,
            },
            TEXT,
            "/v1/chat/completions",
            {
                "model": "m",
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": " t0 t1 t2"},
                ],
                "max_tokens": 2,
                "stream": True,
                "continue_final_message": True,
                "add_generation_prompt": False,
            },
            False,
        ),
        # chat with ids: on /v1/completions by token ids, sampling kept, chat-only fields not
        (
            "/v1/chat/completions",
            {
                "model": "m",
                "messages": [{"role": "user", "content": "q"}],
                "max_completion_tokens": 6,
                "temperature": 0,
                "seed": 3,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            IDS,
            "/v1/completions",
            {
                "model": "m",
                "prompt": [1, 2, 3, 8, 9],
                "max_tokens": 4,
                "temperature": 0,
                "seed": 3,
                "stream": True,
                "stream_options": {"include_usage": True},
                "return_token_ids": True,
            },
            True,
        ),
        # chat with tools cannot become a completions request: it continues as chat
        (
            "/v1/chat/completions",
            {"model": "m", "messages": [], "tools": [], "stream": True},
            IDS,
            "/v1/chat/completions",
            {
                "model": "m",
                "messages": [{"role": "assistant", "content": " b c"}],
                "tools": [],
                "stream": True,
                "continue_final_message": True,
                "add_generation_prompt": False,
            },
            False,
        ),
        # stop strings: vLLM held back text the ids carry; continued by text, it is made again
        (
            "/v1/completions",
            {"model": "m", "prompt": "a", "max_tokens": 10, "stop": ["\n\n"], "stream": True},
            IDS,
            "/v1/completions",
            {"model": "m", "prompt": "a b c", "max_tokens": 8, "stop": ["\n\n"], "stream": True},
            False,
        ),
        (
            "/v1/chat/completions",
            {"model": "m", "messages": [], "stop": "END", "stream": True},
            IDS,
            "/v1/chat/completions",
            {
                "model": "m",
                "messages": [{"role": "assistant", "content": " b c"}],
                "stop": "END",
                "stream": True,
                "continue_final_message": True,
                "add_generation_prompt": False,
            },
            False,
        ),
        # by ids still: a prompt of token ids has no text; nothing held back (no stop, stop
        # strings of one character, or stop strings sent with the answer)
        *[
            (
                "/v1/completions",
                {"model": "m", "prompt": prompt, "max_tokens": 4, **stop, "stream": True},
                IDS,
                "/v1/completions",
                {
                    "model": "m",
                    "prompt": [1, 2, 3, 8, 9],
                    "max_tokens": 2,
                    **stop,
                    "stream": True,
                    "return_token_ids": True,
                },
                False,
            )
            for prompt, stop in [
                ([1, 2, 3], {"stop": ["END"]}),
                ("a", {"stop": []}),
                ("a", {"stop": ["\n", "."]}),
                ("a", {"stop": "END", "include_stop_str_in_output": True}),
            ]
        ],
        # nothing generated yet (still in prefill): the same request again
        (
            "/v1/chat/completions",
            {"model": "m", "messages": [{"role": "user", "content": "q"}], "stream": True},
            Generated(),
            "/v1/chat/completions",
            {"model": "m", "messages": [{"role": "user", "content": "q"}], "stream": True},
            False,
        ),
    ],
)
def test_continuation(
    path: str,
    body: dict[str, Any],
    gen: Generated,
    want_path: str,
    want: dict[str, Any],
    as_completions: bool,
) -> None:
    assert continuation(req(path, body), gen) == (want_path, want, as_completions)


def test_a_token_id_prompt_without_ids_back_cannot_continue() -> None:
    with pytest.raises(ValueError, match="token ids"):
        continuation(req("/v1/completions", {"prompt": [1, 2], "stream": True}), TEXT)


# -- the cost least_tokens routes by: prompt (ids, or characters / 4) + what may be generated --


@pytest.mark.parametrize(
    ("path", "body", "tokens"),
    [
        # completions: 4,000 characters + max_tokens 1,000
        ("/v1/completions", {"prompt": "abcd" * 1000, "max_tokens": 1000}, 2000),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 30}, 30),
        # no max_tokens: the API's default of 16
        ("/v1/completions", {"prompt": "abcd" * 10}, 26),
        # token ids are counted as they are
        ("/v1/completions", {"prompt": list(range(300)), "max_tokens": 100}, 400),
        ("/v1/completions", {"prompt": [list(range(300))], "max_tokens": 100}, 400),
        # a batch of two prompts generates twice; n 3 generates three times
        ("/v1/completions", {"prompt": ["abcd" * 25, "abcd" * 75], "max_tokens": 10}, 120),
        ("/v1/completions", {"prompt": "abcd" * 25, "max_tokens": 10, "n": 3}, 55),
        # chat: every message's text; max_completion_tokens before max_tokens
        (
            "/v1/chat/completions",
            {
                "messages": [
                    {"role": "system", "content": "abcd" * 100},
                    {"role": "user", "content": [{"type": "text", "text": "abcd" * 50}]},
                ],
                "max_completion_tokens": 64,
                "max_tokens": 9999,
            },
            214,
        ),
        # chat without a limit: the LB assumes 512 tokens of answer
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "abcd" * 8}]}, 520),
        # nonsense limits count as absent or zero, never below 1 in all
        ("/v1/completions", {"prompt": "hi", "max_tokens": -5}, 1),
        ("/v1/completions", {"prompt": "hi", "max_tokens": True}, 16),
        ("/v1/completions", {"prompt": 7, "max_tokens": "many"}, 16),
        ("/v1/chat/completions", {"messages": "hello", "max_tokens": 0}, 1),
    ],
)
def test_estimate_tokens(path: str, body: dict[str, Any], tokens: int) -> None:
    from spotd.lb.openai import estimate_tokens

    assert estimate_tokens(req(path, body)) == tokens
