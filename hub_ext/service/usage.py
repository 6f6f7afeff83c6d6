"""Workspace size: each user's home and job folders measured in the background, kept in the
database, answered by ``GET api/usage`` and checked against the profile's storage at spawn and
job submission (``hub_ext.quota``).

The walks run one at a time in a thread of their own at the lowest CPU and I/O priority, never
on the event loop: a workspace of a million files takes a while, and nobody waits for it except
a user asking for the first time (who is measured at once, between two background walks).
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, DateTime, Float, String
from sqlalchemy.orm import Mapped, mapped_column
from tornado import web

from culler.rules import isoformat, utc

from ..layout import user_dir
from ..options import NAME_RE, default_profile
from ..quota import Usage, over_quota, usage_line
from . import du
from .db import Base, utcnow
from .handlers import UserHandler

#: seconds a spawn or the form waits for a user's first measurement before going on without
FIRST_WAIT = 10.0


class WorkspaceUsage(Base):
    """The last measurement of one user's workspace (one row per user, replaced each time)."""

    __tablename__ = "workspace_usage"

    user: Mapped[str] = mapped_column(String(255), primary_key=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    files: Mapped[int] = mapped_column(BigInteger)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    measured_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    def usage(self) -> Usage:
        return Usage(self.bytes, utc(self.measured_at))


class UsageMonitor:
    """Measures workspaces every ``kqi.usage_interval`` seconds (0: never, and no check)."""

    def __init__(self, kqi: Any):
        self.kqi = kqi
        self.log = kqi.log
        self.data_root = Path(kqi.data_root)
        self._stop = threading.Event()
        self._executor = ThreadPoolExecutor(
            1, thread_name_prefix="kqi-usage", initializer=du.lower_this_thread
        )
        self._pending: dict[str, asyncio.Future[WorkspaceUsage]] = {}

    @property
    def enabled(self) -> bool:
        return self.kqi.usage_interval > 0

    def roots(self, user: str) -> list[Path]:
        base = self.data_root / user_dir(user)
        return [base / "home", base / "jobs"]

    def users(self) -> list[str]:
        """Users with a folder under users/ (others have nothing to measure)."""
        try:
            entries = sorted((self.data_root / "users").iterdir())
        except FileNotFoundError:
            return []
        return [e.name for e in entries if e.is_dir() and not e.is_symlink()]

    def last(self, user: str) -> WorkspaceUsage | None:
        with self.kqi.session() as s:
            return s.get(WorkspaceUsage, user)

    async def get(self, user: str, wait: float | None = None) -> WorkspaceUsage | None:
        """The last measurement, or one made now if there is none; None when turned off, or
        when that first walk takes longer than ``wait`` seconds (it goes on and is recorded)."""
        if not self.enabled:
            return None
        row = self.last(user)
        if row is not None:
            return row
        try:
            return await asyncio.wait_for(self.measure(user), wait)
        except asyncio.TimeoutError:
            self.log.info("workspace of %s: first measurement still running after %ss", user, wait)
            return None

    async def usage(self, user: str) -> Usage | None:
        """What the option check and the form need, without holding a spawn up for long (the
        hub gives the service 30 s): a first walk of a big workspace is not waited for."""
        row = await self.get(user, wait=FIRST_WAIT)
        return row.usage() if row else None

    def measure(self, user: str) -> asyncio.Future[WorkspaceUsage]:
        """Measure ``user`` now (callers asking meanwhile share the walk)."""
        fut = self._pending.get(user)
        if fut is None:
            fut = self._pending[user] = asyncio.ensure_future(self._measure(user))
            fut.add_done_callback(lambda _f: self._pending.pop(user, None))
        return asyncio.shield(fut)

    async def _measure(self, user: str) -> WorkspaceUsage:
        """Walk and record; a user without folders yet is answered 0 and not recorded, so the
        next question (once the first spawn made the home) measures again."""
        started = time.monotonic()
        roots = self.roots(user)
        loop = asyncio.get_running_loop()
        tally = await loop.run_in_executor(self._executor, du.measure, roots, self._stop)
        row = WorkspaceUsage(
            user=user,
            bytes=tally.bytes,
            files=tally.files,
            seconds=round(time.monotonic() - started, 3),
            measured_at=utcnow(),
        )
        if not any(r.is_dir() for r in roots):
            return row
        with self.kqi.session() as s:
            row = s.merge(row)
            s.commit()
        return row

    async def run(self) -> None:
        """Every interval, each user in turn (so a first question waits for one walk at most)."""
        if not self.enabled:
            self.log.info("workspace sizes are not measured (KqiService.usage_interval = 0)")
            return
        while True:
            started = time.monotonic()
            try:
                users = self.users()
            except OSError:
                self.log.exception("listing the users' folders failed")
                users = []
            for user in users:
                try:
                    await self.measure(user)
                except du.Stopped:
                    return
                except Exception:  # one odd workspace must not end the others' measurements
                    self.log.exception("measuring the workspace of %s failed", user)
            self.log.debug(
                "workspaces of %d users measured in %.1f s", len(users), time.monotonic() - started
            )
            await asyncio.sleep(self.kqi.usage_interval)

    def close(self) -> None:
        """Stop a walk in progress at its next folder; do not wait for the thread."""
        self._stop.set()
        self._executor.shutdown(wait=False, cancel_futures=True)


def usage_to_dict(row: WorkspaceUsage, profile: str, quota: int) -> dict[str, Any]:
    usage = row.usage()
    return {
        "user": row.user,
        "bytes": row.bytes,
        "files": row.files,
        "measured_at": isoformat(row.measured_at),
        "seconds": row.seconds,
        "profile": profile,
        "quota": quota,
        "over_quota": over_quota(usage, quota) is not None,
        "text": usage_line(usage, quota),
    }


class UsageHandler(UserHandler):
    """GET api/usage[?user=NAME][&profile=P]: the caller's workspace (admins: anyone's) against
    the storage of profile P (default: the default profile)."""

    async def get(self) -> None:
        caller = await self.caller()
        wanted = self.get_argument("user", None) or caller.name
        if wanted != caller.name:
            if not caller.admin:
                raise web.HTTPError(403, "only admins see other users' workspace size")
            if "/" in wanted or wanted in (".", "..") or "\0" in wanted:
                raise web.HTTPError(400, "not a user name: %r", wanted)
            await self.user_info(wanted)  # 404 for a user the hub does not know
        profiles = self.kqi.profile_map
        profile = self.get_argument("profile", None) or default_profile(profiles)
        if not NAME_RE.fullmatch(profile) or profile not in profiles:
            raise web.HTTPError(400, "unknown profile %r (known: %s)", profile, ", ".join(profiles))
        monitor: UsageMonitor = self.kqi.usage
        if not monitor.enabled:
            raise web.HTTPError(404, "workspace sizes are not measured on this platform")
        row = await monitor.get(wanted)
        self.write_json(usage_to_dict(row, profile, profiles[profile].storage))
