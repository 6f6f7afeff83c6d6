"""Pure helpers of the admin dashboard and the spawn page's cull note: no hub, no browser."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from tornado import web

from hub_ext.service.dashboard import (
    RunningServer,
    _env,
    ago,
    clock,
    job_filters,
    probe_url,
    running_servers,
    server_entry,
    server_view,
    until,
)
from hub_ext.spawner.form import last_cull_note, render_form

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=timezone.utc)
SRV = RunningServer("ann", "", "/user/ann/", "2026-11-26T10:00:00Z", "2026-11-26T11:00:00Z")


def test_running_servers_keeps_ready_ones_only() -> None:
    users = [
        {
            "name": "ann",
            "servers": {
                "": {"ready": True, "pending": None, "url": "/user/ann/", "started": "t"},
                "gpu": {"ready": False, "pending": "spawn", "url": "/user/ann/gpu/"},
            },
        },
        {"name": "bob", "servers": {}},
        {"name": "cy"},
    ]
    assert running_servers(users) == [RunningServer("ann", "", "/user/ann/", "t", None)]


def test_probe_url_behind_the_proxy_or_on_a_subdomain() -> None:
    assert probe_url("http://proxy-public/", "/user/ann/") == (
        "http://proxy-public/user/ann/api/kqi/activity"
    )
    assert probe_url("http://x", "https://ann.hub.example/user/ann/") == (
        "https://ann.hub.example/user/ann/api/kqi/activity"
    )


def test_times_as_people_read_them() -> None:
    assert ago("2026-11-26T11:30:00Z", NOW) == "30 min ago"
    assert ago(None, NOW) == "never"
    assert until("2026-11-26T13:30:00Z", NOW) == "in 90 min"
    assert until("2026-11-26T11:59:00Z", NOW) == "due now"
    assert until(None, NOW) == "—"
    assert clock("2026-11-26T11:30:05.123Z") == "2026-11-26 11:30:05 UTC"


def test_server_view_of_a_probed_server() -> None:
    activity = {
        "started": "2026-11-26T10:00:00Z",
        "last_browser_access": "2026-11-26T11:50:00Z",
        "kernels": [
            {
                "id": "0123456789ab",
                "execution_state": "idle",
                "last_activity": "2026-11-26T11:00:00Z",
            }
        ],
        "watched_processes": [{"pid": 42, "name": "lmp", "cmdline": ["lmp", "-in", "x"]}],
        "forecast": {"rule": "idle", "at": "2026-11-26T13:20:00Z"},
    }
    entry = server_entry(SRV, activity, "")
    assert entry["probe"] == "ok" and entry["forecast"]["rule"] == "idle"
    view = server_view(entry, NOW)
    assert view["server"] == "(default)" and view["uptime"] == "2 h"
    assert view["last_access"] == "10 min ago"
    assert view["kernels"] == [{"id": "01234567", "state": "idle", "idle": "60 min"}]
    assert view["processes"] == [{"pid": 42, "name": "lmp"}]
    assert (view["rule"], view["in"], view["at"]) == (
        "idle",
        "in 80 min",
        "2026-11-26 13:20:00 UTC",
    )


def test_a_failed_probe_shows_as_such() -> None:
    entry = server_entry(SRV, None, "probe failed: timeout")
    assert entry["probe"] == "failed" and "forecast" not in entry
    view = server_view(entry, NOW)
    assert not view["ok"] and view["error"] == "probe failed: timeout"
    html = _env.get_template("kqi_dashboard.html").render(
        hub="/hub/",
        prefix="/services/kqi/",
        user="admin",
        is_admin=True,
        now="now",
        servers=[view],
        jobs=[],
        owners=[],
        statuses=["failed"],
        want_user="",
        want_status="",
        culls=[],
    )
    assert "activity probe failed: probe failed: timeout" in html


def test_job_filters_refuse_unknown_statuses() -> None:
    assert job_filters(" ann ", "failed") == ("ann", "failed")
    assert job_filters(None, None) == ("", "")
    with pytest.raises(web.HTTPError):
        job_filters("", "exploded")


def test_dashboard_escapes_what_users_control() -> None:
    evil = "<script>alert(1)</script>"
    job = {
        "id": 7,
        "name": evil,
        "owner": "ann",
        "status": "failed",
        "message": evil,
        "exit_code": 1,
        "created": "t",
        "duration": "1 s",
        "command": evil,
        "continued_from": None,
    }
    cull = {"when": "t", "user": "ann", "server": "", "rule": "idle", "reason": evil}
    html = _env.get_template("kqi_dashboard.html").render(
        hub="/hub/",
        prefix="/services/kqi/",
        user=evil,
        is_admin=True,
        now="now",
        servers=[],
        jobs=[job],
        owners=[evil],
        statuses=["failed"],
        want_user="",
        want_status="",
        culls=[cull],
    )
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_spawn_form_says_why_the_last_server_was_stopped() -> None:
    event = {
        "rule": "idle",
        "reason": "no browser access for 90 min <and> all kernels idle",
        "server": "",
        "culled_at": "2026-11-26T09:15:00.5Z",
    }
    note = last_cull_note(event)
    assert "stopped automatically on 2026-11-26 09:15 UTC because: <strong>idle</strong>" in note
    assert "&lt;and&gt;" in note
    data = {
        "profiles": [
            {"name": "standard", "display_name": "Standard", "cpu": 2, "memory": 8 << 30}
            | {"storage": 100 << 30, "default": True}
        ],
        "datasets": [],
        "jobs": [],
        "max_datasets": 5,
        "max_lifetime_hours": None,
        "last_cull": event,
    }
    html = render_form(data)
    assert html.index("kqi-last-cull") < html.index("Resources")  # at the top
    assert "kqi-last-cull" not in render_form({**data, "last_cull": None})
