"""The admin dashboard and the spawn page in a real browser (headless chromium via
Playwright) against a real hub: log in through the hub's login page, spawn with two datasets,
see them in JupyterLab's file browser; the dashboard's servers, jobs (with filters) and cull
history; a non-admin refused; the spawn page after a cull says why. Screenshots of each step
go to test-artifacts/screenshots/dashboard-*.png."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
import requests
from playwright.sync_api import expect

from culler.rules import RULES, parse_time

from .jobs import submit, wait_job
from .platform import Platform, private_platform
from .pw import login, shot

LIFETIME_HOURS = 0.005  # 18 s: carl's server is stopped by the lifetime rule
CONFIG = """
c.NativeAuthenticator.open_signup = True
c.KqiCuller.every = 2
c.KqiCuller.probe_timeout = 2
c.KqiCuller.api_timeout = 5
c.KqiCuller.idle_timeout = 3600
"""
CARL_PASSWORD = "carl-pw-7f3a9c"


@pytest.fixture(scope="module")
def p() -> Iterator[Platform]:
    with private_platform("dash", CONFIG) as q:
        q.add_dataset("dash-alpha", {"alpha.csv": "x,y\n1,2\n"})
        q.add_dataset("dash-beta", {"beta.txt": "beta"})
        yield q


def signup(p: Platform, user: str, password: str) -> None:
    """Sign up through the hub's own sign-up form (open sign-up in this platform)."""
    s = requests.Session()
    s.get(f"{p.url}/hub/signup", timeout=30)
    r = s.post(
        f"{p.url}/hub/signup",
        data={
            "username": user,
            "signup_password": password,
            "signup_password_confirmation": password,
            "_xsrf": s.cookies.get("_xsrf", path="/hub/"),
        },
        timeout=30,
    )
    assert "signup was successful" in r.text, r.text[-800:]


def lab_started(page: Any) -> None:
    """JupyterLab has finished starting: the file browser has restored its folder and opened
    what the URL names (until then it carries ``jp-mod-restoring``, and a listing shown
    earlier may still be replaced or navigated away from under a click)."""
    page.wait_for_selector(".jp-LabShell", timeout=60_000)
    page.locator("#filebrowser:not(.jp-mod-restoring)").wait_for(state="attached", timeout=60_000)


def cull_events(p: Platform, token: str) -> list[dict[str, Any]]:
    r = p.service("api/cull-events", token)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def admin_pw(p: Platform) -> str:
    return p.password_file.read_text().strip()


@pytest.fixture(scope="module")
def culled_carl(p: Platform) -> dict[str, Any]:
    """carl's server, spawned with an 18 s lifetime, stopped by the real culler; its event."""
    signup(p, "carl", CARL_PASSWORD)
    token = p.add_user("carl")
    assert p.spawn("carl", {"lifetime_hours": LIFETIME_HOURS}).status_code in (201, 202)
    p.wait_ready("carl")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        events = cull_events(p, token)
        if events:
            return events[0]
        time.sleep(1)
    raise AssertionError(f"carl's server was not culled:\n{p.log_tail()}")


@pytest.fixture(scope="module")
def jobs(p: Platform) -> dict[str, dict[str, Any]]:
    """Two finished jobs of the admin's: one succeeded, one failed."""
    token = p.token("admin")
    out = {}
    for name, command in (("dash-hello", "echo hello from the job"), ("dash-broken", "exit 3")):
        r = submit(p, token, {"name": name, "command": command})
        assert r.status_code == 201, r.text
        out[name] = wait_job(p, token, r.json()["id"])
    assert out["dash-hello"]["status"] == "succeeded" and out["dash-broken"]["status"] == "failed"
    return out


def test_spawn_form_with_two_datasets_lands_in_lab_showing_input(
    p: Platform, page: Any, admin_pw: str
) -> None:
    login(page, p, "admin", admin_pw)
    shot(page, "dashboard-01-after-login")
    page.goto(f"{p.url}/hub/spawn")
    page.check("#kqi-ds-dash-alpha")
    page.check("#kqi-ds-dash-beta")
    shot(page, "dashboard-02-spawn-form-filled")
    page.click("#spawn_form button[type=submit]")
    page.wait_for_url("**/user/admin/lab**", timeout=120_000)
    lab_started(page)
    browser_item = page.locator(".jp-DirListing-item[title^='Name: input']")
    browser_item.wait_for(timeout=60_000)
    shot(page, "dashboard-03-lab-home")
    browser_item.dblclick()
    alpha = page.locator(".jp-DirListing-item[title^='Name: dash-alpha']")
    alpha.wait_for(timeout=30_000)
    assert page.locator(".jp-DirListing-item[title^='Name: dash-beta']").is_visible()
    expect(page.locator(".jp-FileBrowser .jp-BreadCrumbs")).to_contain_text("input")
    shot(page, "dashboard-04-lab-input-folder")


