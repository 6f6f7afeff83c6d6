"""The spawn form, through the hub's real login and spawn pages (plain HTTP; the browser suite
comes with the lab extension)."""

from __future__ import annotations

import re

import pytest
import requests

from .jobs import add_job
from .platform import Platform


def login(p: Platform, user: str, password: str) -> requests.Session:
    s = requests.Session()
    s.get(f"{p.url}/hub/login", timeout=30)
    r = s.post(
        f"{p.url}/hub/login",
        data={"username": user, "password": password, "_xsrf": s.cookies.get("_xsrf")},
        timeout=30,
        allow_redirects=False,
    )
    assert r.status_code == 302, r.text[-500:]
    return s


@pytest.fixture(scope="module")
def admin(platform: Platform) -> requests.Session:
    p = platform
    p.add_dataset("form-a", {"a.txt": "A"}, groups=["formgroup"])
    p.add_dataset("form-b", {"b.txt": "B"})
    p.add_dataset("staff-form", {"s.txt": "S"}, groups=["staff"])
    return login(p, "admin", p.password_file.read_text().strip())


def test_form_renders_and_spawns(platform: Platform, admin: requests.Session) -> None:
    p = platform
    page = admin.get(f"{p.url}/hub/spawn", timeout=30).text
    assert 'name="profile"' in page and 'value="standard"' in page
    assert 'name="datasets"' in page and 'value="form-a"' in page
    assert "not enforced" in page  # the local mode says what it cannot enforce
    r = admin.post(
        f"{p.url}/hub/spawn",
        data={
            "_xsrf": admin.cookies.get("_xsrf"),
            "profile": "standard",
            "datasets": ["form-a", "form-b"],
            "env": "SEED=7\n# comment\n",
            "lifetime_hours": "",
        },
        timeout=60,
    )
    assert r.status_code == 200, r.text[-500:]
    srv = p.wait_ready("admin")
    try:
        assert srv["user_options"] == {
            "profile": "standard",
            "datasets": ["form-a", "form-b"],
            "env": {"SEED": "7"},
        }
        status, out = p.run_in_server("admin", "ls ~/input; echo $SEED")
        assert "form-a" in out and "form-b" in out and "7" in out
    finally:
        p.stop_server("admin")


def test_form_errors_are_shown_on_the_form(platform: Platform, admin: requests.Session) -> None:
    p = platform
    for data, message in (
        ({"env": "not a pair"}, "env line 1"),
        ({"datasets": ["no-such-set"]}, "unknown dataset &#39;no-such-set&#39;"),
    ):
        r = admin.post(
            f"{p.url}/hub/spawn", data={"_xsrf": admin.cookies.get("_xsrf"), **data}, timeout=60
        )
        assert r.status_code in (200, 400), r.status_code
        assert message in r.text, r.text[-2000:]
        assert 'name="datasets"' in r.text  # the form is shown again
        assert "" not in p.api("GET", "users/admin").json()["servers"]


def test_admin_gets_the_form_of_the_user_spawned_for(
    platform: Platform, admin: requests.Session
) -> None:
    p = platform
    p.add_user("gus", groups=["formgroup"])
    gus_job = add_job(p, "gus", files={"m.pt": "x"})
    admins_job = add_job(p, "admin", files={"m.pt": "y"})
    page = admin.get(f"{p.url}/hub/spawn/gus", timeout=30).text
    assert "Options for <strong>gus</strong>" in page
    assert 'value="form-a"' in page  # gus's group may read it
    assert 'value="staff-form"' not in page  # the admin may, gus may not
    options = re.findall(r'<option value="(\d+)"', page)
    assert str(gus_job) in options and str(admins_job) not in options

    r = admin.post(
        f"{p.url}/hub/spawn/gus",
        data={"_xsrf": admin.cookies.get("_xsrf"), "datasets": ["form-a"], "parent": str(gus_job)},
        timeout=60,
    )
    assert r.status_code == 200, r.text[-500:]
    srv = p.wait_ready("gus")
    try:
        # what was chosen stays readable where the admin panel reads it
        assert srv["user_options"] == {"datasets": ["form-a"], "parent": [gus_job]}
        status, out = p.run_in_server("gus", "cat ~/parent/m.pt")
        assert out.strip().endswith("x")
    finally:
        p.stop_server("gus")

    # the admin may not bind a dataset for gus that gus may not read
    r = p.spawn("gus", {"datasets": ["staff-form"]})
    assert r.status_code == 400 and "not readable" in r.json()["message"]
