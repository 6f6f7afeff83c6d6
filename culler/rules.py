"""The cull rules as pure functions (DESIGN.md, "Cull rules").

``decide(now, thresholds, server, activity)`` is the one place the rules live: the kqi-culler
loop calls it for each running server, and the server extension calls it for the forecast it
shows the user. No I/O here, so every rule is tested with an injected clock.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

DAY = 86400.0
DEFAULT_MAX_UPTIME = 60 * DAY
DEFAULT_NO_ACCESS_TIMEOUT = 30 * DAY
DEFAULT_IDLE_TIMEOUT = 90 * 60.0
DEFAULT_WATCH = ("python", "papermill", "pt_main_thread", "lmp_serial", "lmp", "lmp_mpi")
#: Rules in the order DESIGN.md gives them; the first that holds is the recorded reason.
RULES = ("uptime", "no-access", "lifetime", "idle")
#: Kernel states that count as idle; "starting", "busy", "restarting", ... do not.
#: "starting": a kernel no client ever connected to (started through the REST API) runs no code
IDLE_KERNEL_STATES = frozenset({"idle", "dead", "starting"})


def utc(dt: datetime) -> datetime:
    """Aware UTC datetime (naive input is taken as UTC, as JupyterHub stores it)."""
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def isoformat(dt: datetime | None) -> str | None:
    """ISO 8601 UTC with a Z, as the routes answer."""
    if dt is None:
        return None
    return utc(dt).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(text: str | None) -> datetime | None:
    """Parse the ISO 8601 times JupyterHub and the server extension give (Z or offset)."""
    if not text:
        return None
    text = text.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Python 3.10 accepts only 3 or 6 fraction digits
    m = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)$", text)
    if m and m.group(2):
        text = m.group(1) + (m.group(2) + "000000")[:7] + m.group(3)
    return utc(datetime.fromisoformat(text))


def parse_lifetime_hours(value: Any) -> float | None:
    """``lifetime_hours`` as the spawn options hold it (number or numeric text); anything
    else means no lifetime (the kqi service refuses bad values at spawn)."""
    if value is None or isinstance(value, bool) or value == "":
        return None
    try:
        hours = float(value)
    except (TypeError, ValueError):
        return None
    return hours if math.isfinite(hours) and hours > 0 else None


# -- watch list ------------------------------------------------------------------------------
def _matches(name: str, entry: str) -> bool:
    # an entry also matches its versioned names: python -> python3, python3.11
    return re.fullmatch(re.escape(entry) + r"(\d+(\.\d+)*)?", name) is not None


#: interpreters whose script (or ``-m`` module) is the program a process runs
_INTERPRETER = re.compile(r"(python|pypy)\d*(\.\d+)*")
#: interpreter options that take the next word as their value
_OPTION_WITH_VALUE = frozenset({"-W", "-X", "-Q"})


def programs(cmdline: Sequence[str]) -> list[str]:
    """The programs a command line runs, by base name: argv[0], and for an interpreter the
    script it runs (``python3 /venv/bin/papermill``) or its ``-m`` module. Other words are
    data, not programs: ``tmux new -d 'python3 busy.py'`` leaves a tmux server whose
    arguments say python3 long after that python ended (its child is seen by its own name)."""
    if not cmdline:
        return []
    first = os.path.basename(cmdline[0])
    found = [first]
    if _INTERPRETER.fullmatch(first):
        args = iter(cmdline[1:])
        for arg in args:
            if arg.startswith("-c") or arg == "-":  # code on the command line or stdin
                break
            if arg.startswith("-m"):  # -m module, -mmodule
                found.append(arg[2:] or next(args, ""))
                break
            if arg in _OPTION_WITH_VALUE:
                next(args, None)
            elif not arg.startswith("-"):
                found.append(os.path.basename(arg))
                break
    return [w for w in found if w]


def watch_match(name: str, cmdline: Sequence[str], watch: Iterable[str]) -> str | None:
    """The watch-list entry this process matches, by its name or a program it runs (see
    ``programs``); None if it matches none."""
    watch = tuple(watch)
    for candidate in [name, *programs(cmdline)]:
        for entry in watch:
            if _matches(candidate, entry):
                return entry
    return None


# -- inputs --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Thresholds:
    """Rule thresholds in seconds, and the watch list."""

    max_uptime: float = DEFAULT_MAX_UPTIME
    no_access_timeout: float = DEFAULT_NO_ACCESS_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    watch: tuple[str, ...] = DEFAULT_WATCH

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_uptime": self.max_uptime,
            "no_access_timeout": self.no_access_timeout,
            "idle_timeout": self.idle_timeout,
            "watch": list(self.watch),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Thresholds:
        base = cls()
        return cls(
            max_uptime=float(d.get("max_uptime", base.max_uptime)),
            no_access_timeout=float(d.get("no_access_timeout", base.no_access_timeout)),
            idle_timeout=float(d.get("idle_timeout", base.idle_timeout)),
            watch=tuple(d.get("watch", base.watch)),
        )


@dataclass(frozen=True)
class ServerRecord:
    """What the hub knows of a running server (rules 1-3 need nothing more)."""

    user: str
    name: str = ""
    started: datetime | None = None
    last_activity: datetime | None = None
    lifetime_hours: float | None = None

    @property
    def label(self) -> str:
        return f"{self.user}/{self.name}"


@dataclass(frozen=True)
class Kernel:
    id: str
    execution_state: str
    last_activity: datetime | None = None


@dataclass(frozen=True)
class WatchedProcess:
    pid: int
    name: str
    cmdline: tuple[str, ...] = ()


@dataclass(frozen=True)
class LastWatched:
    """When the server last saw a watched process alive, and which: a pipeline whose steps
    are watched programs is active until its last one ended, not since the last click."""

    name: str
    seen: datetime


@dataclass(frozen=True)
class Activity:
    """The server's own view (its ``api/kqi/activity`` route), minus the forecast."""

    started: datetime | None
    last_browser_access: datetime | None
    kernels: tuple[Kernel, ...] = ()
    watched_processes: tuple[WatchedProcess, ...] = ()
    last_watched_process: LastWatched | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "started": isoformat(self.started),
            "last_browser_access": isoformat(self.last_browser_access),
            "kernels": [
                {
                    "id": k.id,
                    "execution_state": k.execution_state,
                    "last_activity": isoformat(k.last_activity),
                }
                for k in self.kernels
            ],
            "watched_processes": [
                {"pid": p.pid, "name": p.name, "cmdline": list(p.cmdline)}
                for p in self.watched_processes
            ],
            "last_watched_process": None
            if self.last_watched_process is None
            else {
                "name": self.last_watched_process.name,
                "seen": isoformat(self.last_watched_process.seen),
            },
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Activity:
        """Parse the route's answer; a malformed answer raises (the probe then failed)."""
        lw = d.get("last_watched_process")
        seen = parse_time(lw["seen"]) if lw else None
        return cls(
            started=parse_time(d.get("started")),
            last_browser_access=parse_time(d.get("last_browser_access")),
            kernels=tuple(
                Kernel(str(k["id"]), str(k["execution_state"]), parse_time(k.get("last_activity")))
                for k in d.get("kernels", [])
            ),
            watched_processes=tuple(
                WatchedProcess(int(p["pid"]), str(p["name"]), tuple(p.get("cmdline") or ()))
                for p in d.get("watched_processes", [])
            ),
            last_watched_process=LastWatched(str(lw["name"]), seen) if lw and seen else None,
        )


