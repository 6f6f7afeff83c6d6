"""The bubblewrap sandbox of servers and jobs, seen from inside as a user would (a terminal, a
kernel, a job): the machine read-only, its own /proc and /tmp, the hub's files out of sight,
``pip install`` into the user's own site (seen by the user's jobs), and a server that a
restarted hub still stops."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import signal
import sysconfig
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import hub_ext
from hub_ext.spawner.local import SERVER_INIT

from .browser import execute, start_kernel
from .jobs import submit, wait_job, wait_started
from .platform import Platform, private_platform

VENV_SITE = sysconfig.get_paths()["purelib"]
REPO_CODE = str(Path(hub_ext.__file__).parent)
#: the servers outlive the hub, so a restarted hub has to stop them itself
CONFIG = "c.JupyterHub.cleanup_servers = False\n"


@pytest.fixture(scope="module")
def p() -> Iterator[Platform]:
    if not shutil.which("bwrap"):
        pytest.fail("bubblewrap (bwrap) is not installed; ./setup-and-test.sh installs it")
    with private_platform("sandbox", CONFIG, isolation="bubblewrap") as q:
        for user in ("alice", "bob"):
            q.add_user(user)
            r = q.spawn(user)
            assert r.status_code in (201, 202), r.text
        for user in ("alice", "bob"):
            q.wait_ready(user)
        yield q


def sh(p: Platform, user: str, command: str) -> str:
    """Run ``command`` in a terminal of the user's server; its output (it must succeed)."""
    status, out = p.run_in_server(user, command)
    assert status == 0, out
    return out


def job_log(p: Platform, user: str, command: str) -> str:
    tok = p.token(user)
    r = submit(p, tok, {"command": command})
    assert r.status_code in (200, 201), r.text
    job = wait_job(p, tok, r.json()["id"])
    log = p.service(f"api/jobs/{job['id']}/logs", tok).text
    assert job["status"] == "succeeded", (job, log)
    return log


