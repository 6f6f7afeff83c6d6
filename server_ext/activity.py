"""The server's own activity, for the culler and the user: ``GET api/kqi/activity``.

Browser access is any request or websocket message authenticated by the hub's OAuth cookie
(JupyterLab also sends that cookie's token as a header: it counts too); API tokens, such as
the culler's own, are not browser access. Kernels come from the kernel manager. Watched
processes (server_ext.procscan) are this server's: everything below its init process (the
local spawner's subreaper, which adopts what a closed terminal left running: nohup, setsid,
``env -i``) or else below the server, and anything carrying this start's KQI_SERVER_ID; never
the server itself, its wrappers or its kernels (excluded by PID, not by name). The last time
a watched process was seen alive is kept: the idle clock starts when the last one ended.
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import datetime, timezone
from inspect import isawaitable
from typing import Any

from jupyter_server.base.handlers import APIHandler
from tornado import web
from tornado.websocket import WebSocketHandler

from culler.rules import (
    Activity,
    Kernel,
    LastWatched,
    ServerRecord,
    Thresholds,
    WatchedProcess,
    decide,
    parse_lifetime_hours,
)

from . import procscan
from .procscan import INIT_PID, MARKER


class BrowserAccess:
    """When a browser session last reached this server."""

    def __init__(self) -> None:
        self.last: datetime | None = None

    def touch(self) -> None:
        self.last = datetime.now(timezone.utc)


def is_browser_request(handler: web.RequestHandler, hub_auth: Any) -> bool:
    """Authenticated by the hub OAuth cookie, or by the token that cookie holds (JupyterLab
    sends it back in a header or, for websockets, the URL). A request with any other token
    (API tokens, services) is not a browser."""
    if hub_auth is None:
        return False
    cookie = handler.get_secure_cookie(hub_auth.cookie_name)
    if not cookie:
        return False
    if not getattr(handler, "_token_authenticated", False):
        return True  # HubAuth found no token: the cookie authenticated it
    return hub_auth.get_token(handler, in_cookie=False) == cookie.decode("utf8", "replace")


def track_browser_access(serverapp: Any, access: BrowserAccess) -> None:
    """Wrap the identity provider: every request it authenticates passes here, websocket
    upgrades included (their later messages are counted by wrapping ``on_message``)."""
    idp = serverapp.identity_provider
    hub_auth = getattr(idp, "hub_auth", None)
    if hub_auth is None:
        serverapp.log.warning("kqi: not under JupyterHub; browser access is not tracked")
        return
    original = idp.get_user

    async def get_user(handler: web.RequestHandler) -> Any:
        user = original(handler)
        if isawaitable(user):
            user = await user
        if (
            user is not None
            and not getattr(handler, "kqi_not_activity", False)
            and is_browser_request(handler, hub_auth)
        ):
            access.touch()
            if isinstance(handler, WebSocketHandler) and not hasattr(handler, "_kqi_tracked"):
                handler._kqi_tracked = True
                on_message = handler.on_message

                def counted(message: Any) -> Any:
                    access.touch()
                    return on_message(message)

                handler.on_message = counted
        return user

    idp.get_user = get_user


def kernel_states(kernel_manager: Any) -> tuple[list[Kernel], set[int]]:
    """Each kernel's state and last activity, and the PIDs of the kernel processes."""
    kernels, pids = [], set()
    for kid in list(kernel_manager.list_kernel_ids()):
        try:
            km = kernel_manager.get_kernel(kid)
        except KeyError:
            continue  # shut down meanwhile
        kernels.append(
            Kernel(
                kid,
                getattr(km, "execution_state", "unknown"),
                getattr(km, "last_activity", None),
            )
        )
        provisioner = getattr(km, "provisioner", None)
        pid = getattr(provisioner, "pid", None) or getattr(
            getattr(provisioner, "process", None), "pid", None
        )
        if pid:
            pids.add(int(pid))
    return kernels, pids


def watched_processes(
    server_pid: int,
    kernel_pids: set[int],
    marker: str,
    watch: tuple[str, ...],
    root: int = 0,
) -> list[WatchedProcess]:
    """Processes of this server that match the watch list (see the module docstring), by
    pid; one pass over /proc on Linux (server_ext.procscan), psutil elsewhere."""
    return procscan.watched(server_pid, kernel_pids, marker, watch, root)


class ActivityState:
    """Everything the activity route needs, set up once at extension load."""

    def __init__(self, serverapp: Any) -> None:
        self.serverapp = serverapp
        self.access = BrowserAccess()
        self.pid = os.getpid()
        # up = able to serve: the idle and no-access clocks of a never-opened server start here
        self.started = datetime.now(timezone.utc)
        self.marker = os.environ.get(MARKER, "")
        try:
            self.root = int(os.environ.get(INIT_PID, "0"))
        except ValueError:
            self.root = 0
        self.last_watched: LastWatched | None = None
        try:
            self.thresholds = Thresholds.from_dict(json.loads(os.environ["KQI_CULL_RULES"]))
        except (KeyError, ValueError, TypeError):
            self.thresholds = Thresholds()  # the spec's defaults
        self.lifetime_hours = parse_lifetime_hours(os.environ.get("KQI_LIFETIME_HOURS"))

    async def snapshot(self, ignore: frozenset[int] = frozenset()) -> dict[str, Any]:
        """``ignore``: pids left out (``kqi status`` leaves out itself, a python process)."""
        kernels, kernel_pids = kernel_states(self.serverapp.kernel_manager)
        processes = await asyncio.to_thread(
            watched_processes,
            self.pid,
            kernel_pids | ignore,
            self.marker,
            self.thresholds.watch,
            self.root,
        )
        if processes:
            self.last_watched = LastWatched(processes[0].name, datetime.now(timezone.utc))
        activity = Activity(
            self.started,
            self.access.last,
            tuple(kernels),
            tuple(processes),
            self.last_watched,
        )
        record = ServerRecord(
            user=os.environ.get("JUPYTERHUB_USER", ""),
            name=os.environ.get("JUPYTERHUB_SERVER_NAME", ""),
            started=self.started,
            lifetime_hours=self.lifetime_hours,
        )
        decision = decide(datetime.now(timezone.utc), self.thresholds, record, activity)
        return {**activity.to_dict(), "forecast": decision.forecast()}


class ActivityHandler(APIHandler):
    """GET api/kqi/activity: the owner's or an authorized token's view; not activity."""

    kqi_not_activity = True  # reading it does not count as browser access
    _track_activity = False  # ... nor as jupyter-server API activity

    @web.authenticated
    async def get(self) -> None:
        try:
            ignore = frozenset(int(x) for x in self.get_arguments("ignore_pid"))
        except ValueError as e:
            raise web.HTTPError(400, "ignore_pid must be a process id") from e
        self.finish(json.dumps(await self.settings["kqi_activity"].snapshot(ignore)))


def setup(serverapp: Any, base_url: str) -> list[tuple[str, type]]:
    """Start tracking browser access; the routes to add."""
    state = ActivityState(serverapp)
    serverapp.web_app.settings["kqi_activity"] = state
    track_browser_access(serverapp, state.access)
    return [(base_url.rstrip("/") + "/api/kqi/activity", ActivityHandler)]
