"""Isolation between users on one machine, attacked from inside: bob tries to reach alice, the
hub, the kqi service and the machine (tests/attacks.py, one JSON line per attempt) from three
vehicles, and every attempt must fail with an OS error a user would see.

Vehicles and what each covers (the attack script runs whole in each, all attempts at once):

- ``terminal`` (a JupyterLab terminal of bob's server): writes to the platform's venv and code,
  /etc, /usr/local/bin, the cgroup tree; reads of alice's home and job output, a group-only
  dataset, the hub's database, cookie secret and the service token; tokens in the environment
  (only bob's own server token); /proc of alice's server, the hub and the service, and only
  bob's processes in /proc (pid 1 is bob's own init); signals and ptrace to alice's server and
  the hub; alice's open terminal and other users' /dev/pts; mknod of a terminal device;
  setuid(0); a user namespace that unmounts the hidden data root or remounts / read-write.
  Also here: the ``pip install --user`` of a wheel (this one must work).
- ``kernel`` (a real kernel, the attempts in the kernel process itself): the same list. Also
  here: a kernel of the tiny profile allocating twice its memory is OOM-killed, the server
  lives on and the hub log says "out of memory"; the package bob installed imports in a new
  kernel.
- ``job`` (bob's job, its code the script, its output.log read through the API): the same list,
  with /proc holding only bob's processes (pid 1 is the job's init, bob's too), and no token
  at all in the environment. Also
  here: the package bob installed imports in a job; a job ``env`` with ``LD_AUDIT`` is a 400.
  A job allocating twice its profile's memory is covered by
  tests/test_limits.py::test_job_out_of_memory_is_reported (not repeated here).

Without a vehicle: a spawn ``env`` with ``LD_PRELOAD`` or ``GCONV_PATH`` is a 400 naming
``env``; a ``~/.gitconfig`` of bob's with ``core.sshCommand``, ``core.hooksPath`` and
``core.fsmonitor`` naming a script does not run at the git clone of a spawn (no
``/etc/kqi-pwned`` on the host, no ``~/who``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import hub_ext

from .browser import run_cell, start_kernel
from .jobs import submit, wait_job
from .platform import Platform, private_platform
from .test_limits import BURN
from .test_sandbox import tiny_wheel

ATTACKS = Path(__file__).with_name("attacks.py")
VENV_SITE = sysconfig.get_paths()["purelib"]
PLATFORM_CODE = str(Path(hub_ext.__file__))
PWNED = Path("/etc/kqi-pwned")
CONFIG = """
c.Spawner.poll_interval = 1
c.JupyterHub.services[0]["command"] += [
    '--KqiService.profiles=[{"name": "standard", "cpu": 1, "memory": "1G", "default": True},'
    ' {"name": "tiny", "cpu": 0.5, "memory": "256M"}]',
]
"""
#: the git clone at spawn must read none of this (a script writing ``id -u`` and /etc)
GITCONFIG = "[core]\n\tsshCommand = {evil}\n\thooksPath = {hooks}\n\tfsmonitor = {evil}\n"
EVIL = "#!/bin/sh\nid -u > {home}/who\ntouch /etc/kqi-pwned\n"

RO = {"EROFS", "EACCES"}
HIDDEN = {"ENOENT", "EACCES"}
GONE = {"ESRCH", "EPERM"}
NONE = "none-visible"
#: attempt -> the refusals that count as a failure of it
EXPECTED: dict[str, set[str]] = {
    **dict.fromkeys(
        "write-venv-pth write-platform-code write-etc write-usr-local-bin cgroup-escape".split(),
        RO,
    ),
    **dict.fromkeys(
        "read-alice-secret read-alice-job-output read-group-dataset read-hub-db"
        " read-cookie-secret read-service-token proc-alice-environ proc-alice-init-environ"
        " proc-alice-bwrap-environ proc-hub-root proc-service-environ pts-alice".split(),
        HIDDEN,
    ),
    "env-tokens": {NONE},
    "proc-foreign": {NONE},
    "kill-alice-server": GONE,
    "kill-hub": GONE,
    "ptrace-alice-server": GONE,
    "kill-foreign": {NONE},  # no process of another uid is even visible
    "ptrace-foreign": {NONE},
    "pts-foreign": {NONE, "EACCES"},
    "mknod-pts": {"EPERM"},
    "setuid-0": {"EPERM"},
    "userns-umount": HIDDEN,  # the errno of reading alice's secret after the umount
    "userns-remount": {"EPERM", "EACCES"},
}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def server_process(p: Platform, user: str) -> tuple[dict, psutil.Process]:
    """The spawner's state (as admin: ``pid`` bubblewrap's, ``init_pid`` the sandbox init's
    host pid) and the host process of the server below that init."""
    state = p.api("GET", f"users/{user}").json()["servers"][""]["state"]
    init = psutil.Process(state["init_pid"])
    for q in init.children(recursive=True):
        if any("jupyterhub-singleuser" in a for a in q.cmdline()):
            return state, q
    raise AssertionError(f"no server process below {user}'s init {state}")


def prepare_bob_home(home: Path) -> None:
    """Before bob's first spawn (root's files there are handed to his account then): the
    attack script, a wheel to install (built offline: setuptools here cannot build wheels
    without the ``wheel`` package), a git repository and the hostile ~/.gitconfig."""
    home.mkdir(parents=True)
    shutil.copy(ATTACKS, home / "attacks.py")
    (home / "burn.py").write_text(BURN)  # two busy processes for 3 s: their CPU share
    tiny_wheel(home)
    repo = home / "repo"
    repo.mkdir()
    (repo / "hello.txt").write_text("hello from bob's repo\n")
    env = {"PATH": "/usr/bin:/bin", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}
    for argv in (
        ["git", "init", "-q"],
        ["git", "add", "hello.txt"],
        ["git", "-c", "user.name=bob", "-c", "user.email=bob@x", "commit", "-qm", "one"],
    ):
        subprocess.run(argv, cwd=repo, env=env, check=True, capture_output=True)
    (home / "hooks").mkdir()
    evil = home / "evil.sh"
    for script in (evil, home / "hooks" / "post-checkout"):
        script.write_text(EVIL.format(home=home))
        script.chmod(0o755)
    (home / ".gitconfig").write_text(GITCONFIG.format(evil=evil, hooks=home / "hooks"))


class Setup:
    def __init__(self, p: Platform):
        self.p = p
        self.refusals: dict[str, Any] = {}
        self.config: dict[str, Any] = {}
        self.bob_token_sha = ""
        self.kernel = ""


@pytest.fixture(scope="module")
def s() -> Iterator[Setup]:
    if not shutil.which("bwrap"):
        pytest.fail("bubblewrap (bwrap) is not installed; ./setup-and-test.sh installs it")
    PWNED.unlink(missing_ok=True)  # our own marker, from an earlier run
    with private_platform("isolation", CONFIG, isolation="bubblewrap") as p:
        st = Setup(p)
        p.add_user("alice", groups=["vision"])
        bob = p.add_user("bob")
        dataset = p.add_dataset("vision-only", {"labels.txt": "cat dog\n"}, groups=["vision"])
        prepare_bob_home(p.home("bob"))
        # refused before anything starts: bob asks for his own server with a loader variable
        for env in ({"LD_PRELOAD": "/tmp/x.so"}, {"GCONV_PATH": "/tmp"}):
            r = p.api("POST", "users/bob/server", token=bob, json={"env": env})
            st.refusals[next(iter(env))] = (r.status_code, r.text)
        for user, options in (
            ("alice", {}),
            ("bob", {"profile": "tiny", "git": {"url": f"file://{p.home('bob')}/repo"}}),
        ):
            r = p.spawn(user, options)
            assert r.status_code in (201, 202), r.text
        p.wait_ready("alice")
        # alice keeps a terminal open, the first of her sandbox (so /dev/pts/0 there): the
        # target of bob's pts attempt
        r = p.server("alice", "api/terminals", method="POST")
        assert r.status_code == 200, r.text
        status, out = p.run_in_server("alice", "echo alice-secret > ~/secret.txt")
        assert status == 0, out
        alice = p.token("alice")
        r = submit(p, alice, {"command": "echo alice-out > /kqi/output/f"})
        assert r.status_code == 201, r.text
        job = wait_job(p, alice, r.json()["id"])
        assert job["status"] == "succeeded", job
        alice_state, alice_srv = server_process(p, "alice")
        alice_pts = f"/proc/{alice_srv.pid}/root/dev/pts/0"
        assert Path(alice_pts).is_char_device()
        p.wait_ready("bob")
        _, bob_srv = server_process(p, "bob")
        hub_dir = p.data_root / "hub"
        service_pid = json.loads((hub_dir / "run/kqi.pid").read_text())["pid"]
        forbidden = [
            p.admin_token,
            alice,
            alice_srv.environ()["JUPYTERHUB_API_TOKEN"],
            (hub_dir / "kqi-service-token").read_text().strip(),
            (hub_dir / "jupyterhub_cookie_secret").read_text().strip(),
        ]
        st.bob_token_sha = sha(bob_srv.environ()["JUPYTERHUB_API_TOKEN"])
        st.config = {
            "venv_site": VENV_SITE,
            "platform_code": PLATFORM_CODE,
            "data_root": str(p.data_root),
            "alice_secret": str(p.home("alice") / "secret.txt"),
            "alice_job_output": str(p.data_root / f"users/alice/jobs/{job['id']}/output/f"),
            "group_dataset": str(dataset / "labels.txt"),
            "hub_db": str(hub_dir / "jupyterhub.sqlite"),
            "cookie_secret": str(hub_dir / "jupyterhub_cookie_secret"),
            "service_token": str(hub_dir / "kqi-service-token"),
            "forbidden_sha256": [sha(t) for t in forbidden],
            "alice_pid": alice_srv.pid,
            "alice_init_pid": alice_state["init_pid"],
            "alice_bwrap_pid": alice_state["pid"],
            "hub_pid": p.proc.pid,
            "service_pid": service_pid,
            "alice_pts": alice_pts,
            "home": str(p.home("bob")),
        }
        for target in ("alice_secret", "alice_job_output", "group_dataset", "hub_db"):
            assert Path(st.config[target]).is_file(), target  # there is something to read
        (p.home("bob") / "attack-config.json").write_text(json.dumps(st.config))
        st.kernel = start_kernel(p, "bob")
        yield st
    PWNED.unlink(missing_ok=True)


def parse(out: str) -> dict[str, dict]:
    lines = (x.strip() for x in out.replace("\r", "\n").splitlines())
    return {r["attack"]: r for r in (json.loads(x) for x in lines if x.startswith('{"attack"'))}


def attack_from(s: Setup, vehicle: str) -> dict[str, dict]:
    p, home = s.p, s.p.home("bob")
    if vehicle == "terminal":
        cmd = f"python {home}/attacks.py {home}/attack-config.json"
        status, out = p.run_in_server("bob", cmd, timeout=90)
        assert status == 0, out[-3000:]
    elif vehicle == "kernel":
        code = (
            "import runpy, sys\n"
            f"sys.argv = ['attacks.py', {str(home / 'attack-config.json')!r}]\n"
            f"runpy.run_path({str(home / 'attacks.py')!r}, run_name='__main__')\n"
        )
        res = run_cell(p, "bob", s.kernel, code)
        assert res["reply"] and res["reply"]["status"] == "ok", res
        out = res["stdout"]
    else:
        tok = p.token("bob")
        config = {**s.config, "home": "/kqi/output"}  # the home is read-only in a job
        files = {"attacks.py": ATTACKS.read_text(), "config.json": json.dumps(config)}
        r = submit(p, tok, {"command": "python attacks.py config.json"}, files)
        assert r.status_code == 201, r.text
        job = wait_job(p, tok, r.json()["id"], timeout=120)
        out = p.service(f"api/jobs/{job['id']}/logs", tok).text
        assert job["status"] == "succeeded", (job, out[-3000:])
    return parse(out)


@pytest.mark.parametrize("vehicle", ["terminal", "kernel", "job"])
def test_every_attempt_of_bob_fails(s: Setup, vehicle: str) -> None:
    results = attack_from(s, vehicle)
    print(f"\n{vehicle}: " + json.dumps(results))
    problems = [f"{a}: not run" for a in EXPECTED if a not in results]
    for name, res in results.items():
        want = EXPECTED.get(name)
        if want is None:
            problems.append(f"{name}: no expectation in this test")
        elif res["ok"]:
            problems.append(f"{name}: BREACH, it worked from bob's {vehicle}: {res['error']}")
        elif res["errno"] not in want:
            problems.append(f"{name}: refused with {res['errno']}, not {sorted(want)}: {res}")
    # bob's own token is the only one: his server's, in the server; none at all in a job
    own = results.get("env-tokens", {}).get("detail", {})
    if vehicle == "job":
        if own:
            problems.append(f"env-tokens: a job holds token-like variables {sorted(own)}")
    elif set(own.values()) != {s.bob_token_sha} or not set(own) <= {
        "JUPYTERHUB_API_TOKEN",
        "JPY_API_TOKEN",
    }:
        problems.append(f"env-tokens: bob's {vehicle} holds more than his server token: {own}")
    pid1_root = results.get("proc-foreign", {}).get("detail", {}).get("pid1_root")
    if pid1_root is not False:  # pid 1 is bob's own init, in a server and in a job
        problems.append(f"proc-foreign: pid 1 root-owned is {pid1_root} in bob's {vehicle}")
    assert not problems, "\n".join(problems)


def test_loader_variables_refused_for_servers_and_jobs(s: Setup) -> None:
    for name in ("LD_PRELOAD", "GCONV_PATH"):
        status, text = s.refusals[name]
        assert status == 400 and "env" in json.loads(text)["message"], (name, text)
        assert name in json.loads(text)["message"], text
    r = submit(s.p, s.p.token("bob"), {"command": "true", "env": {"LD_AUDIT": "/tmp/x.so"}})
    assert r.status_code == 400, r.text
    assert "env" in r.json()["message"] and "LD_AUDIT" in r.json()["message"], r.text


def test_gitconfig_of_the_user_does_not_steer_the_clone(s: Setup) -> None:
    p = s.p
    status, out = p.run_in_server("bob", "cat /kqi/git/hello.txt")
    assert status == 0 and "hello from bob's repo" in out, out  # the clone happened
    assert not PWNED.exists()
    who = p.home("bob") / "who"
    uid = str(p.account("bob").pw_uid)
    # absent: no hook ran at all; bob's uid would still be no breach (his code, his account)
    assert not who.exists() or who.read_text().strip() == uid
    # the trap is armed: bob's own git in his terminal reads the config and runs the hook,
    # as bob, and /etc stays read-only
    status, out = p.run_in_server("bob", f"git clone -q file://{p.home('bob')}/repo /tmp/c")
    assert who.read_text().strip() == uid, out
    assert not PWNED.exists()


def test_pip_install_user_imports_in_a_new_kernel_and_a_job(s: Setup) -> None:
    p, home = s.p, s.p.home("bob")
    wheel = home / "kqitiny-1.0-py3-none-any.whl"
    flags = "--user --no-index --disable-pip-version-check"
    status, out = p.run_in_server("bob", f"pip install {flags} {wheel}", timeout=120)
    assert status == 0 and "Successfully installed kqitiny-1.0" in out, out[-3000:]
    assert not Path(VENV_SITE, "kqitiny").exists()
    kernel = start_kernel(p, "bob")  # a second kernel: the first one runs the attacks
    try:
        res = run_cell(p, "bob", kernel, "import kqitiny\nprint(kqitiny.__file__)")
        assert res["reply"]["status"] == "ok", res
        assert res["stdout"].startswith(f"{home}/.local/"), res
    finally:
        p.server("bob", f"api/kernels/{kernel}", method="DELETE")
    tok = p.token("bob")
    r = submit(p, tok, {"command": "python -c 'import kqitiny; print(kqitiny.VALUE)'"})
    assert r.status_code == 201, r.text
    job = wait_job(p, tok, r.json()["id"])
    log = p.service(f"api/jobs/{job['id']}/logs", tok).text
    assert job["status"] == "succeeded" and "tiny-42" in log, (job, log)


def cpu_ratio(out: str) -> float:
    return float(out.split("ratio=")[-1].split()[0])


@pytest.mark.parametrize("vehicle", ["terminal", "kernel"])
def test_bobs_server_gets_no_more_cpu_than_its_profile(s: Setup, vehicle: str) -> None:
    """Two busy processes in bob's server (tiny: 0.5 CPU) get half a CPU between them, not
    the two cores of the machine (the jobs' cap: tests/test_limits.py)."""
    p = s.p
    if vehicle == "terminal":
        status, out = p.run_in_server("bob", "python ~/burn.py", timeout=60)
        assert status == 0, out
    else:
        res = run_cell(
            p, "bob", s.kernel, "import os, runpy; runpy.run_path(os.path.expanduser('~/burn.py'))"
        )
        assert res["reply"] and res["reply"]["status"] == "ok", res
        out = res["stdout"]
    assert 0.1 < cpu_ratio(out) <= 0.55, out


def test_a_kernel_over_the_memory_of_its_profile_dies_alone(s: Setup) -> None:
    """Last: the kernel bob used for the attacks allocates 512 MiB in the tiny profile."""
    p = s.p
    res = run_cell(p, "bob", s.kernel, "b = b'x' * (512 << 20)")
    assert res["died"] in ("restarting", "dead"), res
    want = "out of memory: 1 process killed at the profile's limit of 256 MiB"
    deadline = time.monotonic() + 30
    while want not in p.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline, p.log_tail()
        time.sleep(0.2)
    assert p.server("bob", "api/status").status_code == 200
    assert p.api("GET", "users/bob").json()["servers"][""]["ready"]
    assert p.api("GET", "").status_code == 200
    assert p.service("api/jobs", p.token("bob")).status_code == 200
