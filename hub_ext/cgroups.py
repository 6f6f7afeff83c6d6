"""CPU and memory limits on one machine: each server and each job in a cgroup of its own.

Pure parts (``detect``, ``limit_writes``) decide from /proc text what to write; ``CgroupSet``
does the few mkdir/write/read/rmdir calls. Both cgroup v1 (one hierarchy per controller) and
v2 (one unified tree) are handled. No library is used: cgroupspy is v1-only and unmaintained,
libcgroup's tools are subprocesses, and the systemd bindings need systemd.

Tree: ``<base>/<parent>/<hash of the data root>/<user>/<leaf>``; on v1 ``base`` is the hub's
own cgroup of each controller (so what the machine's own limits count still counts us), on
v2 the root of the unified tree (v2 allows no controllers below a cgroup with processes).
"""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from traitlets import CaselessStrEnum, Integer, Unicode
from traitlets.config import LoggingConfigurable

from .quota import size_text

#: the controllers limited on v1 (cpuacct and pids only where mounted)
V1_NEEDED = ("memory", "cpu")
V1_OPTIONAL = ("cpuacct", "pids")
V2 = "unified"


@dataclass(frozen=True)
class Mount:
    point: str
    root: str  # the part of the hierarchy this mount shows (not "/" for a bound subtree)
    fstype: str
    options: frozenset[str]  # mount and super options: rw/ro, controllers


@dataclass(frozen=True)
class Layout:
    """Where cgroups go. ``version`` 0: unusable, ``problem`` says why."""

    version: int
    bases: Mapping[str, str] = field(default_factory=dict)  # controller (v2: "unified") → dir
    problem: str = ""
    swap: bool = False  # memory.memsw.* (v1) / memory.swap.max (v2) exist: limit swap too


def parse_mountinfo(text: str) -> list[Mount]:
    """cgroup and cgroup2 mounts of /proc/self/mountinfo."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, rest = left.split(), right.split()
        if len(fields) < 6 or len(rest) < 3 or rest[0] not in ("cgroup", "cgroup2"):
            continue
        opts = set(fields[5].split(",")) | set(rest[2].split(","))
        point = fields[4].replace("\\040", " ")
        mounts.append(Mount(point, fields[3], rest[0], frozenset(opts)))
    return mounts


def parse_self_cgroup(text: str) -> dict[str, str]:
    """/proc/self/cgroup → {controller: path}; the v2 entry is under "unified"."""
    paths = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for ctrl in parts[1].split(",") if parts[1] else [V2]:
            paths[ctrl] = parts[2]
    return paths


def _below(mount: Mount, path: str) -> str:
    """The directory of cgroup ``path`` in ``mount`` (whose root may be a subtree)."""
    root = mount.root.rstrip("/")
    rel = path[len(root) :] if root and path.startswith(root + "/") else path
    rel = "" if path == mount.root else rel
    return str(Path(mount.point, rel.lstrip("/")))


def detect(
    mountinfo: str, self_cgroup: str, v2_controllers: str = "", mode: str = "auto"
) -> Layout:
    """Choose v2 when its tree has the memory and cpu controllers, else v1 when both are
    mounted, else nothing (with the reason). ``v2_controllers``: the text of the unified
    root's cgroup.controllers."""
    if mode == "off":
        return Layout(0, problem="cgroups are off (c.KqiCgroups.mode = 'off')")
    mounts = parse_mountinfo(mountinfo)
    own = parse_self_cgroup(self_cgroup)
    problems = []
    unified = next((m for m in mounts if m.fstype == "cgroup2"), None)
    if mode in ("auto", "v2"):
        have = set(v2_controllers.split())
        if unified is None:
            problems.append("no cgroup v2 mount")
        elif not {"memory", "cpu"} <= have:
            problems.append(f"cgroup v2 at {unified.point} lacks the memory and cpu controllers")
        elif "ro" in unified.options:
            problems.append(f"cgroup v2 at {unified.point} is mounted read-only")
        else:
            return Layout(2, {V2: unified.point})
    if mode in ("auto", "v1"):
        bases, missing = {}, []
        for ctrl in V1_NEEDED + V1_OPTIONAL:
            m = next((m for m in mounts if m.fstype == "cgroup" and ctrl in m.options), None)
            if m is None:
                if ctrl in V1_NEEDED:
                    missing.append(ctrl)
                continue
            if "ro" in m.options:
                missing.append(f"{ctrl} (read-only)")
                continue
            bases[ctrl] = _below(m, own.get(ctrl, "/"))
        if not missing:
            return Layout(1, bases)
        problems.append("no writable cgroup v1 " + ", ".join(missing))
    return Layout(0, problem="; ".join(problems))


def cpu_quota(cpu: float, period_us: int) -> int:
    """Microseconds of CPU per period; at least 1 ms (the kernel's minimum)."""
    return max(1000, round(cpu * period_us))


