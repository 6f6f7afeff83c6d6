"""Where users cannot be kept apart, kqi-hub says so loudly and lets only admins in: the log at
CRITICAL, a 403 for everybody else's spawn and job, the reason on the spawn page; an explicit
``isolation = "none"`` lets everyone in and says so; an explicit ``"bubblewrap"`` that cannot be
had stops kqi-hub at start. (Real platforms; "cannot" is made by pointing bwrap_path at nothing,
the same decision as a machine without bubblewrap or a hub not running as root: see
tests/test_accounts.py for each reason.)"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .jobs import submit, wait_job
from .platform import Platform, private_platform
from .test_spawn_form import login

NO_BWRAP = """
c.KqiLocalSpawner.bwrap_path = "/nonexistent/bwrap"
c.JupyterHub.services[0]["command"] += ["--LocalRunner.bwrap_path=/nonexistent/bwrap"]
"""
CANNOT = "Users cannot be isolated on this machine (bwrap not installed): only admins may start"


@pytest.fixture(scope="module")
def p() -> Iterator[Platform]:
    with private_platform("unsafe", NO_BWRAP, isolation="auto") as q:
        yield q


def admin_session(p: Platform):
    return login(p, "admin", p.password_file.read_text().strip())


def test_the_log_says_so_at_critical(p: Platform) -> None:
    lines = [line for line in p.log_tail(400).splitlines() if CANNOT in line]
    assert lines and lines[0].startswith("[C "), p.log_tail(80)
    assert "c.KqiLocalSpawner.isolation = 'none'" in lines[0]


def test_only_admins_start_servers(p: Platform) -> None:
    p.add_user("bob")
    r = p.spawn("bob")
    assert r.status_code == 403, r.text
    assert "bob may not start servers or jobs here" in r.json()["message"]
    assert CANNOT in r.json()["message"]
    assert not p.account("bob")  # nothing was made for him

    r = p.spawn("admin")
    assert r.status_code in (201, 202), r.text
    p.wait_ready("admin")
    try:
        status, out = p.run_in_server("admin", "echo up")
        assert status == 0 and "up" in out
    finally:
        p.stop_server("admin")


def test_only_admins_submit_jobs(p: Platform) -> None:
    bob = p.add_user("bob")
    r = submit(p, bob, {"command": "echo hi"})
    assert r.status_code == 403, r.text
    assert CANNOT in r.json()["message"]
    assert p.service("api/jobs", bob).json() == []  # nothing was recorded

    admin = p.token("admin")
    job = submit(p, admin, {"command": "echo hi"})
    assert job.status_code == 201, job.text
    assert wait_job(p, admin, job.json()["id"])["status"] == "succeeded"


def test_the_spawn_page_says_why(p: Platform) -> None:
    page = admin_session(p).get(f"{p.url}/hub/spawn", timeout=30).text
    assert CANNOT in page


def test_explicit_none_lets_everyone_in_and_says_so(plain_platform: Platform) -> None:
    p = plain_platform
    assert "Users are NOT isolated on this machine" in p.log_path.read_text(errors="replace")
    page = admin_session(p).get(f"{p.url}/hub/spawn", timeout=30).text
    assert "Users are NOT isolated on this machine" in page
    p.add_user("nia")
    r = p.spawn("nia")
    assert r.status_code in (201, 202), r.text
    p.wait_ready("nia")
    p.stop_server("nia")


def test_explicit_bubblewrap_that_cannot_be_had_stops_kqi_hub() -> None:
    base = Path(tempfile.mkdtemp(prefix="kqi-nobwrap-"))
    q = Platform(base, isolation="bubblewrap", extra_config=NO_BWRAP)
    try:
        with pytest.raises(RuntimeError, match="exited 1"):
            q.start()
        assert "'bubblewrap' but bwrap not installed; not starting" in q.log_tail()
    finally:
        q.stop()
        shutil.rmtree(base, ignore_errors=True)


def as_nobody() -> list[str]:
    """A command prefix that runs kqi-hub as ``nobody`` (not root), with the platform's Python
    readable where it sits below root's 0700 home (as the sandbox shows it to users)."""
    from hub_ext.sandbox import expose_ops, platform_paths

    nobody = pwd.getpwnam("nobody")
    return [
        "bwrap",
        "--dev-bind", "/", "/",
        "--perms", "0755", "--tmpfs", "/root",
        *expose_ops(platform_paths(), ["/root"]),
        "--",
        "setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
        "--",
    ]  # fmt: skip


def test_a_hub_that_is_not_root_lets_only_admins_in() -> None:
    base = Path(tempfile.mkdtemp(prefix="kqi-nonroot-"))
    nobody = pwd.getpwnam("nobody")
    os.chown(base, nobody.pw_uid, nobody.pw_gid)
    os.chmod(base, 0o755)
    q = Platform(base, isolation="auto", wrap=as_nobody())
    try:
        q.start()
        why = "kqi-hub does not run as root, so it cannot run users as accounts of their own"
        assert "[C " in next(x for x in q.log_tail(400).splitlines() if why in x)
        q.add_user("bob")
        r = q.spawn("bob")
        assert r.status_code == 403 and why in r.json()["message"], r.text
        r = q.spawn("admin")
        assert r.status_code in (201, 202), r.text
        q.wait_ready("admin")
        status, out = q.run_in_server("admin", 'echo "uid=$(id -u)"')
        assert status == 0 and f"uid={nobody.pw_uid}" in out, out
        q.stop_server("admin")
    finally:
        q.stop()
        shutil.rmtree(base, ignore_errors=True)