# -- the decision ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    """``cull``: stop now because ``rule`` holds (since ``at``). Otherwise ``rule``/``at`` is
    the forecast: the rule that will stop the server first if nothing changes (None if
    none will). ``why`` says in words why; ``measured`` holds the values it was judged on."""

    cull: bool
    rule: str | None
    at: datetime | None
    why: str
    measured: dict[str, Any] = field(default_factory=dict)

    def forecast(self) -> dict[str, Any]:
        return {"rule": self.rule, "at": isoformat(self.at)}


def _secs(delta: timedelta) -> float:
    return round(delta.total_seconds(), 1)


def human(seconds: float) -> str:
    """A duration as people read it in a log line: 12 s, 90 min, 36 h, 30 d."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if abs(seconds) >= 2 * size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def decide(
    now: datetime, th: Thresholds, server: ServerRecord, activity: Activity | None
) -> Decision:
    """Apply the four rules. ``activity`` None means the probe failed: rule 4 is then not
    applied, and rule 2 uses the hub's last activity (never earlier than the last browser
    access, so it can only delay a cull)."""
    now = utc(now)
    started = utc(server.started or (activity.started if activity else None) or now)
    if activity is not None:
        last_access, source = activity.last_browser_access, "browser"
    else:
        last_access, source = server.last_activity, "hub"
    if last_access is None:  # never accessed since the server started
        last_access, source = (activity.started if activity else None) or started, "start"
    last_access = utc(last_access)
    measured: dict[str, Any] = {
        "probe": "ok" if activity else "failed",
        "uptime_seconds": _secs(now - started),
        "no_browser_access_seconds": _secs(now - last_access),
        "access_source": source,
    }
    # when each rule holds if nothing changes (None: never), and how to say it
    due: dict[str, datetime | None] = {
        "uptime": started + timedelta(seconds=th.max_uptime),
        "no-access": last_access + timedelta(seconds=th.no_access_timeout),
        "lifetime": None,
    }
    words = {
        "uptime": f"up {human(_secs(now - started))} (max {human(th.max_uptime)})",
        "no-access": f"no browser access for {human(_secs(now - last_access))} "
        f"(max {human(th.no_access_timeout)})",
    }
    if server.lifetime_hours is not None:
        measured["lifetime_hours"] = server.lifetime_hours
        due["lifetime"] = started + timedelta(hours=server.lifetime_hours)
        words["lifetime"] = f"its lifetime of {server.lifetime_hours:g} h has passed"
    due["idle"], blocker = _idle_due(now, th, last_access, activity, measured)
    idle_for = human(measured.get("idle_seconds", 0))
    if "idle_since_ended" in measured:  # the clock started when the last watched one ended
        idle_for += f" since {measured['idle_since_ended']} ended"
    words["idle"] = (
        f"idle for {idle_for} (max {human(th.idle_timeout)}): "
        "no browser access, no busy kernel, no watched process"
    )

    for rule in RULES:
        at = due[rule]
        if at is not None and at <= now:
            return Decision(True, rule, at, words[rule], measured)
    upcoming = [(at, i, rule) for i, (rule, at) in enumerate(due.items()) if at is not None]
    at, _, rule = min(upcoming)
    why = f"next: {rule} in {human(_secs(at - now))}"
    return Decision(False, rule, at, f"{blocker}; {why}" if blocker else why, measured)


