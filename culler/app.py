"""``kqi-culler``: the hub-managed service that stops servers by the cull rules.

It only gathers inputs and acts: the hub's users API (paged) for the running servers, each
server's ``api/kqi/activity`` route for its own view, :func:`culler.rules.decide` for the
decision, the hub API to stop, the kqi service to record why. Run as ``python -m culler``.
"""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
from traitlets import Bool, Float, Integer, List, Unicode, default
from traitlets.config import Application, Config
from traitlets.config.loader import DeferredConfigString

from hub_ext.leftovers import forget_self, record_self, run_until_stopped

from .rules import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_UPTIME,
    DEFAULT_NO_ACCESS_TIMEOUT,
    DEFAULT_WATCH,
    Activity,
    Decision,
    ServerRecord,
    Thresholds,
    decide,
    human,
    isoformat,
    parse_lifetime_hours,
    parse_time,
)

#: The options the hub hands to the culler service (KQI_CULLER_CONFIG) and, as far as the
#: forecast needs them, to each server (KQI_CULL_RULES).
SETTINGS = (
    "max_uptime",
    "no_access_timeout",
    "idle_timeout",
    "watch",
    "every",
    "concurrency",
    "dry_run",
    "probe_timeout",
    "api_timeout",
)


class HubError(Exception):
    """The hub (or the kqi service) answered with an error or not at all."""


