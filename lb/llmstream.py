"""Streams that survive a preemption notice: an LLM stream moves to another replica mid-answer.

When the daemon pushes a replica as DRAINING with a ``deadline`` (a preemption notice), every
OpenAI stream (``/v1/completions``, ``/v1/chat/completions`` with ``"stream": true``) still
running on it at ``deadline - handoff_margin`` is cut between two events and continued on
another replica (``openai.continuation``: the prompt plus what was generated, by token ids
when the replica sent them); ``sse.Splicer`` makes the new replica's events look like the rest
of the first stream. The client holds one connection and sees one stream. A replica that
dies mid-stream (reset, closed without ``[DONE]``, read timeout) is handled the same way,
at once. A cut waits for a clean point (``Splicer.clean_cut``: vLLM's detokenizer echoes the
whole prompt after a tail it cannot decode); an echo that comes anyway (the replica died before
a clean point, or an event of several tokens hid a held-back byte) is dropped from the
continuation's first text (``Splicer._unecho``).

When to hand off (``handoff_delay``): at ``deadline - margin``, not at the notice. The
noticed replica keeps generating useful tokens until then (they are carried over, not
recomputed: the continuation's prefill covers them), most streams finish before the cut and
never move, and the survivors take the moved streams' prefill once, late; the margin (10 s by
default) covers the continuation's connect and the clock skew between the daemon and the
cloud's reclaim. A notice shorter than the margin moves the streams at once.

Outstanding tokens (``least_tokens``): a stream holds its cost (``StreamJob.tokens``) on the
replica serving it, gives one token back per event that arrives (vLLM sends one token an
event unless its client lags, when it merges them: an estimate; the last token stays until the
stream ends), and takes what is left to the replica
that continues it — as ``in_flight`` moves, exactly once.

The relay is ``relay.relay_fast``'s, with a sink that writes only whole events, so that a cut
never leaves half an event with the client. Limits: plain-HTTP replicas only (the daemon's;
an https replica's streams are relayed as before), one choice per request (``n`` 1), and SSE
events separated by a blank line (``\n\n``, as vLLM and the OpenAI API write them).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.http_writer import StreamWriter

from .headers import request_head
from .http1 import Head, UpstreamConnectError, UpstreamDisconnected, UpstreamError, host_port
from .openai import LlmKind, LlmRequest, continuation, prompt_mark
from .policy import ReplicaStats, RequestInfo, pick
from .pool import UpstreamPool
from .relay import _ClientSink, _mark_eof, _RelayResponse, _take_head, truncate
from .sse import DONE, Splicer, split_events
from .state import LBState
from .upstream import UpstreamConn

__all__ = ["NoticeTimer", "StreamJob", "handoff_delay", "head_before_notice", "relay_stream"]

log = logging.getLogger("spotd.lb")

_REST_MAX = 1 << 20  # bytes without an event boundary: relayed as they are
SEEK_EVENTS = 64  # a cut waits at most this many events for a clean point (Splicer.clean_cut)


def handoff_delay(deadline: float, now: float, margin: float) -> float:
    """Seconds from ``now`` until a stream on a replica reclaimed at ``deadline`` moves.

    deadline 120 s away, margin 10 s -> 110 (the replica works until then); 5 s away,
    margin 10 -> 0 (at once); already past -> 0."""
    return max(0.0, deadline - margin - now)


class NoticeTimer:
    """Calls ``fire`` once, ``handoff_delay`` after the replica's notice (``notice`` is what
    ``ReplicaSet.watch`` calls with the deadline; a later, different deadline re-arms it)."""

    __slots__ = ("_deadline", "_fire", "_handle", "_loop", "_margin")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, margin: float, fire: Callable[[], None]
    ) -> None:
        self._loop = loop
        self._margin = margin
        self._fire = fire
        self._handle: asyncio.TimerHandle | None = None
        self._deadline: float | None = None

    def notice(self, deadline: float) -> None:
        if deadline == self._deadline:
            return
        self.cancel()
        self._deadline = deadline
        self._handle = self._loop.call_later(
            handoff_delay(deadline, time.time(), self._margin), self._fire
        )

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


@dataclass(slots=True)
class StreamJob:
    """One client stream that may move: its request and where it has been."""

    request: web.BaseRequest
    llm: LlmRequest
    rid: str  # the replica serving it now
    stats: ReplicaStats  # that replica's counters (its in_flight counts this stream)
    tokens: int = 1  # its outstanding tokens, counted in ``stats.tokens`` while it is there
    prefix_key: str | None = None
    drop: bytes | None = None  # a header never forwarded (the client's API key)
    exclude: set[str] = field(default_factory=set)  # replicas it must not go back to
    left_first: bool = False  # it moved off the first replica (whose count the proxy keeps)

    def arrived(self, events: int) -> None:
        """``events`` more events came: as many tokens fewer outstanding (never below 1)."""
        n = min(events, self.tokens - 1)
        if n > 0:
            self.tokens -= n
            self.stats.tokens -= n

    def count_out(self) -> None:
        """It leaves ``stats``' replica (moved or ended there)."""
        self.stats.in_flight -= 1
        self.stats.tokens -= self.tokens

    def count_in(self, stats: ReplicaStats) -> None:
        """It is sent to (or tried on) the replica whose counters are ``stats``."""
        self.stats = stats
        stats.in_flight += 1
        stats.tokens += self.tokens