def test_admin_dashboard_shows_server_jobs_and_cull_history(
    p: Platform,
    page: Any,
    admin_pw: str,
    jobs: dict[str, dict[str, Any]],
    culled_carl: dict[str, Any],
) -> None:
    p.wait_ready("admin")  # spawned in the browser by the test before
    login(page, p, "admin", admin_pw)
    # linked from the hub's Services menu
    page.goto(f"{p.url}/hub/home")
    page.get_by_role("button", name="Services").click()
    page.get_by_role("link", name="kqi").click()
    page.wait_for_url("**/services/kqi/")
    shot(page, "dashboard-05-admin-dashboard")

    row = page.locator("#servers tr.kqi-server[data-user='admin']")
    assert "admin" in row.inner_text()
    forecast = row.locator(".kqi-forecast").inner_text()
    assert forecast.startswith("idle in "), forecast  # idle_timeout 3600: the next rule
    assert "UTC" in forecast
    assert "ago" in row.inner_text()  # the last browser access

    # a kernel shows with its state and idle time: the page asks each server as it is
    # rendered, and the kernel is listed once its start has been answered
    r = p.server("admin", "api/kernels", method="POST", json={"name": "python3"})
    assert r.status_code == 201, r.text
    kernel = r.json()["id"]
    page.reload()
    kernels = row.locator("td", has_text=kernel[:8]).inner_text()
    assert re.search(
        rf"{kernel[:8]} (idle for [\d.]+ s|\w+, last activity [\d.]+ s ago)", kernels
    ), kernels
    shot(page, "dashboard-05b-admin-dashboard-kernel")

    table = page.locator("#jobs table")
    for name, job in jobs.items():
        line = table.locator(f"tr[data-job='{job['id']}']")
        assert name in line.inner_text() and job["status"] in line.inner_text()

    # filter: only failed jobs
    page.select_option("#filter-status", "failed")
    page.click("#job-filter button[type=submit]")
    page.wait_for_url("**status=failed**")
    shot(page, "dashboard-06-jobs-filtered-failed")
    statuses = page.locator("#jobs tr.kqi-job .kqi-status").all_inner_texts()
    assert statuses and all(s.startswith("failed") for s in statuses), statuses
    assert "dash-hello" not in page.locator("#jobs").inner_text()
    assert "dash-broken" in page.locator("#jobs").inner_text()
    # filter: a user without jobs
    page.goto(f"{p.url}/services/kqi/?user=carl")
    assert "No jobs match the filter" in page.locator("#jobs").inner_text()

    # the cull history: carl's server, stopped by the lifetime rule
    page.goto(f"{p.url}/services/kqi/")
    cull = page.locator("#culls tr.kqi-cull", has_text="carl")
    assert "lifetime" in cull.inner_text() and culled_carl["reason"] in cull.inner_text()
    page.locator("#culls").scroll_into_view_if_needed()
    shot(page, "dashboard-07-cull-history")

    # a job's log, from its link
    hello = jobs["dash-hello"]["id"]
    with page.context.expect_page() as log_tab:
        page.locator(f"#jobs tr[data-job='{hello}'] a", has_text="log").click()
    log = log_tab.value
    log.wait_for_load_state()
    assert "hello from the job" in log.locator("body").inner_text()
    shot(log, "dashboard-08-job-log")


def test_activity_api_is_for_admins(p: Platform, culled_carl: dict[str, Any]) -> None:
    r = p.service("api/activity", p.token("admin"))
    assert r.status_code == 200, r.text
    admin = next(s for s in r.json() if s["user"] == "admin")
    assert admin["probe"] == "ok" and admin["forecast"]["rule"] in RULES
    assert parse_time(admin["forecast"]["at"]) > datetime.now(timezone.utc)
    assert isinstance(admin["kernels"], list) and "last_browser_access" in admin
    assert p.service("api/activity", p.token("carl")).status_code == 403


def test_other_user_is_refused_with_a_403_page(
    p: Platform, page: Any, culled_carl: dict[str, Any]
) -> None:
    login(page, p, "carl", CARL_PASSWORD)
    resp = page.goto(f"{p.url}/services/kqi/")
    page.wait_for_load_state("networkidle")
    assert resp is not None and resp.status == 403
    text = page.locator("body").inner_text()
    assert "403: Forbidden" in text and "only admins see the kqi dashboard" in text
    assert page.locator("#jobs").count() == 0 and "dash-hello" not in text
    shot(page, "dashboard-09-non-admin-403")


def test_spawn_page_after_a_cull_says_why(
    p: Platform, page: Any, culled_carl: dict[str, Any]
) -> None:
    login(page, p, "carl", CARL_PASSWORD)
    page.goto(f"{p.url}/hub/spawn")
    note = page.locator(".kqi-last-cull")
    text = note.inner_text()
    assert "Your last server was stopped automatically on" in text, text
    assert "because: lifetime" in text and culled_carl["reason"] in text
    assert culled_carl["culled_at"][:10] in text  # the date it happened
    shot(page, "dashboard-10-spawn-page-after-cull")
