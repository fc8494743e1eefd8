"""The daemon's home is private, and the daemon's own memory is not its jobs' to read.

Attacks, and what they met before and after:

- Another user of the daemon's machine reads ``$SPOTD_HOME`` (the state database with every
  agent token, the jobs' logs, checkpoints). Before: the home was created with ``mkdir(mode=
  0o700)`` (through the umask, and never narrowed when it already existed), ``logs/``,
  ``checkpoints/`` and each attempt's log directory with the default umask (0755), attempt
  logs 0644. After: every directory the daemon makes is 0700 (an existing home is narrowed),
  attempt logs are 0600 from their first byte.
- A job of the same user as the daemon (the local provider runs jobs as the daemon's user)
  reads ``/proc/<daemon pid>/environ``, where ``SPOTD_API_TOKEN`` is, and so becomes admin.
  File modes cannot stop a process of the same user. Before: readable. After: the daemon is
  non-dumpable (``prctl(PR_SET_DUMPABLE, 0)``), which hands its ``/proc`` files to root and
  makes reading them need ``CAP_SYS_PTRACE``.

Tests run as root here, and root reads any ``environ``; so the second attack is played as it
happens, by an unprivileged user: the daemon runs as ``nobody`` (``setpriv``), and a job it
launches, also ``nobody``, tries to read the daemon's environment. A control process of the same
user that did not call prctl shows the same reader would have succeeded.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from spotd.sdk.local import socket_alive
from tests.conftest import FAST_ENV, ROOT, DaemonProc, kill_instance_groups
from tests.e2e.helpers import logs, wait_job

TERMINAL = {"SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_NO_RESOURCE", "CANCELLED"}
ADMIN_TOKEN = "admin-token-the-jobs-must-not-see"


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def _dir_modes(root: Path) -> dict[Path, int]:
    """Every directory under ``root`` (links not followed) and its mode, as found."""
    out: dict[Path, int] = {}
    for top, dirs, _ in os.walk(root):  # os.walk skips what vanishes under it
        for name in dirs:
            p = Path(top) / name
            with contextlib.suppress(FileNotFoundError):
                if not p.is_symlink():
                    out[p] = _mode(p)
    return out


@pytest.fixture
def loose_daemon() -> Iterator[DaemonProc]:
    """A daemon whose home an operator created world-readable before the first start."""
    home = Path(f"/tmp/spotd-ph{os.getpid()}-{uuid.uuid4().hex[:6]}")
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    d = DaemonProc(home, {"SPOTD_API_TOKEN": ADMIN_TOKEN})
    d.start()
    try:
        yield d
    finally:
        d.stop()
        kill_instance_groups(home)
        shutil.rmtree(home, ignore_errors=True)


async def test_the_home_and_every_directory_in_it_are_0700_and_logs_0600(
    loose_daemon: DaemonProc,
) -> None:
    d = loose_daemon
    job_yaml = (
        "name: private\n"
        "run: |\n"
        "  echo a line that may hold a secret\n"
        '  echo saved > "$SPOTD_CHECKPOINT_DIR/state"\n'
    )
    async with d.client() as c:
        job = await c.launch(job_yaml, filename="p.yaml")
        job = await wait_job(
            c, job["id"], lambda j: j["status"] in TERMINAL, timeout=60, what="the job"
        )
        assert job["status"] == "SUCCEEDED", job
        assert "a line that may hold a secret" in await logs(c, job["id"])
    assert _mode(d.home) == 0o700
    for name in ("logs", "checkpoints", "local"):
        assert _mode(d.home / name) == 0o700, name
    # the daemon may still be removing the finished job's instance directory while this walks
    # the home: a directory gone by the time it is looked at is skipped, not an error
    modes = _dir_modes(d.home)
    assert {p.relative_to(d.home).parts[0] for p in modes} >= {"logs", "checkpoints", "local"}
    assert {str(p.relative_to(d.home)): m for p, m in modes.items() if m != 0o700} == {}
    attempt_logs = list((d.home / "logs").rglob("*.log"))
    assert attempt_logs, "no attempt log written"
    assert {str(p): _mode(p) for p in attempt_logs} == {str(p): 0o600 for p in attempt_logs}


# -- the daemon's environment, against a job of its own user ----------------------------------


def _unprivileged() -> tuple[str, ...] | None:
    """``setpriv`` as ``nobody`` when these tests run as root with both at hand, else None."""
    if os.geteuid() != 0 or not sys.platform.startswith("linux"):
        return None
    setpriv = shutil.which("setpriv")
    try:
        who = pwd.getpwnam("nobody")
    except KeyError:
        return None
    if setpriv is None:
        return None
    return (setpriv, f"--reuid={who.pw_uid}", f"--regid={who.pw_gid}", "--clear-groups")


AS_NOBODY = _unprivileged()
needs_nobody = pytest.mark.skipif(
    AS_NOBODY is None, reason="needs root, setpriv and the user nobody to play an unprivileged user"
)


def _runs_as_nobody(python: str) -> bool:
    """Whether ``nobody`` can run ``python`` and have it start itself again (the local provider
    starts each agent with the daemon's own ``sys.executable``)."""
    assert AS_NOBODY is not None
    probe = (
        "import subprocess, sys, spotd.agent; "
        "subprocess.run([sys.executable, '-c', ''], check=True)"
    )
    try:
        r = subprocess.run([*AS_NOBODY, python, "-c", probe], capture_output=True, timeout=60)
    except OSError:
        return False
    return r.returncode == 0


@pytest.fixture(scope="module")
def nobody_python() -> Iterator[str]:
    """An interpreter ``nobody`` can run, with this checkout's spotd and its dependencies.

    ``sys.executable`` where ``nobody`` may run it; else (a virtualenv whose base interpreter
    sits under root's 0700 home) a thin virtualenv over the system's interpreter of the same
    version whose site directory loads this one's.
    """
    if _runs_as_nobody(sys.executable):
        yield sys.executable
        return
    base = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    venv = Path(f"/tmp/spotd-py{os.getpid()}-{uuid.uuid4().hex[:6]}")
    site_dir = venv / "lib" / base.name / "site-packages"
    site_dir.mkdir(parents=True)
    (venv / "bin").mkdir()
    (venv / "bin" / "python").symlink_to(base)
    (venv / "pyvenv.cfg").write_text(
        f"home = {base.parent}\ninclude-system-site-packages = false\n"
    )
    ours = next(p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix))
    (site_dir / "spotd_tests.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    for p in [venv, *venv.rglob("*")]:
        if not p.is_symlink():
            p.chmod(0o755 if p.is_dir() else 0o644)
    try:
        if not base.exists() or not _runs_as_nobody(str(venv / "bin" / "python")):
            pytest.skip("no Python interpreter with spotd that the user nobody can run")
        yield str(venv / "bin" / "python")
    finally:
        shutil.rmtree(venv, ignore_errors=True)


@pytest.fixture
def nobody_daemon(nobody_python: str) -> Iterator[DaemonProc]:
    """A real daemon running as ``nobody``, its admin token in its environment."""
    assert AS_NOBODY is not None
    who = pwd.getpwnam("nobody")
    home = Path(f"/tmp/spotd-pn{os.getpid()}-{uuid.uuid4().hex[:6]}")
    home.mkdir(mode=0o700)
    os.chown(home, who.pw_uid, who.pw_gid)
    d = DaemonProc(home, {"SPOTD_API_TOKEN": ADMIN_TOKEN, "HOME": str(home), **FAST_ENV})
    out = open(home / "spotd.log", "ab")  # noqa: SIM115 - handed to the child
    d.proc = subprocess.Popen(
        [*AS_NOBODY, nobody_python, "-m", "spotd.main", "--json-logs"],
        env=d.env,
        stdout=out,
        stderr=out,
        start_new_session=True,
        cwd=ROOT,
    )
    out.close()
    try:
        deadline = time.monotonic() + 30
        while not socket_alive(d.socket):
            if d.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"spotd as nobody did not start:\n{d.log_tail()}")
            time.sleep(0.05)
        yield d
    finally:
        d.stop()
        kill_instance_groups(home)
        shutil.rmtree(home, ignore_errors=True)


