"""Client API keys, checked at the LB before a request reaches a replica.

A service may require a key from its clients: ``Authorization: Bearer <key>`` (or, with
another ``header``, that header's whole value). The LB holds the set of valid keys in memory
(``--api-keys-file``, ``SPOTD_LB_API_KEYS``, or ``PUT /-/api-keys`` from the daemon, which
replaces the set at once: rotation needs no restart). A request without a valid key is
answered ``401`` with a JSON error and never proxied. The key's header is removed before the
request is forwarded unless ``forward`` is set (a replica that checks keys itself).

Keys are compared in constant time: the candidate is compared with every key (no early
exit), each comparison with ``hmac.compare_digest`` over SHA-256 digests of equal length, so
neither the position of a match nor a key's length shows in the answer's timing.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["ApiKeyGuard", "parse_keys", "read_keys_file"]

DEFAULT_HEADER = "Authorization"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def parse_keys(keys: Iterable[str]) -> tuple[str, ...]:
    """Stripped, non-empty, distinct keys in order; ValueError for one with whitespace or
    control characters inside (it could never be sent in a header as it is)."""
    out: list[str] = []
    for raw in keys:
        key = raw.strip()
        if not key:
            continue
        if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in key):
            raise ValueError("an API key must not contain whitespace or control characters")
        if key not in out:
            out.append(key)
    return tuple(out)


def read_keys_file(path: str | Path) -> tuple[str, ...]:
    """One key per line (blank lines and ``#`` comments skipped). The file must not be
    readable by group or others (mode 0600, as ssh asks of a private key)."""
    p = Path(path)
    mode = os.stat(p).st_mode
    if stat.S_IMODE(mode) & 0o077:
        raise ValueError(
            f"{p}: API keys file is readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it"
        )
    lines = p.read_text(encoding="utf-8").splitlines()
    return parse_keys(ln for ln in lines if not ln.lstrip().startswith("#"))


class ApiKeyGuard:
    """The keys one LB accepts, the header they come in, and whether it is forwarded.

    ``enabled`` is False while the set is empty: every request passes (a service without
    keys). ``drop`` is the lower-cased header name to remove before forwarding, or None."""

    __slots__ = ("_digests", "drop", "drop_b", "enabled", "forward", "header", "version")

    def __init__(self) -> None:
        self._digests: tuple[bytes, ...] = ()
        self.header = DEFAULT_HEADER
        self.forward = False
        self.enabled = False
        self.drop: str | None = None
        self.drop_b: bytes | None = None
        self.version = 0

    @property
    def count(self) -> int:
        return len(self._digests)

    def replace(
        self, keys: Iterable[str], *, header: str = DEFAULT_HEADER, forward: bool = False
    ) -> None:
        """Install a new key set (the old keys stop working at once)."""
        header = header.strip()
        if not header or any(c.isspace() or c in ':"(),/;<=>?@[\\]{}' for c in header):
            raise ValueError(f"not a header name: {header!r}")
        self._digests = tuple(_digest(k) for k in parse_keys(keys))
        self.header = header
        self.forward = bool(forward)
        self.enabled = bool(self._digests)
        self.drop = None if self.forward or not self.enabled else header.lower()
        self.drop_b = self.drop.encode("ascii") if self.drop else None
        self.version += 1

    def candidate(self, headers: Mapping[str, str]) -> str | None:
        """The key the request presents, or None."""
        value = headers.get(self.header)
        if value is None:
            return None
        if self.header.lower() == "authorization":
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() != "bearer":
                return None
            return token.strip() or None
        return value.strip() or None

    def allows(self, headers: Mapping[str, str]) -> bool:
        """True when keys are off, or the request carries one of them."""
        if not self.enabled:
            return True
        key = self.candidate(headers)
        if key is None:
            return False
        got = _digest(key)
        ok = False
        for d in self._digests:  # all of them, always: no early exit
            ok |= hmac.compare_digest(got, d)
        return ok
