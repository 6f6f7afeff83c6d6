"""Managed services a previous hub left running, and how the services themselves stop.

JupyterHub starts each managed service in a session of its own and records no pid, so after a
``kill -9`` of the hub the old kqi service keeps its port and the next hub's service dies with
"Address already in use". Each service therefore records itself in a pid file (pid, start time,
command line: a pid alone may have been reused) and ``kqi-hub`` ends what such a file names
before it starts JupyterHub (JupyterHub does the same for its proxy:
``ConfigurableHTTPProxy._check_previous_process``). User servers and job supervisors are left
alone: they are meant to outlive the hub.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

#: the environment variable naming a service's pid file (set by the embedded config)
PID_FILE_ENV = "KQI_PID_FILE"


@dataclass(frozen=True)
class ProcessId:
    """Who a process is: its pid, when it started (psutil's create_time) and its argv."""

    pid: int
    create_time: float
    argv: tuple[str, ...]

    @classmethod
    def from_json(cls, text: str) -> ProcessId:
        """Parse a pid file; ValueError (naming what is wrong) for anything else."""
        try:
            d = json.loads(text)
            ident = cls(int(d["pid"]), float(d["create_time"]), tuple(str(a) for a in d["argv"]))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"not a pid record ({e!r})") from e
        if ident.pid <= 1:
            raise ValueError(f"not a pid record (pid {ident.pid})")
        return ident

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "argv": list(self.argv)})


def same_process(recorded: ProcessId, running: ProcessId | None) -> bool:
    """True only if ``running`` is the process the record names: a pid reused by another
    program (or the same program started again) is never taken for it."""
    return (
        running is not None
        and running.pid == recorded.pid
        and abs(running.create_time - recorded.create_time) < 0.05
        and running.argv == recorded.argv
    )


def is_our_service(argv: tuple[str, ...], data_root: str) -> bool:
    """A kqi service of this data root (as one a hub older than pid files left running)."""
    return "hub_ext.service" in argv and data_root in argv


def is_hub(argv: tuple[str, ...]) -> bool:
    """A running hub: ``kqi-hub``, ``python -m hub_ext.cli`` or a plain ``jupyterhub``."""
    return "hub_ext.cli" in argv or any(Path(a).name in ("kqi-hub", "jupyterhub") for a in argv[:2])


def pid_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("*.pid"))


def service_pid_file(data_root: Path, name: str) -> Path:
    """Where service ``name`` of this data root records itself."""
    return data_root / "hub" / "run" / f"{name}.pid"


# -- I/O -------------------------------------------------------------------------------------
def identify(pid: int) -> ProcessId | None:
    """The running process ``pid`` (None if there is none, or it is a zombie)."""
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return ProcessId(pid, p.create_time(), tuple(p.cmdline()))
    except psutil.Error:
        return None


def record_self(path: str | os.PathLike[str] | None = None) -> Path | None:
    """Write this process's pid file (path from ``$KQI_PID_FILE`` by default; none: no
    file, e.g. a service run by hand). Written whole or not at all."""
    path = path or os.environ.get(PID_FILE_ENV)
    if not path:
        return None
    path = Path(path)
    me = identify(os.getpid())
    if me is None:
        raise RuntimeError("this process cannot see itself in /proc")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(me.to_json())
    os.replace(tmp, path)
    return path


def forget_self(path: Path | None) -> None:
    """Remove this process's pid file at a clean exit (only if it still names us)."""
    if path is None:
        return
    try:
        if ProcessId.from_json(path.read_text()).pid == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def refuse_if_its_hub_runs(pid: int, what: str) -> None:
    """Exit if service ``pid`` still has its hub (as parent): that hub is not a crashed one but
    another kqi-hub on the same data root, and its services are not ours to end."""
    try:
        parent = identify(psutil.Process(pid).ppid())
    except psutil.Error:
        return
    if parent is not None and parent.pid > 1 and is_hub(parent.argv):
        raise SystemExit(
            f"kqi-hub: another hub runs on this data root (pid {parent.pid}: "
            f"{' '.join(parent.argv)}), with {what} (pid {pid}); stop that hub first"
        )


