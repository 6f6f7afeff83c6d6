"""A user server's init process: everything the server starts stays below it, and goes with it.

The local spawner runs ``python -I serverinit.py [--grace S] -- <server command>`` (by path, no
package import). It marks itself a child subreaper (``PR_SET_CHILD_SUBREAPER``), so what a
terminal leaves running when it closes (``nohup``, ``setsid``, a daemonising ``mpirun``, even
``env -i``, which drops every marker) is adopted by this process instead of by the machine's
init: the culler's scan finds it below ``KQI_SERVER_INIT_PID`` and a stop ends it, as in a pod.

With ``--env-fd N`` the command's environment comes from that file descriptor instead of this
process's own: the platform starts bubblewrap and setpriv with a fixed environment, and only
this process, already the user's account inside the sandbox, reads the user's variables. Jobs
use the same init (``--what job``).

It reaps what it adopts, lets the hub's signals reach the server (they go to the whole process
group; this process only outlives them), and when the server has exited ends every process
still below it: SIGTERM, then SIGKILL after ``--grace`` seconds. Its exit status is the
server's.

In a sandbox (bubblewrap ``--as-pid-1``) it is pid 1 of the server's own pid namespace: there
everything is below it without a subreaper, users cannot signal it (pid 1 gets only the signals
it handles), and its exit ends the namespace (the kernel kills what is left). The hub signals
it, not a process group: SIGINT, SIGTERM and SIGHUP are passed on to the server's group. It sets
``KQI_PID_NAMESPACE=1`` so the culler's scan takes the whole namespace as the server's.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
import time

import psutil

INIT_PID = "KQI_SERVER_INIT_PID"
#: "1" when the init is pid 1 of the server's own pid namespace (server_ext/procscan.py)
PID_NAMESPACE = "KQI_PID_NAMESPACE"
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux >= 3.4); False where the kernel cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def reap() -> None:
    """Collect the exit status of every child that has ended (adopted ones included)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def below() -> list[psutil.Process]:
    """Every live process below this one (zombies have ended; reap() collects them)."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


def end_all(grace: float) -> int:
    """SIGTERM to everything below, SIGKILL to what still runs after ``grace`` seconds;
    repeated while anything is left (a process may fork as it goes). How many there were."""
    seen: set[int] = set()
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0), (signal.SIGKILL, 5.0)):
        procs = below()
        if not procs:
            break
        for p in procs:
            seen.add(p.pid)
            try:
                p.send_signal(sig)
                if sig == signal.SIGTERM:
                    p.resume()  # a stopped process would not see SIGTERM
            except psutil.Error:
                pass
        deadline = time.monotonic() + wait
        while below() and time.monotonic() < deadline:
            reap()
            time.sleep(0.05)
        reap()
    return len(seen)


def read_env(fd: int) -> dict[str, str]:
    """The environment the platform handed over through ``fd`` (a memfd: no file, no path),
    so that nothing on the host (bubblewrap, setpriv) ever ran with the user's variables."""
    with os.fdopen(fd, "rb") as f:
        data = f.read()
    env = json.loads(data)
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise SystemExit("kqi-init: --env-fd: not a JSON object of strings")
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kqi-server-init", description=__doc__.split("\n")[0])
    ap.add_argument("--grace", type=float, default=3.0, help="seconds before SIGKILL")
    ap.add_argument(
        "--env-fd",
        type=int,
        help="read the command's whole environment (a JSON object) from this file descriptor",
    )
    ap.add_argument("--what", default="server", help="what the command is, for the log")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- the server's command")
    args = ap.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("no command given")
    pid_1 = os.getpid() == 1
    if not pid_1 and not become_subreaper():
        print("kqi-server-init: cannot become a subreaper; orphans escape", file=sys.stderr)
    source = os.environ if args.env_fd is None else read_env(args.env_fd)
    env = {k: v for k, v in source.items() if k != PID_NAMESPACE}
    env[INIT_PID] = str(os.getpid())
    server, pending = 0, []

    def forward(sig: int, _frame: object) -> None:
        """pid 1: the hub's signal goes on to the server's process group (once it exists)."""
        if not server:
            pending.append(sig)
            return
        try:
            os.killpg(server, sig)
        except ProcessLookupError:
            pass

    # outside a namespace the hub signals the process group: this process stays to clean up
    # after the server. A Python handler (not SIG_IGN) is reset to the default at exec.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward if pid_1 else lambda *_: None)
    if pid_1:
        env[PID_NAMESPACE] = "1"
        server = os.posix_spawnp(cmd[0], cmd, env, setpgroup=0)  # not our own group
        for sig in pending:
            forward(sig, None)
    else:
        server = os.posix_spawnp(cmd[0], cmd, env)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:  # cannot happen while the server runs; be safe
            status = 0
            break
        if pid == server:
            break
    code = os.waitstatus_to_exitcode(status)
    left = end_all(args.grace)
    if left:
        print(f"kqi-init: ended {left} processes the {args.what} left running", file=sys.stderr)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
