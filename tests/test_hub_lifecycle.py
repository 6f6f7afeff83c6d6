"""The hub's life cycle: a ``kill -9`` of the hub leaves its managed services running, and the
next ``kqi-hub`` ends them before its own bind the port; Ctrl-C stops the whole platform within
5 s; a stranger on the kqi service's port is named, not killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from hub_ext import leftovers
from hub_ext.leftovers import ProcessId, is_hub, is_our_service, same_process
from tests.platform import BIN, Platform, free_port, private_platform

# as in production: user servers outlive the hub
CONFIG = "\nc.JupyterHub.cleanup_servers = False\n"
ENDED = "ended the {name} service a previous hub left running (pid {pid})"


# -- pure ----------------------------------------------------------------------------------------
def test_a_pid_record_round_trips_and_bad_ones_are_named() -> None:
    ident = ProcessId(4242, 1796238168.78, ("python", "-m", "hub_ext.service"))
    assert ProcessId.from_json(ident.to_json()) == ident
    for bad in ("", "42", '{"pid": 42}', '{"pid": 1, "create_time": 1, "argv": []}'):
        with pytest.raises(ValueError, match="not a pid record"):
            ProcessId.from_json(bad)


def test_only_the_recorded_process_counts_as_the_same() -> None:
    rec = ProcessId(4242, 100.0, ("python", "-m", "culler"))
    assert same_process(rec, ProcessId(4242, 100.01, ("python", "-m", "culler")))
    assert not same_process(rec, None)  # gone
    assert not same_process(rec, ProcessId(4242, 160.0, rec.argv))  # the pid was reused
    assert not same_process(rec, ProcessId(4242, 100.0, ("sleep", "9")))  # ... by a program
    assert not same_process(rec, ProcessId(4243, 100.0, rec.argv))


def test_a_kqi_service_is_ours_only_for_this_data_root() -> None:
    argv = ("/v/bin/python", "-m", "hub_ext.service", "--data-root", "/srv/kqi")
    assert is_our_service(argv, "/srv/kqi")
    assert not is_our_service(argv, "/srv/other")
    assert not is_our_service(("nc", "-l", "/srv/kqi"), "/srv/kqi")


def test_a_hub_is_known_by_its_command() -> None:
    assert is_hub(("/v/bin/python", "/v/bin/kqi-hub", "--port=8000"))
    assert is_hub(("/v/bin/python", "-m", "hub_ext.cli"))
    assert is_hub(("/usr/local/bin/jupyterhub", "-f", "config.py"))
    assert not is_hub(("/v/bin/python", "-m", "pytest", "tests/kqi-hub"))


# -- real processes, no hub ---------------------------------------------------------------------
@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def _record(proc: subprocess.Popen) -> ProcessId:
    deadline = time.monotonic() + 10
    while (ident := leftovers.identify(proc.pid)) is None or ident.argv[1:2] != ("-c",):
        assert time.monotonic() < deadline, "the child did not exec"
        time.sleep(0.02)
    return ident


def test_a_recorded_leftover_is_ended_and_a_reused_pid_is_not(
    tmp_path: Path, sleeper: subprocess.Popen
) -> None:
    ident = _record(sleeper)
    reused = ProcessId(ident.pid, ident.create_time - 60, ident.argv)  # a process before it
    (tmp_path / "old.pid").write_text(reused.to_json())
    (tmp_path / "junk.pid").write_text("not json")
    said: list[str] = []
    assert leftovers.end_leftovers(tmp_path, said.append) == []
    assert sleeper.poll() is None, "a pid record of another process ended this one"
    assert not list(tmp_path.glob("*.pid"))
    assert any("ignoring the pid file" in s and "junk.pid" in s for s in said), said

    (tmp_path / "kqi.pid").write_text(ident.to_json())
    assert leftovers.end_leftovers(tmp_path, said.append) == [ident.pid]
    assert sleeper.wait(10) == -signal.SIGTERM
    assert said[-1] == ENDED.format(name="kqi", pid=ident.pid)
    assert not (tmp_path / "kqi.pid").exists()


# -- the real platform -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def p() -> Iterator[Platform]:
    with private_platform("life", extra_config=CONFIG) as p:
        yield p


def service_pids(p: Platform, timeout: float = 60) -> dict[str, int]:
    """The running services' pids from their pid files, once both wrote one."""
    run = p.data_root / "hub" / "run"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = {}
        for name in ("kqi", "kqi-culler"):
            try:
                pids[name] = json.loads((run / f"{name}.pid").read_text())["pid"]
            except (OSError, ValueError):
                break
        if len(pids) == 2 and all(psutil.pid_exists(pid) for pid in pids.values()):
            return pids
        time.sleep(0.1)
    raise AssertionError(f"no pid files of both services in {run}:\n{p.log_tail()}")


def log_since(p: Platform, offset: int) -> str:
    return p.log_path.read_bytes()[offset:].decode(errors="replace")


def restart(p: Platform, sigint: int) -> None:
    """Start the hub on the same data root, with this SIGINT disposition."""
    p.start(sigint=sigint)
    p.sigint = sigint  # type: ignore[attr-defined]