def init_of(p: Platform, user: str) -> psutil.Process:
    """The host's view of the user's sandbox init (pid 1 of its namespace), as the hub
    records it; bubblewrap, its parent, runs in our namespace."""
    state = p.api("GET", f"users/{user}").json()["servers"][""]["state"]
    init = psutil.Process(state["init_pid"])
    assert SERVER_INIT in init.cmdline(), init.cmdline()
    assert os.readlink(f"/proc/{init.pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
    return init


#: tries to write where no user may (the platform's venv and code, /etc); prints one line each
WRITES = "; ".join(
    f'(: > {d}/kqi-sandbox-probe) 2>&1 | sed "s/^/{tag}: /"'
    for tag, d in (("venv", VENV_SITE), ("code", REPO_CODE), ("etc", "/etc"))
)


def assert_read_only(out: str) -> None:
    for tag, d in (("venv", VENV_SITE), ("code", REPO_CODE), ("etc", "/etc")):
        line = next((x for x in out.splitlines() if x.startswith(f"{tag}: ")), "")
        assert "Read-only file system" in line, (tag, out[-1500:])
        assert not Path(d, "kqi-sandbox-probe").exists()


#: counts, in this /proc, the processes of alice and of bob (by their server's environment)
PROCS = (
    "echo alice=$(grep -l JUPYTERHUB_USER=alice /proc/[0-9]*/environ 2>/dev/null | wc -l)"
    " bob=$(grep -l JUPYTERHUB_USER=bob /proc/[0-9]*/environ 2>/dev/null | wc -l)"
    " hub=$(grep -l [k]qi-hub /proc/[0-9]*/cmdline 2>/dev/null | wc -l)"
)


def test_the_machine_is_read_only_in_a_server(p: Platform) -> None:
    assert_read_only(sh(p, "alice", WRITES))
    # the home stays writable
    sh(p, "alice", "echo mine > ~/written-in-the-sandbox")
    assert (p.home("alice") / "written-in-the-sandbox").read_text() == "mine\n"


def test_proc_shows_only_the_servers_own_processes(p: Platform) -> None:
    out = sh(p, "alice", PROCS)
    counts = dict(kv.split("=") for kv in out.split() if kv[:4] in ("alic", "bob=", "hub="))
    assert int(counts["alice"]) >= 2 and counts["bob"] == "0" and counts["hub"] == "0", out
    # the init is pid 1 there: a user cannot kill it (and with it, the namespace)
    init = init_of(p, "alice")
    out = sh(
        p, "alice", "tr '\\0' ' ' </proc/1/cmdline; echo; kill -9 1; sleep 0.3; echo still-here"
    )
    assert "serverinit.py" in out and "still-here" in out, out
    assert init.is_running() and init.status() != psutil.STATUS_ZOMBIE


def test_tmp_is_private(p: Platform) -> None:
    sh(p, "alice", "echo a > /tmp/alice-was-here && echo a > /dev/shm/alice-was-here")
    out = sh(p, "bob", "echo seen=$(ls /tmp /dev/shm | grep -c alice-was-here)")
    assert "seen=0" in out, out
    assert not Path("/tmp/alice-was-here").exists()
    assert "seen=2" in sh(p, "alice", "echo seen=$(ls /tmp /dev/shm | grep -c alice-was-here)")


def test_the_data_root_shows_only_the_users_home(p: Platform) -> None:
    d = p.data_root
    assert (d / "hub").is_dir() and any((d / "hub").iterdir())  # there is something to hide
    out = sh(p, "alice", f"echo top=$(ls -A {d}) users=$(ls -A {d}/users) hub=$(ls -A {d}/hub)")
    assert "top=users users=alice hub=\r" in out or "top=users users=alice hub=\n" in out, out
    status, out = p.run_in_server("alice", f"cat {d}/hub/*")
    assert status != 0 and "No such file" in out, out


def test_a_job_runs_in_the_same_sandbox(p: Platform) -> None:
    sh(p, "alice", "echo a > /tmp/alice-was-here")
    d = p.data_root
    log = job_log(
        p,
        "bob",
        f"{WRITES}; {PROCS}; echo j > /tmp/job-was-here; "
        f"echo tmp=$(ls -A /tmp | grep -c alice-was-here) data=$(ls -A {d} | wc -l); "
        "echo jobhome=$(ls -A $PYTHONUSERBASE/.. | grep -c written-in-the-sandbox)",
    )
    assert_read_only(log)
    assert "alice=0 bob=0 hub=0" in log, log
    assert "tmp=0 data=1" in log, log  # its own /tmp; of the data root: only bob's home
    assert not Path("/tmp/job-was-here").exists()
    assert "jobhome=0" in log, log  # bob's home, not alice's


def tiny_wheel(folder: Path) -> Path:
    """A pure-Python wheel of one module ``kqitiny`` (no build tools, no index needed)."""
    files = {
        "kqitiny/__init__.py": "VALUE = 'tiny-42'\n",
        "kqitiny-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: kqitiny\nVersion: 1.0\n",
        "kqitiny-1.0.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: kqi-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{name},sha256={digest.decode()},{len(text.encode())}")
    files["kqitiny-1.0.dist-info/RECORD"] = "\n".join([*record, "kqitiny-1.0.dist-info/RECORD,,"])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    wheel = folder / "kqitiny-1.0-py3-none-any.whl"
    wheel.write_bytes(buf.getvalue())
    return wheel


def test_pip_install_goes_to_the_users_site_and_the_users_jobs_see_it(p: Platform) -> None:
    wheel = tiny_wheel(p.home("alice"))
    out = sh(p, "alice", f"pip install --no-index --disable-pip-version-check {wheel}")
    assert "Successfully installed kqitiny-1.0" in out, out
    local = p.home("alice") / ".local"
    assert list(local.glob("lib/python3*/site-packages/kqitiny/__init__.py")), out
    assert not Path(VENV_SITE, "kqitiny").exists()
    # a fresh kernel imports it from the user's site
    kernel = start_kernel(p, "alice")
    code = f"import kqitiny\nassert kqitiny.__file__.startswith({str(local)!r}), kqitiny.__file__"
    reply = execute(p, "alice", kernel, code)
    assert reply["status"] == "ok", reply
    # ... and so does a job of alice's, where the user site is read-only
    log = job_log(
        p,
        "alice",
        'python -c "import kqitiny; print(kqitiny.VALUE)"; '
        'touch "$PYTHONUSERBASE/x" || echo refused',
    )
    assert "tiny-42" in log and "Read-only file system" in log and "refused" in log, log


def test_a_restarted_hub_stops_a_server_it_did_not_start(p: Platform) -> None:
    """Last here: the hub restarts. The servers ran on (cleanup_servers False); the new hub
    knows each sandbox's init from its state, and stopping ends the whole namespace."""
    init = init_of(p, "bob")
    namespace = os.readlink(f"/proc/{init.pid}/ns/pid")
    assert len(in_namespace(namespace)) >= 2  # the init, the server, ...
    assert p.proc is not None
    os.killpg(p.proc.pid, signal.SIGTERM)
    p.proc.wait(30)
    assert init.is_running()  # the server outlived the hub
    p.start()
    p.wait_ready("bob")
    p.stop_server("bob")
    deadline = time.monotonic() + 30
    while in_namespace(namespace):
        assert time.monotonic() < deadline, f"left running: {in_namespace(namespace)}"
        time.sleep(0.1)


def in_namespace(namespace: str) -> list[int]:
    """The host pids of the processes in the pid namespace ``namespace`` (a ns/pid link)."""
    found = []
    for pid in psutil.pids():
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") == namespace:
                found.append(pid)
        except OSError:
            continue
    return found


def host_side(init: psutil.Process) -> list[psutil.Process]:
    """The platform's processes on the host above a sandbox's init, up to (not with) the
    service or hub: bubblewrap, and for a job its supervisor."""
    chain, q = [], init.parent()
    while (
        q is not None
        and "hub_ext.service" not in q.cmdline()
        and "kqi-hub" not in " ".join(q.cmdline())
    ):
        chain.append(q)
        q = q.parent()
    return chain


def test_nothing_on_the_host_runs_with_the_users_variables(p: Platform) -> None:
    """bubblewrap and setpriv (root, on the host) and a job's supervisor start with a fixed
    environment; the user's variables and tokens reach only the init inside the sandbox."""
    p.add_user("vic")
    r = p.spawn("vic", {"env": {"VIC_SETTING": "vic-value"}})
    assert r.status_code in (201, 202), r.text
    p.wait_ready("vic")
    try:
        assert "vic-value" in sh(p, "vic", "echo $VIC_SETTING")
        init = init_of(p, "vic")
        outside = host_side(init)
        assert outside and all("bwrap" in q.name() for q in outside), outside
        for q in outside:
            env = q.environ()
            assert "VIC_SETTING" not in env and "JUPYTERHUB_API_TOKEN" not in env, env
        server = next(
            c
            for c in init.children(recursive=True)
            if any("jupyterhub-singleuser" in a for a in c.cmdline())
        )
        assert server.environ()["VIC_SETTING"] == "vic-value"  # from the init, inside
    finally:
        p.stop_server("vic")

    tok = p.token("vic")
    cmd = "echo job=$VIC_JOB; while [ ! -e go ]; do sleep 0.1; done"
    r = submit(p, tok, {"command": cmd, "env": {"VIC_JOB": "job-value"}})
    assert r.status_code == 201, r.text
    job = r.json()["id"]
    wait_started(p, tok, "vic", job)
    logs = p.data_root / f"users/vic/jobs/{job}/logs"
    supervisor = psutil.Process(json.loads((logs / "supervisor.json").read_text())["pid"])
    deadline = time.monotonic() + 30
    while "job=job-value" not in (logs / "output.log").read_text():
        assert time.monotonic() < deadline, (logs / "output.log").read_text()
        time.sleep(0.1)
    for q in [supervisor, *supervisor.children(recursive=True)]:
        if q.uids().real == 0:  # the platform's part: the supervisor and bubblewrap
            assert "VIC_JOB" not in q.environ() and "KQI_ROOT" not in q.environ(), q
    (p.data_root / f"users/vic/jobs/{job}/code/go").touch()
    assert wait_job(p, tok, job)["status"] == "succeeded"