def end_process(pid: int, grace: float = 3.0) -> bool:
    """SIGTERM, ``grace`` seconds, then SIGKILL; True once the process is gone."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        except PermissionError:
            ident = identify(pid)
            raise SystemExit(
                f"kqi-hub: not allowed to end pid {pid} ({' '.join(ident.argv) if ident else '?'})"
                ": start kqi-hub as the account that started the previous one"
            ) from None
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if identify(pid) is None:
                return True
            time.sleep(0.05)
    return identify(pid) is None


def end_leftovers(run_dir: Path, say: Callable[[str], None], grace: float = 3.0) -> list[int]:
    """End every service a pid file in ``run_dir`` names that still runs; remove the files.
    Returns the pids ended."""
    records: dict[Path, ProcessId | None] = {}
    for path in pid_files(run_dir):
        try:
            recorded = ProcessId.from_json(path.read_text())
        except (OSError, ValueError) as e:
            say(f"ignoring the pid file {path}: {e}")
            recorded = None
        if recorded is not None and same_process(recorded, identify(recorded.pid)):
            refuse_if_its_hub_runs(recorded.pid, f"the {path.stem} service")
            records[path] = recorded
        else:
            records[path] = None
    ended = []
    for path, recorded in records.items():
        name = path.stem
        if recorded is not None:
            if not end_process(recorded.pid, grace):
                raise SystemExit(
                    f"kqi-hub: the {name} service a previous hub left running (pid "
                    f"{recorded.pid}) does not end, even on SIGKILL"
                )
            say(f"ended the {name} service a previous hub left running (pid {recorded.pid})")
            ended.append(recorded.pid)
        path.unlink(missing_ok=True)
    return ended


def port_holder(port: int) -> tuple[int | None, tuple[str, ...]] | None:
    """Who listens on TCP ``port`` of this machine: (pid, None if not visible; its argv)."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            running = identify(conn.pid) if conn.pid else None
            return conn.pid, running.argv if running else ()
    return None


def free_service_port(port: int, data_root: Path, say: Callable[[str], None]) -> None:
    """Make sure the kqi service can bind ``port``: end a kqi service of this data root that
    holds it; exit naming any other holder."""
    holder = port_holder(port)
    if holder is None:
        return
    pid, argv = holder
    if pid is not None and is_our_service(argv, str(data_root)):
        refuse_if_its_hub_runs(pid, "the kqi service")
        if not end_process(pid):
            raise SystemExit(f"kqi-hub: the old kqi service (pid {pid}) does not end")
        say(f"ended the kqi service a previous hub left running (pid {pid})")
        return
    who = f"pid {pid}: {' '.join(argv)}" if pid is not None else "a process this account cannot see"
    raise SystemExit(
        f"kqi-hub: port {port} of the kqi service is taken by another program, {who}\n"
        "Stop it, or choose another port with KQI_SERVICE_PORT."
    )


async def until_stopped() -> signal.Signals:
    """Wait for SIGINT or SIGTERM, whatever their disposition was (a hub started in the
    background passes SIGINT on ignored, and the service would wait for the hub's SIGTERM).
    After the first signal the handlers are gone again: a second one interrupts a stuck stop."""
    loop = asyncio.get_running_loop()
    got: asyncio.Future[signal.Signals] = loop.create_future()
    sigs = (signal.SIGINT, signal.SIGTERM)
    for s in sigs:
        loop.add_signal_handler(s, lambda s=s: got.done() or got.set_result(s))
    try:
        return await got
    finally:
        for s in sigs:
            loop.remove_signal_handler(s)


async def run_until_stopped(main: Awaitable[object]) -> signal.Signals | None:
    """Run ``main`` until it ends (None) or SIGINT/SIGTERM comes (``main`` is cancelled and
    awaited; the signal is returned). No KeyboardInterrupt, no traceback."""
    task = asyncio.ensure_future(main)
    stop = asyncio.ensure_future(until_stopped())
    await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    if not stop.done():
        stop.cancel()
        await asyncio.gather(stop, return_exceptions=True)
        task.result()
        return None
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return stop.result()