def wait_answering(p: Platform, timeout: float = 60) -> None:
    """Until alice's server and the kqi service answer through the (new) proxy: then the
    (new) hub has taken them over."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            server = p.server("alice", "api/status").status_code
            service = p.service("api/profiles", p.token("alice")).status_code
            if server == service == 200:
                return
        except requests.ConnectionError:
            server = service = None
        assert time.monotonic() < deadline, f"server {server}, service {service}\n{p.log_tail()}"
        time.sleep(0.2)


def running_servers(p: Platform) -> int:
    users = p.api("GET", "users").json()
    return sum(1 for u in users for s in (u.get("servers") or {}).values() if s.get("ready"))


def test_a_second_hub_on_a_running_data_root_is_refused(p: Platform) -> None:
    """Not a crash: the running hub's services are not ended."""
    pids = service_pids(p)
    env = dict(os.environ, KQI_DATA_ROOT=str(p.data_root), KQI_SERVICE_PORT=str(p.service_port))
    done = subprocess.run(
        [str(BIN / "kqi-hub"), f"--port={free_port()}"],
        cwd=p.base,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert f"kqi-hub: another hub runs on this data root (pid {p.proc.pid}: " in done.stderr
    assert "stop that hub first" in done.stderr and "Traceback" not in done.stderr
    assert service_pids(p) == pids


def test_after_a_hub_crash_the_next_hub_ends_the_old_services(p: Platform) -> None:
    p.add_user("alice")
    assert p.spawn("alice").status_code in (201, 202)
    p.wait_ready("alice")
    old = service_pids(p)
    os.kill(p.proc.pid, signal.SIGKILL)
    p.proc.wait(10)
    assert all(psutil.pid_exists(pid) for pid in old.values()), "the services died with the hub"
    offset = p.log_path.stat().st_size

    restart(p, signal.SIG_DFL)  # may return while the old proxy still answers
    deadline = time.monotonic() + 60
    while (new := service_pids(p)) == old:
        assert time.monotonic() < deadline, p.log_tail()
        time.sleep(0.1)
    for pid in old.values():
        assert not psutil.pid_exists(pid), f"old service {pid} still runs"
    wait_answering(p)
    log = log_since(p, offset)
    for name, pid in old.items():
        assert ENDED.format(name=name, pid=pid) in log, log
    assert "Address already in use" not in log, log
    assert p.proc.poll() is None and all(psutil.pid_exists(pid) for pid in new.values())


@pytest.mark.parametrize("sigint", [signal.SIG_DFL, signal.SIG_IGN], ids=["terminal", "background"])
def test_ctrl_c_stops_the_platform_within_5_s(p: Platform, sigint: int) -> None:
    """Ctrl-C in a terminal, or SIGINT to a hub started in the background (its services then
    inherit SIGINT ignored: the hub used to wait 30 s + 30 s for each). User servers stay, and
    the next hub takes them over, as the log says."""
    if p.proc is None or p.proc.poll() is not None or getattr(p, "sigint", None) != sigint:
        p.stop()
        restart(p, sigint)
    pids = service_pids(p)
    servers = running_servers(p)
    offset = p.log_path.stat().st_size

    began = time.monotonic()
    os.kill(p.proc.pid, signal.SIGINT)
    status = p.proc.wait(60)
    took = time.monotonic() - began
    log = log_since(p, offset)
    print(f"kqi-hub ended {took:.2f} s after SIGINT")  # shown with pytest -s
    assert status == 0, log
    assert took < 5, f"kqi-hub took {took:.1f} s to stop:\n{log}"
    assert "Traceback" not in log, log
    plural = "" if servers == 1 else "s"
    assert f"leaving {servers} user server{plural} and running jobs running" in log, log
    assert "kqi-hub: stopped in" in log, log
    for pid in pids.values():
        assert not psutil.pid_exists(pid), f"service {pid} still runs:\n{log}"
    assert not list((p.data_root / "hub" / "run").glob("*.pid"))
    if servers:  # ... and the next hub has them again (it is then the background case's hub)
        restart(p, signal.SIG_IGN)
        wait_answering(p)


def test_a_stranger_on_the_service_port_is_named(tmp_path: Path) -> None:
    stranger = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', 0)); "
            "s.listen(); print(s.getsockname()[1], flush=True); time.sleep(120)  # stranger",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(stranger.stdout.readline())
        env = dict(os.environ, KQI_DATA_ROOT=str(tmp_path / "data"), KQI_SERVICE_PORT=str(port))
        done = subprocess.run(
            [str(BIN / "kqi-hub"), "--port=9"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1, done.stderr
        named = f"port {port} of the kqi service is taken by another program, pid {stranger.pid}: "
        assert f"{named}{sys.executable} -c import socket" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        assert stranger.poll() is None  # not ours to end
    finally:
        stranger.kill()
        stranger.wait()


def test_a_kqi_service_of_an_older_hub_on_the_port_is_ended(tmp_path: Path) -> None:
    """A service without a pid file (left by a hub before pid files) is found by its port and
    its command line, and ends cleanly on SIGTERM."""
    port, data_root = free_port(), tmp_path / "data"
    env = dict(
        os.environ,
        JUPYTERHUB_API_TOKEN="unused",
        JUPYTERHUB_SERVICE_URL=f"http://127.0.0.1:{port}",
    )
    env.pop(leftovers.PID_FILE_ENV, None)
    service = subprocess.Popen(
        [sys.executable, "-m", "hub_ext.service", "--data-root", str(data_root)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while leftovers.port_holder(port) is None:
            assert service.poll() is None and time.monotonic() < deadline, service.stderr.read()
            time.sleep(0.1)
        said: list[str] = []
        leftovers.free_service_port(port, data_root, said.append)
        assert said == [ENDED.format(name="kqi", pid=service.pid)]
        assert service.wait(1) == 0
        assert "Traceback" not in service.stderr.read()
        assert leftovers.port_holder(port) is None
    finally:
        service.kill()
        service.wait()
