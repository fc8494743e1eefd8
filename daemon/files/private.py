"""Files that hold a secret or a token: mode 0600, in a directory of mode 0700, from birth.

An agent's config (``agent.json``) carries the task's secrets and the agent's bearer token; a
job's log may print either. Such a file is never written with ``write_text`` (which creates it
with the process's umask, typically 0644, readable by every user of the machine or, on a Slurm
cluster's shared storage, of the cluster): ``write_private`` creates a temporary file with mode
0600 in the same directory and renames it into place, so there is no moment at which the
content exists under a wider mode, and a reader sees the old file or the new one, never half.

``private_dir`` creates what is missing of a directory with mode 0700 and narrows the leaf if
an older spotd left it wider. Modes keep other *users* out; processes of the same user are not
kept out by any mode (that needs a user per project, see the README's security model).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def private_dir(path: Path) -> Path:
    """``path`` as a directory of mode 0700 (and every directory it had to create too).

    ``Path.mkdir(parents=True, mode=...)`` applies the mode to the leaf only and creates the
    parents with the default mode; here each missing component is created 0700. Existing
    parents are left as they are (``$SPOTD_HOME`` or a shared ``state_dir`` is the admin's
    choice), the leaf is narrowed to 0700 whatever it was.
    """
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):  # a concurrent creator got there first
            d.mkdir(mode=PRIVATE_DIR)
        os.chmod(d, PRIVATE_DIR)  # mkdir's mode passes through the umask; this does not
    if stat.S_IMODE(path.stat().st_mode) != PRIVATE_DIR:
        os.chmod(path, PRIVATE_DIR)
    return path


def write_private(path: Path, data: bytes | str) -> None:
    """Replace ``path`` atomically with ``data``, the file being 0600 from its creation."""
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, PRIVATE_FILE)  # mkstemp gives 0600 already; say it, whatever the umask
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_private_json(path: Path, data: Any) -> None:
    """``write_private`` of ``data`` as JSON."""
    write_private(path, json.dumps(data))


def open_private_append(path: Path) -> IO[bytes]:
    """``path`` opened for appending, created 0600 (a log the job writes its output to)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != PRIVATE_FILE:
            os.fchmod(fd, PRIVATE_FILE)  # a log an older spotd created wider
        return os.fdopen(fd, "ab")
    except BaseException:
        os.close(fd)
        raise


PR_SET_DUMPABLE = 4  # <linux/prctl.h>
PR_GET_DUMPABLE = 3


def forbid_inspection(warn: Callable[[str], None] = lambda _: None) -> bool:
    """Make this process non-dumpable (Linux; elsewhere a no-op): its ``/proc/<pid>/environ``,
    ``mem`` and ``fd``s then belong to root, and ptrace needs CAP_SYS_PTRACE, so a process of
    the same user (a job on the local provider) cannot read the API token from the daemon's
    environment or memory. No core dumps either (they would hold the same). Children are
    unaffected: ``execve`` makes them dumpable again. Returns whether it took effect. The
    daemon calls it first thing, and so does the agent (its environment may hold cloud
    credentials for its storage, and its job runs as its user)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            warn(f"prctl(PR_SET_DUMPABLE, 0) failed: {os.strerror(err)}")
            return False
        return bool(libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0)
    except (OSError, AttributeError) as exc:  # no libc with prctl (a static or odd build)
        warn(f"cannot make this process non-dumpable: {exc}")
        return False
