"""Splicing OpenAI SSE streams: the events the client gets when its stream moves replicas.

A stream is a sequence of *segments*: the first replica's answer, then — after each handoff
(``llmstream.py``) — the answer to a continuation request (``openai.continuation``). The
``Splicer`` sees every complete event (``data: ...\\n\\n``) of every segment, in order, and
returns what the client should get, so that the client sees one stream:

- every chunk carries the first segment's ``id``, ``object``, ``created`` and ``model``;
- a continuation's opening role chunk (``delta: {"role": "assistant", "content": ""}``) is
  dropped: the client had its role already;
- a chat answer continued on ``/v1/completions`` (by token ids) has its chunks turned back
  into chat chunks (``text`` -> ``delta.content``);
- ``usage`` counts the whole answer: the continuation's completion tokens plus those before;
- ``token_ids``/``prompt_token_ids``, which the LB asks for so it can continue exactly, are
  removed unless the client asked for them too;
- a segment is cut only between events, so no text is doubled or lost, and the only
  ``[DONE]`` the client sees is the last segment's;
- the last tokens that gave the client nothing (bytes of an unfinished character) are made
  again by the continuation rather than handed on (``generated``), and an echo of the prompt
  a replica sends anyway is dropped (``_unecho``).

The first segment's events pass through as they came (not re-encoded) unless there are ids
to remove; they are read only when a handoff needs them (``generated``).
"""

from __future__ import annotations

import json
from typing import Any

from .openai import Generated

__all__ = ["Splicer", "splice", "split_events"]

DONE = b"data: [DONE]\n\n"
CLEAN_RUN = 5  # see Splicer.clean_cut
ECHO_MIN_CHARS = 16  # see _echo_end
HELD_MAX = 8  # see Splicer.generated
_SEP = b"\n\n"


def split_events(buf: bytes) -> tuple[bytes, bytes]:
    """``(complete, rest)``: the complete events at the start of ``buf`` and what follows."""
    k = buf.rfind(_SEP)
    if k < 0:
        return b"", buf
    return buf[: k + 2], buf[k + 2 :]