def _read_as_nobody(path: str) -> subprocess.CompletedProcess[bytes]:
    assert AS_NOBODY is not None
    return subprocess.run([*AS_NOBODY, "cat", path], capture_output=True, timeout=10)


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid in /proc/pid/status")


@needs_nobody
def test_a_process_of_the_same_user_reads_environ_unless_non_dumpable() -> None:
    """The control: the reader works on a plain process of the user; the daemon's prctl is
    what stops it (so the job test below fails on a dumpable daemon)."""
    assert AS_NOBODY is not None
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SECRET": "visible"}
    plain = subprocess.Popen([*AS_NOBODY, "sleep", "30"], env=env)
    try:
        deadline = time.monotonic() + 5
        while _uid(plain.pid) == 0 and time.monotonic() < deadline:  # setpriv not exec'd yet
            time.sleep(0.01)
        r = _read_as_nobody(f"/proc/{plain.pid}/environ")
        assert r.returncode == 0 and b"SECRET=visible" in r.stdout
    finally:
        plain.kill()
        plain.wait()


@needs_nobody
async def test_a_job_cannot_read_the_daemons_environment(nobody_daemon: DaemonProc) -> None:
    d = nobody_daemon
    assert d.proc is not None
    pid = d.proc.pid  # setpriv execs the daemon: the same pid
    assert _uid(pid) == pwd.getpwnam("nobody").pw_uid
    environ = Path(f"/proc/{pid}/environ")
    # non-dumpable: the kernel hands its /proc files to root
    assert environ.stat().st_uid == 0
    r = _read_as_nobody(str(environ))
    assert r.returncode != 0 and b"Permission denied" in r.stderr
    assert ADMIN_TOKEN.encode() not in r.stdout
    job_yaml = (
        "name: snoop\n"
        "envs:\n"
        f"  DAEMON_PID: '{pid}'\n"
        "run: |\n"
        '  echo "job runs as $(id -un)"\n'
        '  tr "\\0" "\\n" < /proc/$DAEMON_PID/environ || echo "environ: refused"\n'
        "  grep -a SPOTD_API_TOKEN /proc/$DAEMON_PID/environ || true\n"
    )
    text = await _run(d, job_yaml)
    assert "job runs as nobody" in text
    assert "environ: refused" in text and "Permission denied" in text
    assert ADMIN_TOKEN not in text


