"""Workspace size on a real platform: measured in the background from real files, answered by
``GET usage``, shown in the form, ``kqi usage`` and ``kqi status``, and enforced as the
profile's storage at spawn and job submission.

The steps share one platform and one user's workspace and run in file order."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from culler.rules import parse_time

from .jobs import submit
from .platform import Platform, private_platform
from .test_spawn_form import login

MiB, GiB = 2**20, 2**30
USER = "ann"
CONFIG = """
c.JupyterHub.services[0]["command"] += [
    "--KqiService.usage_interval=1",
    '--KqiService.profiles=[{"name": "big", "storage": "10G", "default": True},'
    ' {"name": "small", "storage": "50M"}]',
]
"""
REFUSAL = "workspace 60 MiB is over the profile's 50 MiB (measured "
#: once a server ran, its files in the home (~/.local, ~/.jupyter, ...) add a few KiB
SIXTY = r"60(?:\.\d)? MiB"


@pytest.fixture(scope="module")
def p() -> Iterator[Platform]:
    with private_platform("usage", CONFIG, isolation="bubblewrap") as q:
        yield q


def usage(p: Platform, token: str, **query: str) -> Any:
    return p.service("api/usage", token, params=query)


def wait_usage(
    p: Platform, token: str, ok: Any, timeout: float = 60, **query: str
) -> dict[str, Any]:
    """GET usage until ``ok(answer)`` holds; that answer."""
    deadline = time.monotonic() + timeout
    while True:
        r = usage(p, token, **query)
        assert r.status_code == 200, r.text
        if ok(r.json()):
            return r.json()
        assert time.monotonic() < deadline, f"usage never as wanted: {r.text}\n{p.log_tail(30)}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def filled(p: Platform) -> dict[str, Any]:
    """ann's home with a 60 MiB file, a hard link to it, and a link to an 80 MiB file outside;
    returns the first answer that counts the file (from a background measurement)."""
    tok = p.add_user(USER)
    first = usage(p, tok).json()  # never measured: measured at once, nothing there yet
    assert first["bytes"] < MiB, first
    # made beside the home, then moved in at once: a measurement sees all of it or nothing
    work = p.data_root / "users" / USER / "staging"
    work.mkdir(parents=True)
    (work / "data.bin").write_bytes(os.urandom(60 * MiB))  # random: no fs stores it smaller
    os.link(work / "data.bin", work / "again.bin")
    (p.base / "outside.bin").write_bytes(os.urandom(80 * MiB))
    (work / "outside.bin").symlink_to(p.base / "outside.bin")
    p.home(USER).mkdir(parents=True, exist_ok=True)
    work.rename(p.home(USER) / "work")
    got = wait_usage(p, tok, lambda u: u["bytes"] >= 60 * MiB)
    assert parse_time(got["measured_at"]) > parse_time(first["measured_at"])
    return got


def test_fresh_user_is_answered_at_once(p: Platform) -> None:
    tok = p.add_user("fresh")
    r = usage(p, tok)
    assert r.status_code == 200, r.text
    u = r.json()
    assert (u["user"], u["bytes"], u["profile"], u["quota"]) == ("fresh", 0, "big", 10 * GiB)
    assert u["over_quota"] is False and parse_time(u["measured_at"]) is not None
    assert u["text"].startswith("0 B of 10 GiB (measured ")
    assert usage(p, tok, profile="small").json()["quota"] == 50 * MiB
    r = usage(p, tok, profile="nope")
    assert r.status_code == 400 and "unknown profile 'nope'" in r.json()["message"]


def test_links_not_followed_hard_link_counted_once(filled: dict[str, Any]) -> None:
    assert 60 * MiB <= filled["bytes"] < 61 * MiB, filled
    assert filled["files"] == 2  # data.bin and the link; again.bin is data.bin once more
    assert filled["text"].startswith("60 MiB of 10 GiB (measured ")


def test_spawn_over_the_quota_refused_with_the_numbers(p: Platform, filled: dict) -> None:
    r = p.spawn(USER, {"profile": "small"})
    assert r.status_code == 400, r.text
    assert f"profile: {REFUSAL}" in r.json()["message"]
    assert "" not in p.api("GET", f"users/{USER}").json()["servers"]


def test_job_over_the_quota_refused(p: Platform, filled: dict) -> None:
    r = submit(p, p.token(USER), {"command": "true", "profile": "small"})
    assert r.status_code == 400, r.text
    assert REFUSAL in r.json()["message"]
    assert r.json()["errors"][0]["field"] == "profile"


def test_form_shows_the_workspace(p: Platform, filled: dict) -> None:
    admin = login(p, "admin", p.password_file.read_text().strip())
    page = admin.get(f"{p.url}/hub/spawn/{USER}", timeout=30).text
    # against the profile chosen in the form (the last one asked for is pre-selected)
    quota = "50 MiB" if 'value="small" checked' in page else "10 GiB"
    i = page.find("Resources")
    assert f"Workspace: 60 MiB of {quota} (measured " in page, page[i : i + 1500]
    assert "(your workspace, 60 MiB, is over its 50 MiB)" in page


def test_bigger_profile_spawns_and_the_server_shows_usage(p: Platform, filled: dict) -> None:
    r = p.spawn(USER, {"profile": "big"})
    assert r.status_code in (201, 202), r.text
    p.wait_ready(USER)
    try:
        r = p.server(USER, "api/kqi/usage")  # the server extension, against its own profile
        assert r.status_code == 200, r.text
        assert (r.json()["profile"], r.json()["quota"]) == ("big", 10 * GiB)
        assert p.server(USER, "api/kqi/usage?profile=small").json()["over_quota"] is True
        status, out = p.run_in_server(USER, "kqi usage")
        assert status == 0 and re.search(rf"workspace: {SIXTY} of 10 GiB \(measured \d+ s ago", out)
        assert f"user:      {USER}" in out and "over the quota" not in out, out
        status, out = p.run_in_server(USER, "kqi usage --profile small")
        assert status == 0 and re.search(rf"workspace: {SIXTY} of 50 MiB", out), out
        assert "over the quota: new servers and jobs with profile small are refused" in out
        status, out = p.run_in_server(USER, "kqi status")
        assert status == 0 and re.search(rf"workspace: {SIXTY} of 10 GiB \(measured ", out), out
        status, out = p.run_in_server(USER, "kqi usage --help")
        assert status == 0 and "--profile" in out and "workspace" in out, out
    finally:
        p.stop_server(USER)


def test_only_admins_see_other_users(p: Platform, filled: dict) -> None:
    bob = p.add_user("bob")
    r = usage(p, bob, user=USER)
    assert r.status_code == 403 and "only admins" in r.json()["message"], r.text
    assert usage(p, bob, user="bob").json()["user"] == "bob"
    boss = p.add_user("boss", admin=True)
    r = usage(p, boss, user=USER)
    assert r.status_code == 200 and r.json()["user"] == USER, r.text
    assert 60 * MiB <= r.json()["bytes"] < 61 * MiB, r.text
    r = usage(p, boss, user="nobody")
    assert r.status_code == 404 and "no such user: nobody" in r.json()["message"], r.text
    r = usage(p, boss, user="../ann")
    assert r.status_code == 400 and "not a user name" in r.json()["message"], r.text


def test_freed_space_lifts_the_refusal(p: Platform, filled: dict) -> None:
    """Measured again in the background: the next job with the small profile is accepted."""
    (p.home(USER) / "work" / "data.bin").unlink()
    (p.home(USER) / "work" / "again.bin").unlink()
    tok = p.token(USER)
    wait_usage(p, tok, lambda u: u["bytes"] < MiB)
    r = submit(p, tok, {"command": "true", "profile": "small"})
    assert r.status_code == 201, r.text
