"""Job supervisor: runs one job's command, writes its log and exit status to the job folder.

It runs in its own session, apart from the kqi service, so a job and its final status survive
a restart (or ``kill -9``) of the service. Files it writes in the logs folder:
``supervisor.json`` (its pid and start time), ``output.log`` (stdout+stderr as they happen),
``status.json`` (written last, atomically: exit code, reason, end time).

SIGTERM asks for a stop: the job's process group gets SIGTERM, then SIGKILL after the grace
period; so does a job over its timeout. The supervisor is a child subreaper, so what left the
group (setsid, nohup, a double fork, even ``env -i``, which drops the job's KQI_JOB_MARK) is
adopted by it and stays below it: all of that is signalled too, and so is anything still
carrying the mark. A finished job leaves nothing running.

In a sandbox the job's environment is not this process's (it runs as root on the host with a
fixed one): the runner hands it to the sandbox's init through a memfd this process passes on
(``--pass-fd``), and the job's mark comes as ``--mark``.

With ``--cgroup`` the job's command (not this supervisor, which runs as root on the host)
runs in the cgroup the runner made with the profile's limits: at the end whatever is still in
it is killed (the last net), the kernel's out-of-memory kills are counted into status.json,
and the cgroup is removed.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import psutil

from hub_ext.cgroups import CgroupSet


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def adopt_orphans() -> None:
    """PR_SET_CHILD_SUBREAPER: the job's orphans become the supervisor's children."""
    try:
        ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the mark still finds most


def job_processes(mark: str) -> list[psutil.Process]:
    """What runs of the job: everything below the supervisor, and whatever carries the mark."""
    me = os.getpid()
    found = {p.pid: p for p in psutil.Process(me).children(recursive=True)}
    if mark:
        for p in psutil.process_iter():
            try:
                if p.pid != me and p.pid not in found and p.environ().get("KQI_JOB_MARK") == mark:
                    found[p.pid] = p
            except (psutil.Error, OSError):
                continue
    alive = []
    for p in found.values():
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.Error:
            continue
    return alive


def reap(main: int) -> None:
    """Collect adopted children that ended (``main``, the job's own, is Popen's to wait for)."""
    for p in psutil.Process().children():
        try:
            if p.pid != main and p.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(p.pid, os.WNOHANG)
        except (psutil.Error, ChildProcessError):
            continue


def kill_all(child: subprocess.Popen, mark: str, sig: int) -> None:
    try:
        os.killpg(child.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for p in job_processes(mark):
        try:
            p.send_signal(sig)
        except psutil.Error:
            pass


def _exit_waiter(child: subprocess.Popen) -> Callable[[float], int | None]:
    """``wait(timeout)``: the child's exit code, or None if it still runs after ``timeout``
    seconds. Woken by a pidfd the moment the child exits (Popen.wait with a timeout polls
    with sleeps of up to 50 ms); without pidfds, Popen.wait."""
    try:
        fd = os.pidfd_open(child.pid)
    except (AttributeError, OSError):
        fd = None

    def wait(timeout: float) -> int | None:
        if fd is not None:
            ready, _, _ = select.select([fd], [], [], timeout)
            return child.wait() if ready else None
        try:
            return child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    return wait


def join_cgroup(spec: dict | None) -> Callable[[], None] | None:
    if not spec:
        return None
    return CgroupSet.from_dict(spec).join_preexec()


def end_cgroup(spec: dict | None) -> dict:
    """Kill what is left in the job's cgroup, remove it; the OOM facts for status.json."""
    if not spec:
        return {}
    cgroup = CgroupSet.from_dict(spec)
    facts = {"oom_kills": cgroup.oom_kills(), "memory_peak": cgroup.peak()}
    if not cgroup.remove(kill=True):
        print(f"kqi-supervise: processes left in {cgroup.paths}", file=sys.stderr)
    return {**facts, "memory_limit": spec.get("memory", 0)} if facts["oom_kills"] else {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kqi-supervise")
    ap.add_argument("--logs", required=True, help="the job's logs folder")
    ap.add_argument("--cwd", required=True)
    ap.add_argument("--timeout", type=float, default=0, help="seconds; 0: none")
    ap.add_argument("--grace", type=float, default=10)
    ap.add_argument("--cgroup", type=json.loads, help='JSON {"version", "dirs", "root", "memory"}')
    ap.add_argument("--mark", default="", help="the job's KQI_JOB_MARK (default: from the env)")
    ap.add_argument(
        "--pass-fd", type=int, action="append", default=[], help="a descriptor the job inherits"
    )
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    logs = Path(args.logs)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    mark = args.mark or os.environ.get("KQI_JOB_MARK", "")
    reason = "exited"
    stop_at: float | None = None
    child: subprocess.Popen | None = None

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal reason, stop_at
        if stop_at is None:
            reason = "stopped"
            stop_at = time.monotonic()
            if child is not None:
                kill_all(child, mark, signal.SIGTERM)

    # handlers first: supervisor.json tells the runner that a stop will now be honoured
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    adopt_orphans()
    me = psutil.Process()
    _write_json(logs / "supervisor.json", {"pid": me.pid, "create_time": me.create_time()})

    with open(logs / "output.log", "ab", buffering=0) as log:
        child = subprocess.Popen(
            cmd,
            cwd=args.cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=join_cgroup(args.cgroup),
            pass_fds=tuple(args.pass_fd),
        )
        for fd in args.pass_fd:  # the job's now (its environment, for the sandbox's init)
            os.close(fd)
        if stop_at is not None:  # asked before the job existed
            kill_all(child, mark, signal.SIGTERM)
        deadline = time.monotonic() + args.timeout if args.timeout > 0 else None
        killed = False
        ended = _exit_waiter(child)
        while True:
            rc = ended(0.2)
            if rc is not None:
                break
            reap(child.pid)
            now = time.monotonic()
            if deadline is not None and now > deadline and stop_at is None:
                reason, stop_at = "timeout", now
                log.write(f"\n[kqi] timeout after {args.timeout:g} s: stopping\n".encode())
                kill_all(child, mark, signal.SIGTERM)
            if stop_at is not None and not killed and now - stop_at > args.grace:
                killed = True
                kill_all(child, mark, signal.SIGKILL)
        # the main process ended: nothing of the job may outlive it
        leftovers = job_processes(mark)
        try:
            os.killpg(child.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not leftovers:
                break
            kill_all(child, mark, sig)
            deadline = time.monotonic() + 2
            while leftovers and time.monotonic() < deadline:
                reap(child.pid)
                time.sleep(0.05)
                leftovers = job_processes(mark)
        reap(child.pid)
        oom = end_cgroup(args.cgroup)
        if oom and rc != 0 and reason == "exited":
            reason = "oom"
            log.write(f"\n[kqi] {oom['oom_kills']} process(es) killed: out of memory\n".encode())

    _write_json(
        logs / "status.json",
        {
            "exit_code": rc,
            "reason": reason,
            "finished_at": datetime.now(timezone.utc).isoformat(),
            **oom,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
