"""Engines and sessions for the store.

SQLite (the default) gets WAL, a busy timeout, ``synchronous=NORMAL`` and foreign keys on every
connection, and two engines: readers use a plain deferred ``BEGIN``; writers use ``BEGIN
IMMEDIATE``, so a read-then-write transaction (a quota check, say) can never fail halfway with
"database is locked" and two writers are serialised. PostgreSQL works by URL with the same code;
there the quota check locks the round row with ``SELECT ... FOR UPDATE`` (see ``db.queries``).

Usage::

    store = Store.from_url("sqlite:///data/meiju.db")
    store.upgrade()                      # alembic upgrade head
    with store.write() as s:             # BEGIN IMMEDIATE ... COMMIT
        s.add(User(name="ann"))
    with store.read() as s:
        s.scalars(select(User)).all()
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
BUSY_TIMEOUT_MS = 30_000


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # Let SQLAlchemy's "begin" event own transaction start (the documented pysqlite recipe).
    dbapi_connection.isolation_level = None
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str, *, immediate: bool = False) -> Engine:
    """Create an engine for ``url``; for SQLite, ``immediate`` makes every transaction
    ``BEGIN IMMEDIATE`` (writers) instead of a deferred ``BEGIN`` (readers)."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
    event.listen(engine, "connect", _sqlite_pragmas)
    begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"
    event.listen(engine, "begin", lambda conn: conn.exec_driver_sql(begin))
    return engine


class Store:
    """The project's database: a read engine, a write engine and their session factories."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.read_engine = make_engine(url)
        self.write_engine = make_engine(url, immediate=True) if self.is_sqlite else self.read_engine
        self._read = sessionmaker(self.read_engine, expire_on_commit=False)
        self._write = sessionmaker(self.write_engine, expire_on_commit=False)

    @classmethod
    def from_url(cls, url: str) -> Store:
        return cls(url)

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        """A short read-only session; never hold it across Streamlit reruns."""
        with self._read() as session, session.begin():
            yield session

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """A short write transaction (``BEGIN IMMEDIATE`` on SQLite); commits on exit, rolls back
        on any exception, so nothing half-written is ever stored."""
        with self._write() as session, session.begin():
            yield session

    def upgrade(self) -> None:
        """Run ``alembic upgrade head`` against this store."""
        from alembic import command

        command.upgrade(alembic_config(self.url), "head")

    def dispose(self) -> None:
        self.read_engine.dispose()
        if self.write_engine is not self.read_engine:
            self.write_engine.dispose()


def alembic_config(url: str):
    """An Alembic ``Config`` for ``url`` with the migrations shipped in ``db/migrations``."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg
