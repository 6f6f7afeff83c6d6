"""The process-watch scan of ``api/kqi/activity`` with 2,000 extra processes present, against
``ps -e -o pid,comm,args`` (the whole command, output captured) in the same run.

The processes are real and cheap: symlinks to ``sleep`` named after watch-list programs (so
their process name and command line say ``python3``, ``lmp``, ...), plain ``sleep``s, ``exec -a``
renames, grandchildren, zombies, names with spaces and parentheses. A stand-in "server" (bash)
starts its descendants; an "outsider" launcher starts processes outside its tree, some carrying
the server's KQI_SERVER_ID (as nohup/setsid children of a closed terminal do), some another
server's marker. The scan must find exactly the expected processes before it is timed: a fast
wrong answer is no figure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from culler.rules import DEFAULT_WATCH
from server_ext.activity import MARKER, watched_processes
from server_ext.procscan import scan_psutil

from .common import Context, Result, median, timed

TITLE = "process-watch scan with 2,000 processes present vs ps -e -o pid,comm,args"
SLEEP = "100000"
PS = ["ps", "-e", "-o", "pid,comm,args"]

#: program names (symlinks to sleep) that match the watch list, and their process names
WATCHED = ["python3", "lmp", "papermill", "lmp_mpi", "pt_main_thread", "python3.1234567890"]
#: names that do not match, some awkward for a /proc/<pid>/stat parser
UNWATCHED = ["worker", "my (odd) prog", "a) R 1 (b", "pythonic", "python3-long-runner"]


@dataclass
class Population:
    """The processes started, by kind; ``expected``: pid -> name the scan must report."""

    server: int = 0
    marker: str = ""
    kernels: set[int] = field(default_factory=set)
    expected: dict[int, str] = field(default_factory=dict)
    zombies: list[int] = field(default_factory=list)
    pids: dict[str, list[int]] = field(default_factory=dict)


def _script(lines: list[str]) -> str:
    """A bash script that starts each line in the background, prints ``kind pid`` for each,
    then ``ready``, and waits (it is the parent of them all)."""
    body = [f'{cmd} & echo "{kind} $!"' for kind, cmd in lines]
    return "\n".join([*body, 'echo "ready"', "wait", ""])


def _plan(n: int, bindir: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]], dict]:
    """The server's and the outsider's lines for ``n`` processes, and name of each kind."""
    prog = {name: bindir / name for name in WATCHED + UNWATCHED}
    q = {name: "'" + str(path).replace("'", "'\\''") + "'" for name, path in prog.items()}
    names: dict[str, str] = {}
    server: list[tuple[str, str]] = []
    outside: list[tuple[str, str]] = []
    for i, name in enumerate(WATCHED):
        server.append((f"watch-{i}", f"{q[name]} {SLEEP}"))
        names[f"watch-{i}"] = name
        # a grandchild (through a subshell) is a descendant too
        server.append((f"sub-{i}", f'( {q[name]} {SLEEP} & echo "grand-{i} $!"; wait )'))
        names[f"grand-{i}"] = name
        outside.append((f"marked-{i}", f"{MARKER}=@OURS@ {q[name]} {SLEEP}"))
        names[f"marked-{i}"] = name
        outside.append((f"other-{i}", f"{MARKER}=@OTHER@ {q[name]} {SLEEP}"))
        outside.append((f"nomark-{i}", f"{q[name]} {SLEEP}"))
    server.append(("renamed", f"exec -a python3 sleep {SLEEP}"))  # argv[0] python3, name sleep
    names["renamed"] = "sleep"
    server.append(("kernel-0", f"{q['python3']} {SLEEP}"))
    server.append(("kernel-1", f"exec -a python3 sleep {SLEEP}"))
    for i in range(3):  # a watched child that ends and is never reaped: a zombie
        server.append(
            (f"zmaker-{i}", f'( {q["python3"]} 0.3 & echo "zombie-{i} $!"; exec sleep {SLEEP} )')
        )
    for i, name in enumerate(UNWATCHED):
        server.append((f"odd-{i}", f"{q[name]} {SLEEP}"))
        outside.append((f"oddout-{i}", f"{MARKER}=@OURS@ {q[name]} {SLEEP}"))
    outside.append(("marked-plain", f"{MARKER}=@OURS@ sleep {SLEEP}"))
    # the rest: plain sleeps, half in the server's tree, half outside it
    used = len(server) + len(outside) + len(WATCHED) + 3 + 2  # + grand, zombies, 2 bashes
    rest = max(0, n - used)
    server += [("plain", f"sleep {SLEEP}")] * (rest // 2)
    outside += [("plain", f"sleep {SLEEP}")] * (rest - rest // 2)
    return server, outside, names


def _launch(script: Path, env: dict[str, str], into: dict[str, list[int]]) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["bash", str(script)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # its own process group: one killpg ends it all
        text=True,
    )
    into.setdefault("launcher", []).append(proc.pid)
    return proc


def _read_lines(proc: subprocess.Popen, count: int, into: dict[str, list[int]]) -> None:
    """``count`` lines ``kind pid`` and ``ready`` (subshells' lines may come after it)."""
    assert proc.stdout is not None
    for _ in range(count):
        kind, _, pid = proc.stdout.readline().partition(" ")
        if not kind:
            raise RuntimeError(f"launcher {proc.pid} ended early")
        if kind.strip() != "ready":
            into.setdefault(kind, []).append(int(pid))


@contextmanager
def population(n: int, workdir: Path) -> Iterator[Population]:
    """Start ~n processes; kill them all on the way out, whatever happened."""
    bindir = workdir / "bin"
    bindir.mkdir()
    sleep = subprocess.run(["bash", "-c", "command -v sleep"], capture_output=True, text=True)
    for name in WATCHED + UNWATCHED:
        (bindir / name).symlink_to(os.path.realpath(sleep.stdout.strip()))
    ours, other = f"bench-{uuid.uuid4().hex}", f"bench-other-{uuid.uuid4().hex}"
    server_lines, outside_lines, names = _plan(n, bindir)
    pop = Population()
    procs: list[subprocess.Popen] = []
    base_env = {k: v for k, v in os.environ.items() if k != MARKER}
    try:
        for lines, env in ((server_lines, {**base_env, MARKER: ours}), (outside_lines, base_env)):
            path = workdir / f"launch-{len(procs)}.sh"
            text = _script(lines).replace("@OURS@", ours).replace("@OTHER@", other)
            path.write_text(text)
            procs.append(_launch(path, env, pop.pids))
            _read_lines(procs[-1], text.count('echo "'), pop.pids)
        pop.server = procs[0].pid
        pop.kernels = {*pop.pids["kernel-0"], *pop.pids["kernel-1"]}
        pop.zombies = [pid for k, v in pop.pids.items() if k.startswith("zombie-") for pid in v]
        for kind, pids in pop.pids.items():
            if kind in names:
                pop.expected.update({pid: names[kind] for pid in pids})
        pop.marker = ours
        _wait_zombies(pop.zombies)
        yield pop
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in procs:
            proc.wait(timeout=30)
            if proc.stdout:
                proc.stdout.close()
        _wait_gone([pid for pids in pop.pids.values() for pid in pids])


def _wait_gone(pids: list[int], timeout: float = 30) -> None:
    """Killed orphans go to init, which reaps them in its own time: the next benchmark
    should not run among 2,000 zombies."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if psutil.pid_exists(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [p for p in left if psutil.pid_exists(p)]


def _wait_zombies(pids: list[int], timeout: float = 10) -> None:
    """The zombie makers' children end after 0.3 s; wait until they are zombies."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)


def _check(answer: list, pop: Population) -> None:
    """The scan found exactly the expected processes, with their names (else: no figure)."""
    found = {w.pid: w.name for w in answer}
    if found != pop.expected:
        missing = {p: n for p, n in pop.expected.items() if p not in found}
        extra = {p: n for p, n in found.items() if p not in pop.expected}
        wrong = {p: (n, found[p]) for p, n in pop.expected.items() if found.get(p, n) != n}
        raise RuntimeError(
            f"the scan's answer is wrong: missing {missing}, extra {extra}, names {wrong}"
        )


def run(ctx: Context) -> list[Result]:
    n = 400 if ctx.quick else 2000
    before = len(psutil.pids())
    ctx.log(f"starting {n} processes ({before} present)")
    with population(n, ctx.workdir) as pop:
        present = len(psutil.pids())
        ctx.log(f"{present} processes present ({present - before} started)")

        def scan() -> list:
            return watched_processes(pop.server, set(pop.kernels), pop.marker, DEFAULT_WATCH)

        def fallback() -> list:  # psutil, as before /proc was read directly
            return scan_psutil(pop.server, pop.kernels, pop.marker, DEFAULT_WATCH)

        answer = scan()
        _check(answer, pop)
        if fallback() != answer:
            raise RuntimeError(f"/proc and psutil disagree: {answer} vs {fallback()}")
        found = {w.pid: w.name for w in answer}
        ctx.log(f"scan found the {len(found)} expected processes; timing")

        def ps() -> None:
            subprocess.run(PS, capture_output=True, check=True)

        scan(), ps()  # warm-up
        ours, anchor, psu = [], [], []
        for _ in range(ctx.runs):  # interleaved: all see the same machine load
            ours.append(timed(scan))
            anchor.append(timed(ps))
            psu.append(timed(fallback))
    o, a = median(ours), median(anchor)
    return [
        Result(
            bench="scan",
            metric=f"watched_processes() with {present} processes",
            unit="s",
            ours=o,
            anchor=a,
            anchor_name="ps -e -o pid,comm,args",
            goal="≤ 1×",
            met=o <= a,
            detail=f"{len(found)} watched found (checked); psutil fallback {median(psu):.3f} s",
            samples={"ours": ours, "anchor": anchor, "psutil": psu},
        )
    ]
