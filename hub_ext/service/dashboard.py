"""The admin dashboard of the kqi service (``/services/kqi/``) and ``GET api/activity``.

Admins see every running server as the culler sees it (the service probes each server's own
``api/kqi/activity`` route, bounded and with a timeout, so a hung server cannot hang the page),
all jobs with filters, and the cull history. Pages are rendered on the server with jinja2
(autoescaping on) and the hub's own Bootstrap, so they look like part of JupyterHub.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from sqlalchemy import select
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from culler.rules import human, isoformat, parse_time

from .culls import CullEvent
from .db import JOB_STATUSES, Job
from .handlers import UserHandler
from .hubapi import UserInfo
from .scheduler import job_to_dict

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
PROBE_CONCURRENCY = 8  # servers probed at once
PROBE_TIMEOUT = 5.0  # seconds one probe may take
PAGE_SIZE = 200  # users per page of the hub's users API (the hub's maximum)
MAX_JOBS = 200  # jobs shown on one page
MAX_CULLS = 100  # cull events shown

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATES)),
    autoescape=True,  # every value is escaped unless marked safe; nothing here is
    undefined=jinja2.StrictUndefined,
)


# -- pure helpers ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunningServer:
    """A ready server as the hub lists it."""

    user: str
    name: str
    url: str
    started: str | None
    last_activity: str | None


def running_servers(users: Sequence[Mapping[str, Any]]) -> list[RunningServer]:
    """The ready servers in a page of the hub's user models (starting/stopping ones are the
    hub's business and have nothing to probe yet)."""
    out = []
    for u in users:
        for name, srv in sorted((u.get("servers") or {}).items()):
            if srv.get("ready") and not srv.get("pending"):
                out.append(
                    RunningServer(
                        u["name"], name, srv["url"], srv.get("started"), srv.get("last_activity")
                    )
                )
    return out


def probe_url(proxy_url: str, server_url: str) -> str:
    """Where a server's activity route is reached: its URL path behind the proxy, or its own
    full URL when servers live on subdomains."""
    if server_url.startswith(("http://", "https://")):
        return server_url.rstrip("/") + "/api/kqi/activity"
    return f"{proxy_url.rstrip('/')}/{server_url.strip('/')}/api/kqi/activity"


def ago(when: str | None, now: datetime) -> str:
    """'12 s ago', '90 min ago'; 'never' when there is no time."""
    t = parse_time(when)
    if t is None:
        return "never"
    return f"{human(max((now - t).total_seconds(), 0))} ago"


def until(when: str | None, now: datetime) -> str:
    """'in 42 min', or 'due now' when the time has passed (the culler acts on its next pass)."""
    t = parse_time(when)
    if t is None:
        return "—"
    left = (t - now).total_seconds()
    return f"in {human(left)}" if left > 0 else "due now"


def clock(when: str | None) -> str:
    """A time as an admin reads it in a table: '2026-11-26 10:15:03 UTC'."""
    t = parse_time(when)
    return t.strftime("%Y-%m-%d %H:%M:%S UTC") if t else "—"


def server_entry(srv: RunningServer, activity: Mapping[str, Any] | None, error: str) -> dict:
    """One server of ``GET api/activity``: the hub's record plus the server's own activity,
    or the probe's failure."""
    entry: dict[str, Any] = {
        "user": srv.user,
        "server": srv.name,
        "url": srv.url,
        "started": srv.started,
        "hub_last_activity": srv.last_activity,
        "probe": "ok" if activity is not None else "failed",
    }
    if activity is None:
        entry["error"] = error
        return entry
    for key in ("last_browser_access", "kernels", "watched_processes", "forecast"):
        entry[key] = activity.get(key)
    return entry


def server_view(entry: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """What the dashboard shows of one server: times relative to ``now``."""
    view = {
        "user": entry["user"],
        "server": entry["server"] or "(default)",
        "started": clock(entry.get("started")),
        "uptime": ago(entry.get("started"), now).removesuffix(" ago"),
        "ok": entry["probe"] == "ok",
        "error": entry.get("error", ""),
    }
    if not view["ok"]:
        return view
    view["last_access"] = ago(entry.get("last_browser_access"), now)
    view["kernels"] = [
        {
            "id": str(k.get("id", ""))[:8],
            "state": k.get("execution_state", "unknown"),
            "idle": ago(k.get("last_activity"), now).removesuffix(" ago"),
        }
        for k in entry.get("kernels") or []
    ]
    view["processes"] = [
        {"pid": p.get("pid"), "name": p.get("name", "")}
        for p in entry.get("watched_processes") or []
    ]
    forecast = entry.get("forecast") or {}
    view["rule"] = forecast.get("rule") or "—"
    view["at"] = clock(forecast.get("at"))
    view["in"] = until(forecast.get("at"), now)
    return view


def job_filters(user: str | None, status: str | None) -> tuple[str, str]:
    """The jobs filter from the query, refusing statuses that do not exist."""
    user = (user or "").strip()
    status = (status or "").strip()
    if status and status not in JOB_STATUSES:
        raise web.HTTPError(400, "status must be one of %s", ", ".join(JOB_STATUSES))
    return user, status


def duration(job: Mapping[str, Any], now: datetime) -> str:
    """How long a job ran (or has been running)."""
    start = parse_time(job.get("started_at"))
    if start is None:
        return "—"
    end = parse_time(job.get("finished_at")) or now
    return human(max((end - start).total_seconds(), 0))


# -- I/O ---------------------------------------------------------------------------------------
class AdminHandler(UserHandler):
    """Routes for admins only."""

    async def admin(self) -> UserInfo:
        user = await self.caller()
        if not user.admin:
            raise web.HTTPError(403, "only admins see the kqi dashboard")
        return user

    async def hub_servers(self) -> list[RunningServer]:
        """Every ready server, paging through the hub's users API."""
        servers: list[RunningServer] = []
        offset = 0
        while True:
            query = urlencode({"state": "active", "offset": offset, "limit": PAGE_SIZE})
            page = await self.kqi.hub.request("GET", f"users?{query}")
            users = page if isinstance(page, list) else (page or {}).get("items", [])
            servers.extend(running_servers(users))
            if len(users) < PAGE_SIZE:
                return servers
            offset += len(users)

    async def activity(self) -> list[dict[str, Any]]:
        """Each running server with its own activity (probed concurrently, bounded)."""
        proxy = os.environ.get("KQI_PROXY_URL", "http://127.0.0.1:8000")
        gate = asyncio.Semaphore(PROBE_CONCURRENCY)

        async def one(srv: RunningServer) -> dict[str, Any]:
            req = HTTPRequest(
                probe_url(proxy, srv.url),
                headers={"Authorization": f"token {self.kqi.api_token}"},
                request_timeout=PROBE_TIMEOUT,
                connect_timeout=PROBE_TIMEOUT,
            )
            async with gate:
                try:
                    resp = await AsyncHTTPClient().fetch(req)
                    data = json.loads(resp.body)
                    if not isinstance(data, dict):
                        raise ValueError("not a JSON object")
                    return server_entry(srv, data, "")
                except HTTPClientError as e:
                    return server_entry(srv, None, f"probe answered {e.code} {e.message}")
                except (OSError, asyncio.TimeoutError, ValueError) as e:
                    return server_entry(srv, None, f"probe failed: {e}")

        return list(await asyncio.gather(*(one(s) for s in await self.hub_servers())))


class ActivityHandler(AdminHandler):
    """``GET api/activity``: every running server, for admins."""

    async def get(self) -> None:
        await self.admin()
        self.write_json(await self.activity())


class DashboardHandler(AdminHandler):
    """The dashboard page; non-admins get a readable 403 page, not JSON."""

    def render_page(self, template: str, **values: Any) -> None:
        base = os.environ.get("JUPYTERHUB_BASE_URL", "/")
        page = _env.get_template(template).render(
            hub=base.rstrip("/") + "/hub/", prefix=self.kqi.service_prefix, **values
        )
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(page)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = self._reason
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        user = self.current_user or {}
        self.render_page(
            "kqi_error.html",
            status=status_code,
            message=message,
            user=user.get("name", ""),
            is_admin=False,
        )

    @web.authenticated
    async def get(self) -> None:
        user = await self.admin()
        now = datetime.now(timezone.utc)
        want_user, want_status = job_filters(
            self.get_argument("user", None), self.get_argument("status", None)
        )
        query = select(Job).order_by(Job.id.desc()).limit(MAX_JOBS)
        if want_user:
            query = query.where(Job.owner == want_user)
        if want_status:
            query = query.where(Job.status == want_status)
        with self.kqi.session() as s:
            jobs = [job_to_dict(j) for j in s.scalars(query)]
            owners = sorted(set(s.scalars(select(Job.owner).distinct())))
            culls = [
                e.to_dict()
                for e in s.scalars(select(CullEvent).order_by(CullEvent.id.desc()).limit(MAX_CULLS))
            ]
        servers = [server_view(e, now) for e in await self.activity()]
        for j in jobs:
            j["created"] = clock(j["created_at"])
            j["duration"] = duration(j, now)
        for c in culls:
            c["when"] = clock(c["culled_at"])
        self.render_page(
            "kqi_dashboard.html",
            user=user.name,
            is_admin=True,
            now=clock(isoformat(now)),
            servers=servers,
            jobs=jobs,
            owners=owners,
            statuses=JOB_STATUSES,
            want_user=want_user,
            want_status=want_status,
            culls=culls,
        )
