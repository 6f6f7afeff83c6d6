"""A server's init process (hub_ext/spawner/serverinit.py) with real processes: whatever leaves
the server's tree stays below it, the scan sees it at every pass, and nothing outlives it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from culler.rules import DEFAULT_WATCH
from hub_ext.layout import plan_job
from hub_ext.sandbox import DEFAULT_HIDDEN, bwrap_argv, host_view, read_init_pid
from hub_ext.spawner import serverinit
from hub_ext.spawner.local import SERVER_INIT
from server_ext import procscan

#: the "server": keeps starting watched programs (a sleep named python3) that leave its tree
#: in every way a terminal user can: a double fork, setsid, nohup, env -i (no marker left);
#: their short-lived parents end while the scan runs, so their children move to the init
CHURN = """echo "server $$"
while [ ! -e "$DIR/stop" ]; do
  ( setsid env -i "$BIN/python3" 4 & )
  ( nohup "$BIN/python3" 3 >/dev/null 2>&1 & )
  ( ( "$BIN/python3" 2 & ) & )
  sleep 0.02
done
wait
"""


@dataclass
class Init:
    proc: subprocess.Popen
    server: int
    bin: Path
    dir: Path
    host_init: int = 0  # in a sandbox: the init's pid on the host

    def ours(self) -> dict[int, float]:
        """The watched programs alive now (ground truth, by the executable's path)."""
        found = {}
        for p in psutil.process_iter(["cmdline", "create_time", "status"]):
            cmd = p.info["cmdline"] or []
            if cmd[:1] == [str(self.bin / "python3")] and p.info["status"] != "zombie":
                found[p.pid] = p.info["create_time"]
        return found


def start_init(
    tmp_path: Path,
    script: str,
    *extra: str,
    prefix: Sequence[str] = (),
    pass_fds: Sequence[int] = (),
) -> Init:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    if not (bindir / "python3").exists():
        (bindir / "python3").symlink_to("/bin/sleep")
    (tmp_path / "server.sh").write_text(script)
    env = {k: v for k, v in os.environ.items() if k != procscan.MARKER}
    env.update(BIN=str(bindir), DIR=str(tmp_path))
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-I", SERVER_INIT, *extra, "--", "bash", f"{tmp_path}/server.sh"],
        env=env,
        pass_fds=pass_fds,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    kind, _, pid = proc.stdout.readline().partition(" ")
    assert kind == "server", proc.stderr.read() if proc.stderr else ""
    return Init(proc, int(pid), bindir, tmp_path)


@pytest.fixture
def churn(tmp_path: Path) -> Iterator[Init]:
    init = start_init(tmp_path, CHURN)
    try:
        yield init
    finally:
        (tmp_path / "stop").touch()
        try:
            os.killpg(init.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        init.proc.communicate(timeout=30)
        for pid in init.ours():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_the_init_and_the_scan_name_the_same_variable() -> None:
    """Declared once in each process package (they share no code): kept equal here."""
    assert serverinit.INIT_PID == procscan.INIT_PID == "KQI_SERVER_INIT_PID"


def test_the_scan_never_misses_a_process_that_left_the_tree(churn: Init) -> None:
    """Hundreds of passes while programs keep leaving the server's tree: every one alive for
    the whole pass is reported, and nothing else (no marker helps: env -i drops it)."""
    passes, checked = 0, 0
    deadline = time.monotonic() + 60
    while passes < 150 and time.monotonic() < deadline:
        before = churn.ours()
        found = procscan.scan_proc(churn.server, set(), "", DEFAULT_WATCH, churn.proc.pid)
        after = churn.ours()
        throughout = {pid for pid, t in before.items() if after.get(pid) == t}
        pids = {w.pid for w in found}
        assert throughout <= pids, f"pass {passes}: missed {sorted(throughout - pids)}"
        # (a program in the middle of exiting has no command line left)
        ours = {(), (str(churn.bin / "python3"),)}
        assert all(w.cmdline[:1] in ours for w in found), found
        passes, checked = passes + 1, checked + len(throughout)
    assert passes >= 50 and checked >= passes * 5, (passes, checked)  # it really churned


def test_psutil_fallback_also_looks_below_the_init(churn: Init) -> None:
    wait_until(lambda: len(churn.ours()) >= 10)
    found = procscan.scan_psutil(churn.server, set(), "", DEFAULT_WATCH, churn.proc.pid)
    assert len(found) >= 5 and all(w.name == "python3" for w in found)


def test_an_init_that_is_not_above_the_server_is_ignored(tmp_path: Path) -> None:
    """A forged KQI_SERVER_INIT_PID (a process not above the server) cannot widen the scan:
    then only the server's own descendants count."""
    script = """echo "server $$"
( setsid "$BIN/python3" 600 & )
"$BIN/python3" 601 &
wait
"""
    init = start_init(tmp_path, script, "--grace=1")
    try:
        wait_until(lambda: len(init.ours()) == 2)

        def args(w: procscan.WatchedProcess) -> str:
            return w.cmdline[-1]

        scan = procscan.scan_proc
        assert {args(w) for w in scan(init.server, [], "", DEFAULT_WATCH, init.proc.pid)} == {
            "600",
            "601",
        }
        other = subprocess.Popen(["sleep", "60"])  # not above the server
        for forged in (other.pid, 1, 0, init.server):
            found = scan(init.server, [], "", DEFAULT_WATCH, forged)
            assert {args(w) for w in found} == {"601"}, forged
        other.kill()
        other.wait()
    finally:
        os.killpg(init.proc.pid, signal.SIGTERM)
        init.proc.communicate(timeout=60)


def test_nothing_outlives_the_server(tmp_path: Path) -> None:
    """The server exits (here: by itself, status 3) leaving programs in other sessions, one
    without any environment, one stopped: all end, and the init exits with the status."""
    script = """echo "server $$"
( setsid env -i "$BIN/python3" 600 & )
nohup "$BIN/python3" 601 >/dev/null 2>&1 &
( "$BIN/python3" 602 & echo "stopped $!" >"$DIR/stopped" )
until [ -s "$DIR/stopped" ]; do sleep 0.05; done
kill -STOP "$(cut -d' ' -f2 "$DIR/stopped")"
exit 3
"""
    init = start_init(tmp_path, script, "--grace=1")
    out, err = init.proc.communicate(timeout=60)
    assert init.proc.returncode == 3, err
    assert "ended 3 processes the server left running" in err, err
    assert init.ours() == {}


def test_a_stop_signal_to_the_group_ends_everything(tmp_path: Path) -> None:
    """As the hub stops a server: SIGINT to the process group. The server ends; the init
    stays to end what is left (a program that ignores SIGTERM gets SIGKILL)."""
    script = """echo "server $$"
( setsid sh -c 'trap "" TERM; exec "$BIN/python3" 600' & )
trap 'exit 0' INT
while :; do sleep 0.1; done
"""
    init = start_init(tmp_path, script, "--grace=1")
    wait_until(lambda: len(init.ours()) == 1)
    os.killpg(init.proc.pid, signal.SIGINT)
    init.proc.communicate(timeout=60)
    assert init.proc.returncode == 0
    assert init.ours() == {}


def test_mpirun_ranks_left_by_a_closed_terminal_are_watched_and_ended(tmp_path: Path) -> None:
    """``setsid nohup mpirun -np 2 lmp`` without any environment: both LAMMPS ranks are seen
    below the init (by their own names; mpirun itself runs no watched program), and a stop
    ends them."""
    if not shutil.which("mpirun") or not shutil.which("lmp"):
        pytest.fail("mpirun and lmp must be installed; ./setup-and-test.sh installs lammps")
    (tmp_path / "in.sleep").write_text("shell sleep 600\n")
    script = """echo "server $$"
cd "$DIR"
( setsid nohup env -i PATH=/usr/bin:/bin mpirun --allow-run-as-root --oversubscribe \
    -np 2 lmp -in in.sleep -log none >/dev/null 2>&1 & )
trap 'exit 0' TERM
while :; do sleep 0.1; done
"""
    init = start_init(tmp_path, script, "--grace=2")

    def ranks() -> list[procscan.WatchedProcess]:
        found = procscan.scan_proc(init.server, set(), "", DEFAULT_WATCH, init.proc.pid)
        return [w for w in found if w.name == "lmp"]

    try:
        wait_until(lambda: len(ranks()) == 2, timeout=60)
        pids = [w.pid for w in ranks()]
        found = procscan.scan_proc(init.server, set(), "", DEFAULT_WATCH, init.proc.pid)
        assert {w.name for w in found} == {"lmp"}, found
    finally:
        os.killpg(init.proc.pid, signal.SIGTERM)
        init.proc.communicate(timeout=60)
    assert not [p for p in pids if psutil.pid_exists(p) and _running(p)]


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_tmux_is_not_watched_for_what_its_arguments_say(tmp_path: Path) -> None:
    """``tmux new -d 'python3 …'``: the python is watched while it runs; the tmux server,
    whose arguments still say python3, is not, so the server goes idle once python ends."""
    script = """echo "server $$"
tmux -S "$DIR/tmux.sock" -f /dev/null new -d "$BIN/python3 600; sleep 600"
wait
while :; do sleep 1; done
"""
    init = start_init(tmp_path, script, "--grace=1")
    try:
        wait_until(lambda: len(init.ours()) == 1)
        [py] = init.ours()
        names = lambda: {  # noqa: E731
            w.name for w in procscan.scan_proc(init.server, set(), "", DEFAULT_WATCH, init.proc.pid)
        }
        assert names() == {"python3"}
        os.kill(py, signal.SIGTERM)  # the python ends; tmux runs on with a sleep in it
        wait_until(lambda: not init.ours())
        tmux = [p for p in psutil.Process(init.proc.pid).children() if p.name().startswith("tmux")]
        assert tmux and "python3" in " ".join(tmux[0].cmdline())
        assert names() == set()
    finally:
        os.killpg(init.proc.pid, signal.SIGTERM)
        init.proc.communicate(timeout=60)


def wait_until(condition, timeout: float = 30) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.05)


# -- in the sandbox: the init is pid 1 of the server's own pid namespace --------------------------
#: run inside the namespace (nsenter): scans the way the server's activity route does, while
#: the churn goes on, and compares with what runs there (by the executable's path)
INSIDE = """
import json, os, sys, time
from culler.rules import DEFAULT_WATCH
from server_ext import procscan
server, exe = int(sys.argv[1]), sys.argv[2]
os.environ[procscan.PID_NAMESPACE] = "1"
def ours():
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().split(b"\\0")[0].decode() == exe:
                    with open(f"/proc/{pid}/stat") as s:
                        found[int(pid)] = s.read().rsplit(")", 1)[1].split()[19]
        except OSError:
            pass
    return found
passes = checked = 0
while passes < 100:
    before = ours()
    found = {w.pid for w in procscan.watched(server, set(), "", DEFAULT_WATCH, 1)}
    after = ours()
    throughout = {p for p, t in before.items() if after.get(p) == t}
    assert throughout <= found, sorted(throughout - found)
    passes, checked = passes + 1, checked + len(throughout)
print(json.dumps({"passes": passes, "checked": checked}))
"""


def start_sandboxed(tmp_path: Path, script: str, *extra: str) -> Init:
    """The init as the local spawner starts it in a sandbox: pid 1 of its own namespace."""
    if not shutil.which("bwrap"):
        pytest.fail("bubblewrap (bwrap) is not installed; ./setup-and-test.sh installs it")
    host = host_view(DEFAULT_HIDDEN, tmp_path / "run")
    info_r, info_w = os.pipe()
    prefix = bwrap_argv(
        plan_job("t", 1),
        [],
        tmp_path / "data",
        host,
        keep=[tmp_path],
        as_pid_1=True,
        info_fd=info_w,
    )
    init = start_init(tmp_path, script, *extra, prefix=prefix, pass_fds=(info_w,))
    os.close(info_w)
    pid, _ = read_init_pid(info_r)
    assert pid, "bubblewrap said no init pid"
    init.host_init = pid
    return init


def test_in_a_namespace_the_scan_takes_the_whole_namespace(tmp_path: Path) -> None:
    init = start_sandboxed(tmp_path, CHURN)
    try:
        assert init.server < 10  # a pid of the namespace
        env = dict(os.environ, PYTHONPATH=str(Path(SERVER_INIT).parents[2]))
        out = subprocess.run(
            [
                "nsenter",
                "-t",
                str(init.host_init),
                "-p",
                "-m",
                sys.executable,
                "-c",
                INSIDE,
                str(init.server),
                str(init.bin / "python3"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        counts = json.loads(out.stdout)
        assert counts["checked"] >= counts["passes"] * 5, counts  # it really churned
    finally:
        (tmp_path / "stop").touch()
        os.kill(init.host_init, signal.SIGKILL)  # the whole namespace goes
        init.proc.communicate(timeout=30)
    wait_until(lambda: not init.ours())


def test_in_a_namespace_the_hubs_signal_to_the_init_stops_everything(tmp_path: Path) -> None:
    """The hub signals the init (its host pid), which passes it on to the server, ends what
    is left (one that ignores SIGTERM included) and exits with the server's status."""
    script = """echo "server $$"
( setsid sh -c 'trap "" TERM; exec "$BIN/python3" 600' & )
( nohup env -i "$BIN/python3" 601 >/dev/null 2>&1 & )
trap 'exit 7' TERM
while :; do sleep 0.1; done
"""
    init = start_sandboxed(tmp_path, script, "--grace=1")
    wait_until(lambda: len(init.ours()) == 2)
    os.kill(init.host_init, signal.SIGTERM)
    _, err = init.proc.communicate(timeout=60)
    assert init.proc.returncode == 7, err
    # the nohup one is in the server's group (the signal ends it); the other one the init ends
    assert "ended 1 processes the server left running" in err, err
    assert init.ours() == {}


def test_in_a_namespace_sigkill_of_the_init_ends_the_namespace(tmp_path: Path) -> None:
    script = """echo "server $$"
( setsid sh -c 'trap "" TERM; exec "$BIN/python3" 600' & )
exec "$BIN/python3" 602
"""
    init = start_sandboxed(tmp_path, script)
    wait_until(lambda: len(init.ours()) == 2)
    os.kill(init.host_init, signal.SIGKILL)
    init.proc.communicate(timeout=30)
    wait_until(lambda: not init.ours())
