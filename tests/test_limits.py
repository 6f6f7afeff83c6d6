"""The profile's CPU and memory, enforced by cgroups on this machine (a real platform, real
jobs and a real server): an OOM kill is reported as such, CPU is capped, nothing is left."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .jobs import submit, wait_job
from .platform import Platform, private_platform

MiB = 2**20
CONFIG = """
c.Spawner.poll_interval = 1
c.JupyterHub.services[0]["command"] += [
    '--KqiService.profiles=[{"name": "tiny", "cpu": 0.5, "memory": "96M", "default": True},'
    ' {"name": "small", "cpu": 1, "memory": "384M"}]',
]
"""
BURN = """
import os, resource, time
t = time.monotonic()
pids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        end = time.monotonic() + 3
        while time.monotonic() < end:
            pass
        os._exit(0)
    pids.append(pid)
for pid in pids:
    os.waitpid(pid, 0)
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"ratio={(ru.ru_utime + ru.ru_stime) / (time.monotonic() - t):.3f}")
"""


@pytest.fixture(scope="module")
def p() -> Iterator[Platform]:
    if not Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists():
        pytest.skip("needs writable cgroup v1 (this CI machine)")
    with private_platform("limits", CONFIG) as q:
        yield q


def test_job_out_of_memory_is_reported(p: Platform) -> None:
    tok = p.add_user("olga")
    spec = {"command": "python -c 'b = b\"x\" * (384 << 20)'", "profile": "tiny"}
    job = wait_job(p, tok, submit(p, tok, spec).json()["id"])
    assert job["status"] == "failed", job
    assert "out of memory: 1 process killed at the profile's limit of 96 MiB" in job["message"]
    assert p.api("GET", "").status_code == 200
    assert p.service("api/jobs", tok).status_code == 200


def test_job_cpu_is_capped(p: Platform) -> None:
    tok = p.add_user("carl")
    spec = {"command": "python burn.py", "profile": "tiny"}
    job = wait_job(p, tok, submit(p, tok, spec, {"burn.py": BURN}).json()["id"])
    assert job["status"] == "succeeded", job
    out = (p.data_root / "users/carl/jobs" / str(job["id"]) / "logs/output.log").read_text()
    ratio = float(out.split("ratio=")[1].split()[0])
    assert 0.1 < ratio <= 0.55, out


def memory_cgroup(pid: int) -> Path:
    line = next(x for x in Path(f"/proc/{pid}/cgroup").read_text().splitlines() if ":memory:" in x)
    return Path("/sys/fs/cgroup/memory" + line.split(":", 2)[2])


def test_server_in_its_cgroup_oom_logged_and_removed(p: Platform) -> None:
    p.add_user("sam")
    r = p.spawn("sam", {"profile": "small"})
    assert r.status_code in (201, 202), r.text
    srv = p.wait_ready("sam")
    pid = p.api("GET", "users/sam").json()["servers"][""]["state"]["pid"]
    cg = memory_cgroup(pid)
    assert "/kqi/" in str(cg) and cg.name == "server-default", srv
    assert int((cg / "memory.limit_in_bytes").read_text()) == 384 * MiB
    code, _ = p.run_in_server("sam", "python -c 'b = b\"x\" * (1536 << 20)'", timeout=60)
    assert code == 137
    want = "out of memory: 1 process killed at the profile's limit of 384 MiB"
    deadline = time.monotonic() + 20
    while want not in p.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline, p.log_tail()
        time.sleep(0.2)
    p.stop_server("sam")
    assert not cg.exists()


def test_form_says_whether_limits_are_enforced(p: Platform) -> None:
    from .test_spawn_form import login

    page = login(p, "admin", p.password_file.read_text().strip()).get(f"{p.url}/hub/spawn").text
    assert "CPU and memory limits of the profile are enforced (cgroup v1)" in page
    with private_platform("limits-off", "c.KqiCgroups.mode = 'off'") as off:
        s = login(off, "admin", off.password_file.read_text().strip())
        page = s.get(f"{off.url}/hub/spawn", timeout=30).text
    assert "cgroups are off" in page and "limits of the profile are not enforced" in page