class KqiCuller(Application):
    name = "kqi-culler"
    description = """Stop idle JupyterHub servers by the kqi cull rules: uptime, no browser
    access, the server's own lifetime, and idle (no browser access, no busy kernel, no watched
    process). Times are in seconds."""

    aliases = {
        "max-uptime": "KqiCuller.max_uptime",
        "no-access-timeout": "KqiCuller.no_access_timeout",
        "idle-timeout": "KqiCuller.idle_timeout",
        "watch": "KqiCuller.watch",
        "every": "KqiCuller.every",
        "concurrency": "KqiCuller.concurrency",
        "log-level": "Application.log_level",
    }
    flags = {
        "dry-run": (
            {"KqiCuller": {"dry_run": True}},
            "Log the decisions without stopping any server.",
        ),
        "once": (
            {"KqiCuller": {"once": True}},
            "Make one pass, log its summary and exit (1 if the pass failed).",
        ),
    }

    max_uptime = Float(
        DEFAULT_MAX_UPTIME, help="Rule 1 (uptime): stop a server up this many seconds (60 days)."
    ).tag(config=True)
    no_access_timeout = Float(
        DEFAULT_NO_ACCESS_TIMEOUT,
        help="Rule 2 (no-access): stop a server without browser access this long (30 days).",
    ).tag(config=True)
    idle_timeout = Float(
        DEFAULT_IDLE_TIMEOUT,
        help="""Rule 4 (idle): stop a server when for this long (90 min) it had no browser
        access, all its kernels were idle, and no watched process ran in it.""",
    ).tag(config=True)
    watch = List(
        Unicode(),
        default_value=list(DEFAULT_WATCH),
        help="""Programs that keep a server from being idle, matched on the process name and
        the programs of its command line; an entry also matches its versioned names
        ('python' matches python3, python3.11).""",
    ).tag(config=True)
    every = Float(60, help="Seconds between two passes over the running servers.").tag(config=True)
    concurrency = Integer(10, help="Servers probed at the same time.").tag(config=True)
    dry_run = Bool(False, help="Log the decisions without stopping any server.").tag(config=True)
    once = Bool(
        False,
        help="""Make one pass and exit: for cron, or to see at once what new rules would do
        (with --dry-run).""",
    ).tag(config=True)
    probe_timeout = Float(
        10, help="Seconds one activity probe may take; a failed probe means no idle cull."
    ).tag(config=True)
    api_timeout = Float(30, help="Seconds one request to the hub or kqi service may take.").tag(
        config=True
    )
    page_size = Integer(200, help="Users fetched per page of the hub's users API.").tag(config=True)

    hub_api_url = Unicode(help="The hub API (env JUPYTERHUB_API_URL).").tag(config=True)

    @default("hub_api_url")
    def _hub_api_url(self) -> str:
        return os.environ.get("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api")

    api_token = Unicode(help="This service's hub token (env JUPYTERHUB_API_TOKEN).").tag(
        config=True
    )

    @default("api_token")
    def _api_token(self) -> str:
        return os.environ.get("JUPYTERHUB_API_TOKEN", "")

    proxy_url = Unicode(
        help="""Where user servers are reached: the proxy's origin, e.g. http://proxy-public
        on Kubernetes (env KQI_PROXY_URL; the embedded hub sets it)."""
    ).tag(config=True)

    @default("proxy_url")
    def _proxy_url(self) -> str:
        return os.environ.get("KQI_PROXY_URL", "http://127.0.0.1:8000")

    kqi_service_url = Unicode(
        help="""The kqi service, where each cull is recorded (env KQI_SERVICE_URL); empty:
        culls are only logged."""
    ).tag(config=True)

    @default("kqi_service_url")
    def _kqi_service_url(self) -> str:
        return os.environ.get("KQI_SERVICE_URL", "")

    @default("log_format")
    def _log_format(self) -> str:
        return "[kqi-culler %(asctime)s %(levelname)s] %(message)s"

    _session: aiohttp.ClientSession | None = None

    def initialize(self, argv: list[str] | None = None) -> None:
        self.log_level = logging.INFO  # one line per decision is the point; --log-level wins
        super().initialize(argv)
        # the hub's settings (kqi_hub_config.py, kqi-hub --KqiCuller.x=...) under our own
        # command line
        hub_settings = os.environ.get("KQI_CULLER_CONFIG")
        if hub_settings:
            self.update_config(Config({"KqiCuller": json.loads(hub_settings)}))
            self.update_config(self.cli_config)
        if not self.api_token:
            self.exit("kqi-culler: no JUPYTERHUB_API_TOKEN; run it as a JupyterHub service")
        if self.every <= 0 or self.concurrency < 1:
            self.exit("kqi-culler: --every must be > 0 and --concurrency >= 1")

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(
            max_uptime=self.max_uptime,
            no_access_timeout=self.no_access_timeout,
            idle_timeout=self.idle_timeout,
            watch=tuple(self.watch),
        )

    # -- requests -------------------------------------------------------------------------
    async def _fetch(
        self, method: str, url: str, body: Any = None, timeout: float | None = None
    ) -> Any:
        headers = {
            "Authorization": f"token {self.api_token}",
            "Accept": "application/jupyterhub-pagination+json, application/json",
        }
        if self._session is None or self._session.closed:
            # kept-alive connections: a probe then costs the proxy and us one request, not a
            # TCP connection each (a pass is mostly probes)
            connector = aiohttp.TCPConnector(limit=self.concurrency + 2)
            self._session = aiohttp.ClientSession(connector=connector)
        try:
            async with self._session.request(
                method,
                url,
                headers=headers,
                json=body,
                timeout=aiohttp.ClientTimeout(total=timeout or self.api_timeout),
            ) as resp:
                data = await resp.read()
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
            raise HubError(f"{method} {url}: {e!r}") from e
        if resp.status >= 400:
            detail = data[:200].decode(errors="replace")
            raise HubError(f"{method} {url}: {resp.status} {detail}")
        return json.loads(data) if data else None

    def _hub(self, path: str) -> str:
        return self.hub_api_url.rstrip("/") + "/" + path

    async def running_servers(self) -> AsyncIterator[tuple[ServerRecord, str]]:
        """Each ready server as (hub record, its URL path), paging through the users API.

        The first page is small (twice the probe concurrency), so that probing starts while
        the hub still serializes the next, full pages."""
        offset = 0
        limit = min(self.page_size, 2 * self.concurrency)
        while True:
            query = urlencode({"state": "active", "offset": offset, "limit": limit})
            limit = self.page_size
            page = await self._fetch("GET", self._hub(f"users?{query}"))
            users = page["items"] if isinstance(page, dict) else page
            for user in users:
                for name, srv in (user.get("servers") or {}).items():
                    if not srv.get("ready") or srv.get("pending"):
                        continue  # starting or stopping: the hub is busy with it
                    record = ServerRecord(
                        user=user["name"],
                        name=name,
                        started=parse_time(srv.get("started")),
                        last_activity=parse_time(srv.get("last_activity")),
                        lifetime_hours=parse_lifetime_hours(
                            (srv.get("user_options") or {}).get("lifetime_hours")
                        ),
                    )
                    yield record, srv["url"]
            nxt = page.get("_pagination", {}).get("next") if isinstance(page, dict) else None
            if not nxt:
                return
            offset = nxt["offset"]

    async def probe(self, record: ServerRecord, path: str) -> Activity | None:
        """The server's activity, or None (logged) if it cannot be had."""
        if path.startswith(("http://", "https://")):  # servers on subdomains: a full URL
            url = f"{path.rstrip('/')}/api/kqi/activity"
        else:
            url = f"{self.proxy_url.rstrip('/')}/{path.strip('/')}/api/kqi/activity"
        try:
            return Activity.from_dict(await self._fetch("GET", url, timeout=self.probe_timeout))
        except (HubError, ValueError, KeyError, TypeError) as e:
            self.log.warning("probe of %s failed: %s", record.label, e)
            return None

    async def stop(self, record: ServerRecord) -> None:
        user = quote(record.user, safe="")
        path = f"users/{user}/servers/{quote(record.name, safe='')}" if record.name else ""
        # the hub answers a stop only after up to its slow_stop_timeout (10 s by default)
        timeout = max(self.api_timeout, 30.0)
        await self._fetch("DELETE", self._hub(path or f"users/{user}/server"), timeout=timeout)

    async def record(self, record: ServerRecord, decision: Decision, culled_at: datetime) -> None:
        if not self.kqi_service_url:
            return
        event = {
            "user": record.user,
            "server": record.name,
            "rule": decision.rule,
            "reason": decision.why,
            "measured": decision.measured,
            "server_started": isoformat(record.started),
            "culled_at": isoformat(culled_at),
        }
        await self._fetch("POST", self.kqi_service_url.rstrip("/") + "/api/cull-events", event)

    # -- the loop -------------------------------------------------------------------------
    async def handle(
        self, record: ServerRecord, path: str, sem: asyncio.Semaphore, listed: asyncio.Event
    ) -> str:
        """Probe, decide, log one line, and act; errors stay with this server. Returns what
        happened: kept, culled, would-cull, failed."""
        async with sem:
            activity = await self.probe(record, path)
        now = datetime.now(timezone.utc)
        decision = decide(now, self.thresholds, record, activity)
        if not decision.cull:
            self.log.info("keep %s: %s", record.label, decision.why)
            return "kept" if activity is not None else "unprobed"
        if self.dry_run:
            self.log.info(
                "would cull %s (dry run): %s: %s", record.label, decision.rule, decision.why
            )
            return "would-cull"
        # stop only once the listing is complete: a stop shifts the hub's pages (the user
        # leaves state=active), and a later page must not skip anyone
        await listed.wait()
        self.log.info("cull %s: %s: %s", record.label, decision.rule, decision.why)
        try:
            await self.stop(record)
        except HubError as e:
            self.log.error("could not stop %s: %s", record.label, e)
            return "failed"
        try:
            await self.record(record, decision, culled_at=now)
        except HubError as e:
            self.log.error("stopped %s but could not record the cull: %s", record.label, e)
        return "culled"

    async def cull_once(self) -> dict[str, int]:
        """One pass over the running servers; returns how many ended how.

        Probing starts with the first page of users while the next pages are fetched, so a
        pass takes about as long as the probes themselves. A listing that fails midway
        cancels the pass (nothing stopped): it raises.
        """
        began = time.monotonic()
        sem = asyncio.Semaphore(self.concurrency)
        listed = asyncio.Event()
        tasks: list[asyncio.Task] = []
        try:
            async for record, path in self.running_servers():
                tasks.append(asyncio.create_task(self.handle(record, path, sem, listed)))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        listed.set()
        counts: dict[str, int] = {}
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, BaseException):
                self.log.error("error in a cull decision: %r", result)
                result = "failed"
            counts[result] = counts.get(result, 0) + 1
        self.log.info(
            "pass over %d servers in %.2f s: %s",
            len(tasks),
            time.monotonic() - began,
            ", ".join(f"{n} {what}" for what, n in sorted(counts.items())) or "none running",
        )
        return counts

    async def loop(self) -> None:
        self.log.info(
            "kqi-culler: every %s, %s, watch %s%s",
            human(self.every),
            ", ".join(
                f"{k}={human(v)}" for k, v in self.thresholds.to_dict().items() if k != "watch"
            ),
            ",".join(self.watch),
            " (dry run: nothing is stopped)" if self.dry_run else "",
        )
        pid_file = None if self.once else record_self()
        try:
            if self.once:
                await self._passes()
            elif sig := await run_until_stopped(self._passes()):
                self.log.info("kqi-culler stopped (%s)", sig.name)
        finally:
            forget_self(pid_file)
            if self._session is not None:
                await self._session.close()

    async def _passes(self) -> None:
        while True:
            began = time.monotonic()
            try:
                await self.cull_once()
            except Exception as e:  # a hub error must never end the loop
                if self.once:
                    self.log.error("pass failed: %s", e)
                    raise SystemExit(1) from e
                self.log.error("pass failed, trying again in %g s: %s", self.every, e)
            if self.once:
                return
            await asyncio.sleep(max(0.0, self.every - (time.monotonic() - began)))

    def start(self) -> None:
        try:
            asyncio.run(self.loop())
        except KeyboardInterrupt:  # a SIGINT before the handlers were in place
            self.log.info("kqi-culler stopped")