def limit_writes(
    cpu: float, memory: int, layout: Layout, pids_max: int = 0, period_us: int = 100_000
) -> list[tuple[str, str, str]]:
    """(controller, file, value) to write into a new leaf, in order; 0 means no limit."""
    out: list[tuple[str, str, str]] = []
    if layout.version == 1:
        if memory > 0:
            out.append(("memory", "memory.limit_in_bytes", str(memory)))
            if layout.swap:  # after the memory limit: memsw may not be below it
                out.append(("memory", "memory.memsw.limit_in_bytes", str(memory)))
        if cpu > 0:
            out.append(("cpu", "cpu.cfs_period_us", str(period_us)))
            out.append(("cpu", "cpu.cfs_quota_us", str(cpu_quota(cpu, period_us))))
        if pids_max > 0 and "pids" in layout.bases:
            out.append(("pids", "pids.max", str(pids_max)))
    elif layout.version == 2:
        if memory > 0:
            out.append((V2, "memory.max", str(memory)))
            if layout.swap:
                out.append((V2, "memory.swap.max", "0"))
        if cpu > 0:
            out.append((V2, "cpu.max", f"{cpu_quota(cpu, period_us)} {period_us}"))
        if pids_max > 0:
            out.append((V2, "pids.max", str(pids_max)))
    return out


def oom_message(kills: int, limit: int, peak: int | None = None) -> str:
    """What the user reads when the kernel killed for memory."""
    what = "1 process" if kills == 1 else f"{kills} processes"
    text = f"out of memory: {what} killed at the profile's limit of {size_text(limit)}"
    return text + (f" (peak {size_text(peak)})" if peak else "")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _counter(text: str, key: str) -> int:
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


class CgroupSet:
    """One leaf (a server or a job) in each hierarchy used: v1 one dir per controller
    (shared mounts once), v2 one dir."""

    def __init__(self, dirs: Mapping[str, str], version: int, root: str = ""):
        self.dirs = dict(dirs)
        self.version = version
        self.root = root  # v2: the unified tree's root (controllers are enabled down from it)

    def to_dict(self) -> dict:
        """What a supervisor or a restarted hub needs to find the leaf again."""
        return {"version": self.version, "dirs": self.dirs, "root": self.root}

    @classmethod
    def from_dict(cls, data: Mapping) -> CgroupSet:
        return cls(data["dirs"], data["version"], data.get("root", ""))

    @property
    def paths(self) -> list[Path]:
        return sorted({Path(d) for d in self.dirs.values()})

    def create(self, writes: list[tuple[str, str, str]]) -> None:
        """Make the leaf and write its limits; on failure nothing is left behind."""
        try:
            for path in self.paths:
                for attempt in range(3):  # another leaf's remove() may take a parent away
                    try:
                        if self.version == 2:
                            _v2_parents(Path(self.root), path.parent)
                        path.mkdir(parents=True, exist_ok=True)
                        break
                    except FileNotFoundError:
                        if attempt == 2:
                            raise
            for ctrl, name, value in writes:
                Path(self.dirs[ctrl], name).write_text(value)
        except OSError:
            self.remove()
            raise

    def join_preexec(self) -> Callable[[], None]:
        """A Popen preexec_fn moving the new process into the leaf: only os.open/os.write
        of paths made beforehand ("0" is the writing process itself)."""
        targets = [os.fsencode(p / "cgroup.procs") for p in self.paths]

        def join() -> None:
            for target in targets:
                fd = os.open(target, os.O_WRONLY)
                try:
                    os.write(fd, b"0")
                finally:
                    os.close(fd)

        return join

    def oom_kills(self) -> int:
        """Processes the kernel killed for memory in the leaf so far."""
        if "memory" in self.dirs:
            return _counter(_read(Path(self.dirs["memory"], "memory.oom_control")), "oom_kill")
        if V2 in self.dirs:
            return _counter(_read(Path(self.dirs[V2], "memory.events")), "oom_kill")
        return 0

    def peak(self) -> int | None:
        """Highest memory use, where the kernel keeps it (v2 since Linux 5.19)."""
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        text = _read(Path(self.dirs.get("memory", self.dirs.get(V2, "")), name)).strip()
        return int(text) if text.isdigit() else None

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.paths:
            found |= {int(x) for x in _read(path / "cgroup.procs").split()}
        return found

    def kill_all(self, sig: int = signal.SIGKILL) -> int:
        count = 0
        for pid in self.pids():
            try:
                os.kill(pid, sig)
                count += 1
            except ProcessLookupError:
                pass
        return count

    def remove(self, kill: bool = False, timeout: float = 5.0) -> bool:
        """rmdir the leaf once no process is in it (after SIGKILL of all of them if
        ``kill``); False when processes remain."""
        deadline = time.monotonic() + timeout
        while kill and self.kill_all() and time.monotonic() < deadline:
            time.sleep(0.02)
        done = True
        for path in self.paths:
            if not _rmdir(path, tries=50 if kill else 1):
                done = False
                continue
            # the user's and the data root's levels too, once nothing else is below them
            # (the kernel refuses to remove a cgroup that has children)
            for parent in (path.parent, path.parent.parent):
                if not _rmdir(parent, tries=1):
                    break
        return done