def _data(event: bytes) -> bytes | None:
    """The ``data:`` payload of one event (None: a comment or another field only)."""
    out = [line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(out) if out else None


def _collapse(text: str) -> tuple[str, list[int]]:
    """``text`` with each run of U+FFFD as one, and where each of its characters was."""
    out: list[str] = []
    where: list[int] = []
    for i, ch in enumerate(text):
        if ch == "\ufffd" and out and out[-1] == "\ufffd":
            continue
        out.append(ch)
        where.append(i)
    return "".join(out), where


def _echo_end(got: str, answer: str, mark: str | None) -> int | None:
    """Where the echoed answer ends in ``got`` (a continuation's first text), or None when
    ``got`` is no echo: the answer's last occurrence, with the prompt's end (``mark``) before
    it, or else with enough text on one side of it that it is unlikely to be a repeat of the
    answer inside new text."""
    at = got.rfind(answer)
    if at <= 0:
        return None
    if mark is not None and got.find(_collapse(mark)[0], 0, at) >= 0:
        return at + len(answer)
    # no mark, or not found (a template that rewrites the message): by length alone
    long_enough = at >= ECHO_MIN_CHARS or len(answer) >= ECHO_MIN_CHARS
    return at + len(answer) if long_enough else None


def _encode(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + _SEP


class Splicer:
    """The state of one client stream across its segments (see the module docstring)."""

    def __init__(self, *, chat: bool, keep_ids: bool, mark: str | None = None) -> None:
        self.chat = chat  # the client asked /v1/chat/completions
        self.keep_ids = keep_ids  # the client asked for token ids itself
        self.mark = mark  # the end of the client's prompt (openai.prompt_mark), if known
        self.head: dict[str, Any] | None = None  # id, object, created, model of segment 0
        self.segment = 0
        self.as_completions = False  # this segment: completions chunks for a chat client
        self.tokens_before = 0  # tokens generated before this segment
        self.done = False  # [DONE] went to the client
        self.finished = False  # a finish_reason went to the client
        self._raw: list[bytes] = []  # segment-0 events passed through, not yet read
        self._text: list[str] = []
        self._ids: list[int] | None = None
        self._prompt_ids: tuple[int, ...] | None = None
        self._prompt_tokens: int | None = None
        self._tokens = 0
        self._role_sent = False
        self._events = 0  # events with a choice, all segments
        self._clean = 0  # ... of which the last ones whose text is whole characters
        self._held = 0  # token ids since the last text (their bytes held back, or no text)
        self._by_text = False  # a segment was continued by text: the ids are a prompt no more
        self._echo: str | None = None  # a continuation's answer so far, which an echo ends with

    # -- what the client gets --------------------------------------------------------------
    def feed(self, block: bytes) -> bytes:
        """``block``: one or more complete events of the current segment -> the bytes for the
        client (possibly empty)."""
        if b"data: [DONE]" in block:
            self.done = True
        if self.segment == 0 and (self.keep_ids or b'token_ids"' not in block):
            self._raw.append(block)  # read later, only if the stream moves
            return block
        out: list[bytes] = []
        for event in block.split(_SEP)[:-1]:
            got = self._event(event + _SEP)
            if got:
                out.append(got)
        return b"".join(out)

    def _event(self, event: bytes) -> bytes | None:
        payload = _data(event)
        if payload is None:
            return event
        if payload == b"[DONE]":
            return DONE
        try:
            obj = json.loads(payload)
        except ValueError:
            return event
        if not isinstance(obj, dict) or "error" in obj:
            return event
        if self._echo is not None:
            self._unecho(obj)
        self._observe(obj)
        if self.segment == 0:
            self._strip(obj)
            return _encode(obj)
        return self._rewrite(obj)

    def _unecho(self, obj: dict[str, Any]) -> None:
        """The first text of a continuation, which vLLM may open with an echo of its whole
        prompt: its detokenizer, primed on a prompt whose last tokens do not decode to whole
        characters, emits the prompt — template, question and the answer so far — before the
        new tokens. An echo holds the answer so far after some prompt text (and after the end
        of the client's prompt, when it is known): the text up to the answer's last occurrence
        is dropped. Runs of U+FFFD compare as one: the answer decoded at once may break its
        invalid bytes into fewer or more replacement characters than the stream did."""
        for c in obj.get("choices") or []:
            if not isinstance(c, dict) or c.get("index", 0) != 0:
                continue
            holder, key = (
                (c["delta"], "content") if isinstance(c.get("delta"), dict) else (c, "text")
            )
            text = holder.get(key)
            if not isinstance(text, str) or not text:
                continue
            before, self._echo = self._echo or "", None  # only the first text
            got, where = _collapse(text)
            end = _echo_end(got, _collapse(before)[0], self.mark)
            if end is not None:
                holder[key] = text[where[end] :] if end < len(where) else ""
            return

    def _strip(self, obj: dict[str, Any]) -> None:
        if self.keep_ids:
            return
        obj.pop("prompt_token_ids", None)
        for c in obj.get("choices") or []:
            if isinstance(c, dict):
                c.pop("token_ids", None)
                c.pop("prompt_token_ids", None)

    def _rewrite(self, obj: dict[str, Any]) -> bytes | None:
        choices = obj.get("choices") or []
        out: list[dict[str, Any]] = []
        for c in choices:
            if not isinstance(c, dict):
                continue
            if self.as_completions:
                c = {
                    "index": c.get("index", 0),
                    "delta": {"content": c.get("text", "")},
                    "logprobs": None,
                    "finish_reason": c.get("finish_reason"),
                    **({"token_ids": c["token_ids"]} if "token_ids" in c else {}),
                }
            elif self.chat:
                delta = c.get("delta")
                if isinstance(delta, dict) and "role" in delta:
                    delta = {k: v for k, v in delta.items() if k != "role"}
                    c = {**c, "delta": delta}
                    if not delta.get("content") and c.get("finish_reason") is None:
                        continue  # the continuation's role chunk: the client has its role
            out.append(c)
        usage = obj.get("usage")
        if choices and not out and not usage:
            return None
        obj["choices"] = out
        if self.head is not None:
            obj.update(self.head)
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            done = self.tokens_before + usage["completion_tokens"]
            prompt = self._prompt_tokens
            if prompt is None:
                prompt = max(0, int(usage.get("prompt_tokens") or 0) - self.tokens_before)
            obj["usage"] = {**usage, "prompt_tokens": prompt, "completion_tokens": done}
            obj["usage"]["total_tokens"] = prompt + done
        self._strip(obj)
        return _encode(obj)

    # -- what was generated ------------------------------------------------------------------
    def _observe(self, obj: dict[str, Any]) -> None:
        if self.head is None and "id" in obj:
            self.head = {k: obj[k] for k in ("id", "object", "created", "model") if k in obj}
        if self.segment == 0:
            pids = obj.get("prompt_token_ids")
            if isinstance(pids, list):
                self._prompt_ids = tuple(pids)
            usage = obj.get("usage")
            if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
                self._prompt_tokens = usage["prompt_tokens"]
        for c in obj.get("choices") or []:
            if not isinstance(c, dict) or c.get("index", 0) != 0:
                continue
            if self.segment == 0 and isinstance(c.get("prompt_token_ids"), list):
                self._prompt_ids = tuple(c["prompt_token_ids"])
            delta = c.get("delta")
            other = False  # output that is not the answer's text (reasoning, tool calls)
            if isinstance(delta, dict):
                text = delta.get("content") or ""
                if delta.get("role"):
                    self._role_sent = True
                other = any(v for k, v in delta.items() if k not in ("content", "role"))
            else:
                text = c.get("text") or ""
            ids = c.get("token_ids")
            if isinstance(ids, list):
                if not self._by_text:
                    if self._ids is None:
                        self._ids = []
                    self._ids.extend(ids)
                self._tokens += len(ids)
            elif text:
                self._tokens += 1  # no ids from this server: one token per event
            if text:
                self._text.append(text)
            if text or other:
                self._held = 0
            elif isinstance(ids, list):
                self._held += len(ids)
            self._events += 1
            # whole characters from one token: an event of several (vLLM merges the ones its
            # client has not read yet) may end with a token whose bytes it held back
            whole = text and "\ufffd" not in text and not (isinstance(ids, list) and len(ids) > 1)
            self._clean = self._clean + 1 if whole else 0
            if c.get("finish_reason") is not None:
                self.finished = True
        if self._prompt_ids is not None and self._prompt_tokens is None:
            self._prompt_tokens = len(self._prompt_ids)

    def _read_raw(self) -> None:
        raw, self._raw = self._raw, []
        for block in raw:
            for event in block.split(_SEP)[:-1]:
                payload = _data(event)
                if payload is None or payload == b"[DONE]":
                    continue
                try:
                    obj = json.loads(payload)
                except ValueError:
                    continue
                if isinstance(obj, dict) and "error" not in obj:
                    self._observe(obj)

    def generated(self) -> Generated:
        """The answer so far (what the client got). The last few tokens, when they gave the
        client nothing at all (``HELD_MAX`` at most: the bytes of an unfinished character), are
        left out: the continuation makes them again, rather than start after bytes held back
        (which vLLM answers with an echo of its prompt, ``_unecho``). Not when the client asked
        for token ids: it has those ids already."""
        self._read_raw()
        ids = None if self._ids is None or self._by_text else self._ids
        if 0 < self._held <= HELD_MAX and ids is not None and not self.keep_ids:
            del ids[-self._held :]
            self._tokens -= self._held
        self._held = 0
        return Generated(
            text="".join(self._text),
            token_ids=None if ids is None else tuple(ids),
            prompt_token_ids=self._prompt_ids,
            tokens=self._tokens,
        )

    def clean_cut(self) -> bool:
        """May the stream be cut here? Only where its last chunks are whole characters.

        vLLM echoes a continuation's whole prompt as its first text when the prompt's last
        tokens do not decode to whole characters (``_unecho``): vLLM 0.32 when the decoded
        prompt ends in U+FFFD (a token whose bytes the stream held back: an event with ids and
        no text), older ones when none of the prompt's last 4 to 23 tokens decode cleanly. A
        continuation's prompt ends with the generated tokens, so the cut waits for
        ``CLEAN_RUN`` chunks in a row of one token each whose text is whole characters (or for
        a stream that has been clean from its start). An echo that comes anyway is dropped."""
        self._read_raw()
        return self._clean >= CLEAN_RUN or self._clean == self._events

    def feed_one(self, event: bytes) -> bytes:
        """One complete event, read at once (while looking for a clean cut)."""
        self._read_raw()
        if event == DONE:
            self.done = True
            return DONE
        return self._event(event) or b""

    def begin_continuation(self, *, as_completions: bool, by_ids: bool = True) -> None:
        """The next events come from a continuation request, sent with the token ids so far
        (``by_ids``) or with the text. After one by text, the ids no longer add up to what the
        client got (that segment made again tokens the ids had): later handoffs go by text."""
        self.generated()
        self.segment += 1
        self.as_completions = as_completions
        self.tokens_before = self._tokens
        self._by_text = self._by_text or not by_ids
        so_far = "".join(self._text)
        # any cut by ids may be echoed (_unecho): a clean point is read from the text, which
        # cannot show a byte held back inside an event of several tokens. A text prompt ends
        # in whole characters: no echo.
        self._echo = so_far if by_ids and so_far else None


def splice(
    segments: list[list[bytes]],
    *,
    chat: bool,
    keep_ids: bool = False,
    as_completions: bool = False,
    mark: str | None = None,
    by_ids: bool = True,
) -> bytes:
    """What the client receives from ``segments`` (each a list of complete events; every
    segment but the last was cut where the next begins). The pure form of the relay."""
    sp = Splicer(chat=chat, keep_ids=keep_ids, mark=mark)
    out: list[bytes] = []
    for i, seg in enumerate(segments):
        if i:
            sp.begin_continuation(as_completions=as_completions, by_ids=by_ids)
        out.extend(sp.feed(e) for e in seg)
    return b"".join(out)