def hub_settings(config: Config) -> dict[str, Any]:
    """The culler's effective options from the hub's config (kqi_hub_config.py and the
    ``kqi-hub --KqiCuller.x=...`` command line, converted by the traits themselves)."""
    config = Config(config)
    for name, value in list(config.KqiCuller.items()):
        # traitlets 5 cannot turn a deferred "['a', 'b']" into a List(Unicode()): do it here
        if isinstance(value, DeferredConfigString) and name == "watch":
            text = str(value).strip()
            config.KqiCuller[name] = ast.literal_eval(text) if text[:1] in "[(" else [text]
    app = KqiCuller(config=config)
    return {name: getattr(app, name) for name in SETTINGS}


def server_rules_json(config: Config) -> str:
    """What a server needs for its forecast (env KQI_CULL_RULES): the thresholds."""
    s = hub_settings(config)
    th = Thresholds(s["max_uptime"], s["no_access_timeout"], s["idle_timeout"], tuple(s["watch"]))
    return json.dumps(th.to_dict())


def proxy_origin(bind_url: str) -> str:
    """The proxy as a local service reaches it (a wildcard bind becomes 127.0.0.1)."""
    u = urlsplit(bind_url)
    host = u.hostname or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"{u.scheme or 'http'}://{host}:{u.port or 80}"


def main() -> None:
    KqiCuller.launch_instance()