def _rmdir(path: Path, tries: int) -> bool:
    """rmdir a cgroup; EBUSY (a killed process still leaving) is retried ``tries`` times."""
    for _ in range(tries):
        try:
            path.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError as e:
            if e.errno != errno.EBUSY:
                return False
            time.sleep(0.02)
    return False


def _enable_v2(path: Path) -> None:
    control = path / "cgroup.subtree_control"
    have = set(_read(control).split())
    wanted = {"memory", "cpu", "pids"} & set(_read(path / "cgroup.controllers").split())
    if wanted - have:
        control.write_text(" ".join(f"+{c}" for c in sorted(wanted - have)))


def _v2_parents(root: Path, path: Path) -> None:
    """v2: a cgroup is limited only by controllers enabled in each of its ancestors."""
    here = root
    _enable_v2(here)
    for part in path.relative_to(root).parts:
        here = here / part
        here.mkdir(exist_ok=True)
        _enable_v2(here)


class KqiCgroups(LoggingConfigurable):
    """Settings of the cgroups made for servers (in the hub) and jobs (in the kqi service)."""

    mode = CaselessStrEnum(
        ["auto", "v1", "v2", "off"],
        "auto",
        help="""Which cgroups enforce the profile's CPU and memory on this machine: 'auto'
        uses cgroup v2 when its tree has the memory and cpu controllers, else v1; 'off'
        enforces nothing (the spawn form says so).""",
    ).tag(config=True)
    parent_cgroup = Unicode(
        "kqi", help="Name of the cgroup under which every server's and job's cgroup is made."
    ).tag(config=True)
    pids_max = Integer(
        4096, help="Most processes (threads count) one server or job may have; 0: no limit."
    ).tag(config=True)
    cpu_period_us = Integer(
        100_000, help="CFS period in microseconds; a profile's cpu is a share of it."
    ).tag(config=True)

    _layout: Layout | None = None

    def layout(self) -> Layout:
        """The layout of this machine, checked once by making the parent cgroups."""
        if self._layout is None:
            self._layout = self._probe()
        return self._layout

    def _probe(self) -> Layout:
        mountinfo = _read(Path("/proc/self/mountinfo"))
        unified = next((m for m in parse_mountinfo(mountinfo) if m.fstype == "cgroup2"), None)
        controllers = _read(Path(unified.point, "cgroup.controllers")) if unified else ""
        layout = detect(mountinfo, _read(Path("/proc/self/cgroup")), controllers, self.mode)
        if not layout.version:
            return layout
        for base in set(layout.bases.values()):
            top = Path(base, self.parent_cgroup)
            try:
                if layout.version == 2:
                    _v2_parents(Path(base), top)
                else:
                    top.mkdir(exist_ok=True)
                if not os.access(top, os.W_OK | os.X_OK):  # made by root, seen by another
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            except OSError as e:
                return Layout(0, problem=f"cgroups not writable here: {top}: {e.strerror}")
        if layout.version == 1:
            swap = Path(layout.bases["memory"], "memory.memsw.limit_in_bytes").exists()
        else:
            swap = Path(layout.bases[V2], self.parent_cgroup, "memory.swap.max").exists()
        return Layout(layout.version, layout.bases, swap=swap)

    def note(self) -> str:
        """One sentence for the spawn form and the log."""
        layout = self.layout()
        if layout.version:
            return f"CPU and memory limits of the profile are enforced (cgroup v{layout.version})."
        return f"{layout.problem}: CPU and memory limits of the profile are not enforced."

    def group(self, data_root: str, user: str, leaf: str) -> CgroupSet | None:
        """The (not yet created) leaf of ``user``; None where cgroups are not usable."""
        layout = self.layout()
        if not layout.version:
            return None
        tag = hashlib.sha256(os.path.abspath(data_root).encode()).hexdigest()[:8]
        dirs = {
            c: str(Path(b, self.parent_cgroup, tag, user, leaf)) for c, b in layout.bases.items()
        }
        return CgroupSet(dirs, layout.version, layout.bases.get(V2, ""))

    def make(
        self, data_root: str, user: str, leaf: str, cpu: float, memory: int
    ) -> CgroupSet | None:
        """Create the leaf with the limits (OSError if the kernel refuses); None where
        cgroups are not usable."""
        cgroup = self.group(data_root, user, leaf)
        if cgroup is None:
            return None
        layout = self.layout()
        cgroup.create(limit_writes(cpu, memory, layout, self.pids_max, self.cpu_period_us))
        return cgroup

    def sweep(self, data_root: str, user: str, prefix: str, min_age: float = 120) -> int:
        """Remove ``user``'s empty leaves named ``prefix…`` older than ``min_age`` seconds
        (left by a server or supervisor that ended without cleaning up)."""
        probe = self.group(data_root, user, "x")
        if probe is None:
            return 0
        removed, now = 0, time.time()
        for leaf in Path(probe.paths[0]).parent.glob(glob.escape(prefix) + "*"):
            try:
                if now - leaf.stat().st_ctime < min_age:
                    continue
            except OSError:
                continue
            stale = self.group(data_root, user, leaf.name)
            if stale is not None and not stale.pids() and stale.remove():
                removed += 1
        return removed
