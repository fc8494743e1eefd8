"""The connection to the state database: opening, migrating, and the two kinds of transaction.

SQLite specifics: WAL journal (readers never block the writer), foreign keys on, a busy
timeout, and write transactions opened with ``BEGIN IMMEDIATE`` so a read-then-write cannot be
overtaken by another connection (a second ``Store`` on the same file, e.g. a restarted daemon
or a CLI reading the file). PostgreSQL: the compare-and-set reads its row ``FOR UPDATE``, and
migrations hold an advisory lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Self, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

from spotd.store.cas import Subject, fetch, find
from spotd.store.errors import StoreError
from spotd.store.fence import Fence, check_fence
from spotd.store.migrations import current_version, migrate

__all__ = ["StoreBase"]

IDLE_IN_TRANSACTION_MS = 4000

RowT = TypeVar("RowT")


class StoreBase:
    """What every part of :class:`~spotd.store.Store` stands on. Open with :meth:`open`."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._closed = False
        self.dialect = engine.dialect.name  # "sqlite" or "postgresql"
        # with several daemons on one database: this daemon's lease, checked at the start of
        # every write transaction (spotd.store.leases); None: the only daemon, nothing checked
        self.fence: Fence | None = None

    @classmethod
    def open(cls, url: str) -> Self:
        """Connect, configure and migrate.

        ``sqlite:////abs/path/state.db`` or ``postgresql+psycopg://user@/db?host=/run/dir``.
        Raises :class:`SchemaTooNew` if the database was written by a newer spotd.
        """
        parsed = make_url(url)
        backend = parsed.get_backend_name()
        if backend == "sqlite":
            if parsed.database in (None, "", ":memory:"):
                raise ValueError(
                    "an in-memory SQLite store would vanish with its connection: "
                    "use a file, e.g. sqlite:////abs/path/state.db"
                )
            engine = create_engine(parsed, connect_args={"check_same_thread": False})
            event.listen(engine, "connect", _sqlite_on_connect)
            event.listen(engine, "begin", _sqlite_on_begin)
        elif backend == "postgresql":
            engine = create_engine(parsed, pool_pre_ping=True)
            event.listen(engine, "connect", _pg_on_connect)
        else:
            raise ValueError(f"unsupported database URL {url!r}: use sqlite:// or postgresql://")
        store = cls(engine)
        try:
            with store._write() as conn:
                migrate(conn, where=engine.url.render_as_string(hide_password=True))
        except BaseException:
            engine.dispose()
            raise
        return store

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._engine.dispose()

    @property
    def engine(self) -> Engine:
        return self._engine

    def schema_version(self) -> int:
        with self._read() as conn:
            return current_version(conn)

    # -- transactions ------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        if self._closed:
            raise StoreError("the store is closed")
        with self._engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _write(self, *, fenced: bool = True) -> Iterator[Connection]:
        """A write transaction; with a lease (``fence``), one that writes only if this daemon
        still holds it (:class:`~spotd.store.errors.Fenced` otherwise, nothing written)."""
        if self._closed:
            raise StoreError("the store is closed")
        fence = self.fence
        with self._engine.connect() as conn:
            # BEGIN IMMEDIATE on SQLite; events name the daemon that wrote them
            conn.execution_options(
                spotd_write=True, spotd_daemon=None if fence is None else fence.daemon_id
            )
            with conn.begin():
                if fenced and fence is not None:
                    check_fence(conn, fence)
                yield conn

    def _get(self, subject: Subject[RowT], row_id: object) -> RowT | None:
        with self._read() as conn:
            return find(conn, subject, row_id)

    def _require(self, subject: Subject[RowT], row_id: object) -> RowT:
        with self._read() as conn:
            return fetch(conn, subject, row_id)


def _pg_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # a daemon paused (SIGSTOP, a partition) inside a transaction would hold its fence's
    # share lock, and so block the takeover of its work, for as long as it is paused: the
    # server ends such a session instead (the store's transactions last milliseconds)
    cur = dbapi_conn.cursor()
    try:
        cur.execute(f"SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_MS}")
    finally:
        cur.close()
    dbapi_conn.commit()


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # take transaction control away from the sqlite3 module: _sqlite_on_begin emits BEGIN
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        # WAL with NORMAL: a commit no longer waits for an fsync (about 400 commits/s on this
        # kind of disk with FULL, the default, against tens of thousands): still atomic and
        # consistent, and a daemon killed with -9 loses nothing; only an OS crash or a power
        # loss may roll back the last commits, and the adoption at start-up (unknown tagged
        # instances are reaped) covers an intent lost that way.
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
    finally:
        cur.close()


def _sqlite_on_begin(conn: Connection) -> None:
    # IMMEDIATE takes the write lock up front, so a read-then-write transaction cannot be
    # overtaken between its SELECT and its UPDATE (and waits on busy_timeout instead of failing
    # with SQLITE_BUSY_SNAPSHOT when another connection committed in between).
    write = conn.get_execution_options().get("spotd_write", False)
    # on the driver's connection: through SQLAlchemy's execution machinery this one statement
    # cost more than most of the store's reads it begins
    conn.connection.driver_connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")  # type: ignore[union-attr]
