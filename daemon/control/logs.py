"""Agents' logs as the daemon keeps them: appended in order, resent chunks written once.

A job's log may print its secrets: each log is 0600, in directories of mode 0700
(``spotd.files.private``), from the first byte.
"""

from __future__ import annotations

from pathlib import Path

from spotd.files.private import open_private_append, private_dir


def append_log(path: Path, offset: int, data: bytes) -> int:
    """Write ``data`` that starts at byte ``offset``; returns the new acknowledged size.

    A chunk that overlaps what is there already is written from where the file ends; one that
    starts past the end (a gap) is not written, and the returned size asks the agent to resend
    from there.
    """
    private_dir(path.parent)
    size = path.stat().st_size if path.exists() else 0
    if offset > size:
        return size
    skip = size - offset
    if skip < len(data):
        with open_private_append(path) as f:
            f.write(data[skip:])
        size += len(data) - skip
    return size
