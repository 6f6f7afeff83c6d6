"""``kqi-hub``: start the embedded platform (JupyterHub + proxy + kqi service) on this machine.

Arguments after ``kqi-hub`` go to JupyterHub, e.g. ``kqi-hub --port 8080``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from jupyterhub.app import JupyterHub
from traitlets import Integer

from . import leftovers
from .isolation import IsolationUnavailable

HELP = """kqi-hub: start the kqi platform on this machine (JupyterHub on http://127.0.0.1:8000).

Usage: kqi-hub [JUPYTERHUB OPTIONS]    e.g. kqi-hub --port 8080

Environment:
  KQI_DATA_ROOT     data root (default ./.kqi-data): datasets/, users/, hub state
  KQI_SERVICE_PORT  port of the kqi service on 127.0.0.1 (default 10101)
  KQI_ADMIN_USER    the admin account (default admin); its first password is printed once

A kqi_hub_config.py in the current folder is loaded after the built-in config.
Ctrl-C stops the hub and its services; user servers and jobs keep running (see README).
JupyterHub's own options: kqi-hub --help-all
"""


class KqiHub(JupyterHub):
    """JupyterHub that stops within seconds: JupyterHub's own cleanup stops the managed
    services one after another (each up to 30 s + 30 s after SIGINT) while its periodic
    checks keep running, and its service check then fails on a deleted server record."""

    service_stop_timeout = Integer(
        2,
        help="""Seconds each managed service has to end after SIGINT when the hub stops
        (then SIGTERM, 1 s, then SIGKILL). The services are stopped together.""",
    ).tag(config=True)

    _stopping = False

    async def initialize(self, *args, **kwargs) -> None:
        await super().initialize(*args, **kwargs)
        self._say_isolation()

    def _say_isolation(self) -> None:
        """Say once at start whether users are kept apart; refuse to run when 'bubblewrap'
        was asked for and cannot be had."""
        from .spawner.local import KqiLocalSpawner

        if not issubclass(self.spawner_class, KqiLocalSpawner):
            return
        try:
            decision = self.spawner_class.isolation_for(self.config)
        except IsolationUnavailable as e:
            self.log.critical("kqi-hub: %s; not starting", e)
            self.exit(1)
        if decision.isolated:
            self.log.info(
                "kqi-hub: users are isolated: each runs as a Unix account of their own in a "
                "bubblewrap sandbox"
            )
        elif decision.admins_only:
            self.log.critical("kqi-hub: %s", decision.note())
        else:
            self.log.warning("kqi-hub: %s", decision.note())

    async def shutdown_cancel_tasks(self, sig=None) -> None:
        if self._stopping:  # a second Ctrl-C: the first stop is under way
            self.log.warning("kqi-hub: already stopping")
            return
        self._stopping = True
        began = time.monotonic()
        await super().shutdown_cancel_tasks(sig)
        self.log.info("kqi-hub: stopped in %.1f s", time.monotonic() - began)

    async def cleanup(self) -> None:
        # nothing may poll a service while it stops (the service check would read its
        # deleted server record), and nobody new comes in
        for pc in self._periodic_callbacks.values():
            pc.stop()
        if self.metrics_collector is not None:
            self.metrics_collector.stop()
        if self.http_server is not None:
            self.http_server.stop()
        self.log.info(self._user_servers_note())
        services = [s for s in self._service_map.values() if s.managed and s.spawner]
        for service in services:
            service.spawner.interrupt_timeout = self.service_stop_timeout
            service.spawner.term_timeout = 1
            service.spawner.kill_timeout = 1
        # JupyterHub's cleanup then finds them stopped
        await asyncio.gather(*(s.stop() for s in services), return_exceptions=True)
        await super().cleanup()

    def _user_servers_note(self) -> str:
        n = sum(
            1
            for user in self.users.values()
            for spawner in user.spawners.values()
            if spawner.active
        )
        servers = f"{n} user server{'' if n == 1 else 's'}"
        if self.cleanup_servers:
            return f"kqi-hub: stopping {servers} (c.JupyterHub.cleanup_servers = True)"
        return (
            f"kqi-hub: leaving {servers} and running jobs running; the next kqi-hub on this "
            "data root takes them over (c.JupyterHub.cleanup_servers = True stops servers "
            "with the hub)"
        )


def _say(message: str) -> None:
    print(f"kqi-hub: {message}", file=sys.stderr, flush=True)


def end_leftovers(data_root: Path) -> None:
    """End the services a killed hub left running, and make sure the kqi service's port is
    free (exit naming the program that holds it)."""
    text = os.environ.get("KQI_SERVICE_PORT", "10101")
    if not text.isdigit() or not 0 < int(text) < 65536:
        sys.exit(f"kqi-hub: KQI_SERVICE_PORT must be a port number (1-65535), not {text!r}")
    leftovers.end_leftovers(data_root / "hub" / "run", _say)
    leftovers.free_service_port(int(text), data_root, _say)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(HELP)
        return
    data_root = Path(os.environ.get("KQI_DATA_ROOT", ".kqi-data")).absolute()
    if Path(sys.prefix).absolute().is_relative_to(data_root):
        # servers see the data root hidden (bubblewrap): they could not find this Python
        sys.exit(f"kqi-hub: the data root {data_root} must not contain this Python ({sys.prefix})")
    os.environ["KQI_DATA_ROOT"] = str(data_root)
    (data_root / "datasets").mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:  # the platform's alone: users reach their parts only through binds
        os.chmod(data_root, 0o700)
    if not any(a.startswith(("--help", "--version", "--generate-config")) for a in argv):
        end_leftovers(data_root)
    config = Path(__file__).with_name("embedded_config.py")
    KqiHub.launch_instance(["-f", str(config), *argv])


if __name__ == "__main__":
    main()