def _idle_due(
    now: datetime,
    th: Thresholds,
    last_access: datetime,
    activity: Activity | None,
    measured: dict[str, Any],
) -> tuple[datetime | None, str]:
    """When rule 4 will hold if nothing changes, or (None, what keeps it from holding)."""
    if activity is None:
        return None, "activity probe failed, idle rule not applied"
    busy = [k for k in activity.kernels if k.execution_state not in IDLE_KERNEL_STATES]
    last = last_access
    for k in activity.kernels:
        if k.last_activity is not None and utc(k.last_activity) > last:
            last = utc(k.last_activity)
    lw = activity.last_watched_process
    if lw is not None and utc(lw.seen) > last:  # a watched process was alive until then
        last = utc(lw.seen)
        measured["idle_since_ended"] = lw.name
    measured["kernels"] = len(activity.kernels)
    measured["busy_kernels"] = len(busy)
    measured["watched_processes"] = [f"{p.name}[{p.pid}]" for p in activity.watched_processes]
    measured["idle_seconds"] = _secs(now - last)
    if busy:
        return None, f"kernel {busy[0].id} is {busy[0].execution_state}"
    if activity.watched_processes:
        p = activity.watched_processes[0]
        return None, f"watched process {p.name} (pid {p.pid}) is running"
    return last + timedelta(seconds=th.idle_timeout), ""