@needs_nobody
async def test_a_job_cannot_read_its_agents_environment(nobody_daemon: DaemonProc) -> None:
    """The agent's environment may hold the cloud credentials its storage needs (the daemon
    hands them over for S3 storage objects); its job runs as its user. A review read them
    from ``/proc/$PPID/environ``: the agent now makes itself non-dumpable as the daemon does."""
    job_yaml = (
        "name: snoop-agent\n"
        "run: |\n"
        '  agent=$(ps -o ppid= -p $$ | tr -d " ")\n'
        '  echo "agent $agent: $(tr "\\0" "\\n" < /proc/$agent/cmdline | head -3 | tr "\\n" " ")"\n'
        '  tr "\\0" "\\n" < /proc/$agent/environ | grep -c . || echo "environ: refused"\n'
    )
    text = await _run(nobody_daemon, job_yaml)
    assert "spotd.agent" in text  # it looked at its agent
    assert "environ: refused" in text and "Permission denied" in text, text


async def _run(d: DaemonProc, job_yaml: str) -> str:
    """Launch ``job_yaml`` on ``d`` and wait for it to succeed; its log."""
    async with d.client() as c:
        job = await c.launch(job_yaml, filename="snoop.yaml")
        job = await wait_job(
            c, job["id"], lambda j: j["status"] in TERMINAL, timeout=60, what="the job"
        )
        text = await logs(c, job["id"])
    assert job["status"] == "SUCCEEDED", (job, text)
    return text