class _Outcome(enum.Enum):
    DONE = "done"  # the answer ended with [DONE]
    CLIENT_GONE = "client"  # the client went away
    MOVE = "move"  # notice ran out, or the replica failed mid-answer


class _SpliceSink(_ClientSink):
    """``_ClientSink`` that writes whole SSE events only, through the ``Splicer``; an answer
    that ends without ``[DONE]`` is *broken* (its stream moves) rather than ended."""

    __slots__ = ("broken", "cut", "handoff", "job", "rest", "seek_left", "seeking", "splicer")

    def __init__(
        self,
        tr: asyncio.Transport,
        chunked: bool,
        head: bytes | None,
        terminator: bytes,
        splicer: Splicer,
        job: StreamJob,
    ) -> None:
        super().__init__(tr, chunked, head, terminator)
        self.splicer = splicer
        self.job = job
        self.rest = b""
        self.broken = False
        self.handoff = False  # the notice ran out: cut at the next clean point
        self.seeking = False  # ... which has not come yet: reading event by event
        self.seek_left = 0
        self.cut = False  # cut: the events after it were not sent

    def reset(self) -> None:
        self.rest = b""
        self.broken = self.handoff = self.finished = self.seeking = self.cut = False
        self.exc = None
        self.paused = False

    def data(self, pieces: list[bytes], end: bool) -> bool:
        buf = b"".join(pieces)
        if self.rest:
            buf = self.rest + buf
        block, self.rest = split_events(buf)
        if block:
            self.job.arrived(block.count(b"\n\n"))
        if end or len(self.rest) > _REST_MAX:  # the end, or not SSE as we know it: pass it on
            block, self.rest = block + self.rest, b""
        if self.seeking and block:
            return self._seek(block)
        out = self.splicer.feed(block) if block else b""
        if end and not self.splicer.done:
            self.broken = True  # no [DONE]: an engine that died; the stream moves
            super().data([out] if out else [], False)
            self._wake()
            return False
        return super().data([out] if out else [], end)

    def _seek(self, block: bytes) -> bool:
        """Send events one by one until the stream may be cut (``Splicer.clean_cut``), then
        stop reading: what follows the cut is not sent, the continuation makes it again."""
        out: list[bytes] = []
        sp = self.splicer
        for event in block.split(b"\n\n")[:-1]:
            out.append(sp.feed_one(event + b"\n\n"))
            self.seek_left -= 1
            if sp.done:
                break
            if sp.clean_cut() or self.seek_left <= 0:
                self.cut = True
                break
        super().data(out, False)
        if not self.cut:
            return False  # no clean point yet (or the answer ended: done() follows)
        self.rest = b""
        self._wake()
        return True  # pause reading: nothing more from this replica

    def done(self) -> None:
        if self.cut:
            return
        if not self.splicer.done:
            self.broken = True
            self._wake()
            return
        super().done()

    def request_handoff(self) -> None:
        self.handoff = True
        self._wake()


