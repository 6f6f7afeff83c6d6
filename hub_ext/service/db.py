"""Service database: SQLAlchemy models and alembic migrations (run at service start)."""

from __future__ import annotations

import sqlite3
import weakref
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    JSON,
    Boolean,
    ColumnElement,
    DateTime,
    Integer,
    String,
    Text,
    case,
    create_engine,
    event,
    func,
    literal_column,
    or_,
    select,
    type_coerce,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "stopped", "lost")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Job(Base):
    """A batch job. Status changes are committed before they are acted on."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    purpose: Mapped[str] = mapped_column(String(16), default="training")
    command: Mapped[str] = mapped_column(Text, default="")
    profile: Mapped[str] = mapped_column(String(100), default="standard")
    datasets: Mapped[list] = mapped_column(JSON, default=list)
    parents: Mapped[list] = mapped_column(JSON, default=list)
    env: Mapped[dict] = mapped_column(JSON, default=dict)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    message: Mapped[str] = mapped_column(Text, default="")
    continued_from: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    timeout_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    notify_url: Mapped[str] = mapped_column(Text, default="")
    runner: Mapped[str] = mapped_column(String(32), default="local")
    #: what the runner needs to find the job again after a restart (pid + start time, name)
    runner_ref: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    copy_output: Mapped[bool] = mapped_column(Boolean, default=False)
    notified: Mapped[bool] = mapped_column(Boolean, default=False)


#: what a job looks like in the API, in this order: the one list that ``scheduler.job_to_dict``
#: and the SQLite-built page both follow. Datetimes are ISO 8601 in UTC with a ``Z``; JSON
#: lists and mappings are never null
API_FIELDS: dict[str, str] = {
    "id": "plain",
    "owner": "plain",
    "name": "plain",
    "status": "plain",
    "exit_code": "plain",
    "created_at": "time",
    "started_at": "time",
    "finished_at": "time",
    "continued_from": "plain",
    "message": "plain",
    "command": "plain",
    "purpose": "plain",
    "profile": "plain",
    "datasets": "list",
    "parents": "list",
    "timeout_seconds": "plain",
    "notify_url": "plain",
    "env": "mapping",
}


def _sqlite_api_value(name: str, kind: str) -> ColumnElement:
    """One field of a job as SQLite's JSON functions should write it."""
    col = getattr(Job, name)
    if kind == "plain":
        return col
    raw = type_coerce(col, Text)  # the stored text, without SQLAlchemy's conversions
    if kind == "time":  # stored as "2025-01-02 03:04:05.678901" (UTC); isoformat drops .000000
        iso = type_coerce(func.replace(raw, " ", "T"), Text)
        short = type_coerce(func.substr(iso, 1, 19), Text)
        return case(
            (raw.is_(None), None),
            (func.substr(raw, 20) == ".000000", short.concat("Z")),
            else_=iso.concat("Z"),
        )
    empty = "[]" if kind == "list" else "{}"
    return func.json(case((or_(raw.is_(None), raw == "null"), empty), else_=raw))


@cache
def _sqlite_job_json() -> ColumnElement[str]:
    """json_object(...) of a jobs row, compiled once: building and hashing the expression of
    18 fields on every request would cost more than running it."""
    args: list = []
    for name, kind in API_FIELDS.items():
        args += [name, _sqlite_api_value(name, kind)]
    sql = func.json_object(*args).compile(
        dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}
    )
    return literal_column(str(sql), Text)


class PageCache:
    """Encoded pages of the jobs list, kept while the database is unchanged.

    SQLite's ``data_version``, read on a connection of our own that never writes, changes with
    every commit by any other connection: the service's and other processes' alike. A page is
    stored under the version read before its query, so it is never older than that version."""

    def __init__(self, path: str, max_bytes: int = 8 * 2**20):
        self._watch = sqlite3.connect(path, check_same_thread=False)
        self.max_bytes = max_bytes
        self._version = -1
        self._pages: dict[tuple, str] = {}
        self._bytes = 0

    def version(self) -> int:
        """The current version; a change empties the cache."""
        v = self._watch.execute("PRAGMA data_version").fetchone()[0]
        if v != self._version:
            self._pages.clear()
            self._bytes, self._version = 0, v
        return v

    def get(self, key: tuple) -> str | None:
        return self._pages.get(key)

    def put(self, key: tuple, body: str, version: int) -> None:
        if version != self._version or len(body) > self.max_bytes:
            return
        while self._pages and self._bytes + len(body) > self.max_bytes:  # oldest out first
            self._bytes -= len(self._pages.pop(next(iter(self._pages))))
        self._pages[key] = body
        self._bytes += len(body)


_page_caches: weakref.WeakKeyDictionary[Engine, PageCache] = weakref.WeakKeyDictionary()


def _page_cache(engine: Engine) -> PageCache | None:
    path = engine.url.database
    if not path or path == ":memory:" or path.startswith("file:"):
        return None  # each connection of an in-memory database is its own database
    if engine not in _page_caches:
        _page_caches[engine] = PageCache(path)
    return _page_caches[engine]


def jobs_page_json(
    session: Session, owner: str | None, status: str | None, limit: int, offset: int
) -> str | None:
    """The jobs of ``owner`` (None: everyone's) with ``status`` (None: any), newest first, as
    the API's JSON array; None if the database is not SQLite.

    SQLite writes each job's JSON itself (loading ORM objects, parsing their datetimes and
    JSON columns and encoding them again cost ~8x more), and a page is kept until the next
    commit: users' job lists are polled far more often than jobs change."""
    engine = session.get_bind()
    if engine.dialect.name != "sqlite":
        return None
    cache = _page_cache(engine)
    key = (owner, status, limit, offset)
    version = cache.version() if cache else 0
    body = cache.get(key) if cache else None
    if body is not None:
        return body
    q = select(_sqlite_job_json()).select_from(Job)
    if owner is not None:
        q = q.where(Job.owner == owner)
    if status is not None:
        q = q.where(Job.status == status)
    q = q.order_by(Job.id.desc()).limit(limit).offset(offset)
    body = "[" + ",".join(session.scalars(q)) + "]"
    if cache:
        cache.put(key, body, version)
    return body


def migrate(url: str) -> None:
    """Bring the database at ``url`` to the newest schema."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(cfg, "head")


def make_session_factory(url: str) -> tuple[Engine, sessionmaker]:
    kwargs = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False}
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_cache)
    return engine, sessionmaker(engine, expire_on_commit=False)


def _sqlite_cache(dbapi_connection: Any, _record: Any) -> None:
    """Up to 32 MB of pages per connection (default 2 MB): 10,000 jobs take ~4 MB, and a page
    of a user's jobs reads rows spread over the whole table; with the default the rows came
    from the OS cache, one read() each (a quarter of the list call)."""
    dbapi_connection.execute("PRAGMA cache_size = -32000")