async def _follow(
    conn: UpstreamConn, sink: _SpliceSink, writer: StreamWriter, st: LBState, rid: str
) -> _Outcome:
    """Relay ``conn``'s answer through ``sink`` until it ends, the client leaves, or the
    stream must move (the replica's notice runs out, or it fails)."""
    loop = conn.loop
    sink.reset()
    timer = NoticeTimer(loop, st.config.handoff_margin, sink.request_handoff)
    unwatch = st.replicas.watch(rid, timer.notice)
    try:
        conn.attach(sink, chunked_out=False)
        if sink.head is not None and not sink.finished:
            loop.call_soon(sink.flush_head)
        while True:
            if sink.tr.is_closing():
                return _Outcome.CLIENT_GONE
            if sink.finished:
                return _Outcome.DONE
            if sink.exc is not None or sink.broken or sink.cut:
                return _Outcome.MOVE
            if sink.handoff and not sink.seeking:
                if sink.splicer.clean_cut():
                    return _Outcome.MOVE
                sink.seeking = True  # cut at the next clean point (at most SEEK_EVENTS on)
                sink.seek_left = SEEK_EVENTS
            if sink.paused:
                sink.paused = False
                try:
                    await writer.drain()
                except ConnectionError:
                    return _Outcome.CLIENT_GONE
                conn.resume()
                continue
            sink.waiter = loop.create_future()
            await sink.waiter
    finally:
        unwatch()
        timer.cancel()


class _NoticeRanOut(Exception):
    """The replica's notice ran out before its answer began (``head_before_notice``)."""


async def head_before_notice(
    conn: UpstreamConn, head: bytes, body: bytes | None, st: LBState, rid: str
) -> Head | None:
    """Send a non-streamed LLM request and wait for its answer's head — or None when the
    replica's notice runs out first (``handoff_delay``): the request is then aborted there and
    the caller sends it to another replica (the client has received nothing yet)."""
    timer = NoticeTimer(
        conn.loop, st.config.handoff_margin, lambda: conn.interrupt(_NoticeRanOut())
    )
    unwatch = st.replicas.watch(rid, timer.notice)
    try:
        return await conn.request(head, body, False)
    except _NoticeRanOut:
        return None
    finally:
        unwatch()
        timer.cancel()


def _give_up(job: StreamJob, conn: UpstreamConn | None) -> None:
    """A continuation's try that ended before its answer began: counted out of the replica,
    its connection closed (a request half sent is not a connection to keep)."""
    job.count_out()
    if conn is not None:
        conn.abort()


async def _wait_eligible(st: LBState, info: RequestInfo) -> str | None:
    """A replica for a stream moving on, waiting up to ``queue_timeout`` for one. A stream
    waiting here counts as waiting (the LB's ``waiting``, which the autoscaler reads as
    demand): it did not, and a preemption wave's stranded streams were invisible to it."""
    cfg = st.config
    deadline = time.monotonic() + cfg.queue_timeout
    counted = False
    try:
        while True:
            reps = st.replicas
            rid = pick(reps.views, reps.stats, info, policy=cfg.policy, state=st.policy_state)
            left = deadline - time.monotonic()
            if rid is not None or left <= 0:
                return rid
            if not counted:
                st.waiting += 1
                st.metrics.queued += 1
                counted = True
            await reps.wait_changed(left)
    finally:
        if counted:
            st.waiting -= 1


async def _continue(
    job: StreamJob, splicer: Splicer, st: LBState, pool: UpstreamPool
) -> UpstreamConn | None:
    """Send the continuation of ``job`` to another replica; its connection, with the answer's
    head read, or None when no replica took it."""
    try:
        path, body, as_completions = continuation(job.llm, splicer.generated())
    except ValueError as e:
        log.warning("stream cannot be continued: %s", e)
        return None
    raw = json.dumps(body).encode()
    reps = st.replicas
    for _ in range(max(1, st.config.max_tries)):
        info = RequestInfo(prefix_key=job.prefix_key, exclude=frozenset(job.exclude))
        rid = await _wait_eligible(st, info)
        if rid is None:
            return None
        view = reps.by_id[rid]
        try:
            host, port, host_line = host_port(view.url)
        except ValueError:  # https replica: this relay speaks plain HTTP/1.1 only
            job.exclude.add(rid)
            continue
        head = request_head(job.request, host_line, raw, job.drop, path=path)
        rstats = reps.stats[rid]
        job.count_in(rstats)  # counted while it is tried, as the proxy does
        conn: UpstreamConn | None = None
        try:
            conn = await pool.acquire(host, port)
            uhead = await conn.request(head, raw, False)
        except (UpstreamConnectError, UpstreamDisconnected) as e:
            _give_up(job, conn)
            rstats.failures += 1
            st.eject(rid, view.url, f"{type(e).__name__}: {e}")
            job.exclude.add(rid)
            continue
        except UpstreamError as e:
            _give_up(job, conn)
            log.warning("stream continuation on %s failed: %s", rid, e)
            job.exclude.add(rid)
            continue
        except BaseException:  # the client left: not counted, and the connection not held
            _give_up(job, conn)
            raise
        if uhead.status != 200 or not uhead.content_type.startswith("text/event-stream"):
            try:
                detail = (await conn.read_body())[:300].decode(errors="replace")
            except (UpstreamError, ConnectionError):
                detail = ""
            finally:  # the client may leave while the refusal's body is read
                pool.release(conn)
                job.count_out()
            log.warning(
                "replica %s refused a stream continuation: %d %s", rid, uhead.status, detail
            )
            return None
        by_ids = isinstance(body.get("prompt"), list)  # else a text prompt, or chat messages
        splicer.begin_continuation(as_completions=as_completions, by_ids=by_ids)
        job.rid = rid
        rstats.requests += 1
        return conn
    return None


async def relay_stream(
    request: web.BaseRequest,
    conn: UpstreamConn,
    head: Head,
    job: StreamJob,
    st: LBState,
    pool: UpstreamPool,
) -> web.StreamResponse:
    """Relay an LLM stream to the client, moving it to another replica when its replica's
    notice runs out or it fails mid-answer (see the module docstring). ``conn`` (the first
    replica's, its head read) stays the caller's to release."""
    sresp = _RelayResponse(status=head.status, reason=head.reason, headers=head.headers)
    await sresp.prepare(request)
    writer = sresp._payload_writer
    tr = request.transport
    if not isinstance(writer, StreamWriter) or tr is None or tr.is_closing():
        conn.abort()
        if tr is not None:
            tr.abort()
        return sresp
    rhead = _take_head(writer)
    chunked = bool(writer.chunked)
    own_end = rhead is not None
    splicer = Splicer(
        chat=job.llm.kind is LlmKind.CHAT, keep_ids=job.llm.wants_ids, mark=prompt_mark(job.llm)
    )
    terminator = b"0\r\n\r\n" if chunked and own_end else b""
    sink = _SpliceSink(tr, chunked, rhead, terminator, splicer, job)
    current = conn
    try:
        while True:
            outcome = await _follow(current, sink, writer, st, job.rid)
            if outcome is _Outcome.DONE:
                break
            current.detach()
            current.abort()
            if outcome is _Outcome.CLIENT_GONE:
                return sresp
            # -- the stream moves ------------------------------------------------------------
            job.exclude.add(job.rid)
            if current is conn:
                job.left_first = True
            else:
                pool.release(current)
            job.count_out()
            current = conn  # nothing held until the next replica takes it
            splicer.generated()  # reads the events passed through so far
            if splicer.finished:  # only [DONE] was missing
                job.tokens = 0  # counted out above: the [DONE] below gives nothing back
                sink.reset()
                sink.data([DONE], True)
                break
            moved_from = job.rid
            nxt = await _continue(job, splicer, st, pool)
            if nxt is None:
                st.metrics.handoff_failures += 1
                log.warning("stream from %s could not be continued: no replica took it", moved_from)
                truncate(sresp, tr)  # a truncated stream, never a clean (and wrong) end
                return sresp
            st.metrics.handoffs += 1
            log.info("stream moved from %s to %s", moved_from, job.rid)
            current = nxt
    finally:
        if current is not conn:
            pool.release(current)
            job.count_out()
    if own_end:
        _mark_eof(writer)
    try:
        await sresp.write_eof()
    except ConnectionError:
        pass
    return sresp
