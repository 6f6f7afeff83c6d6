"""Workspace size against the profile's storage (pure): the words users read in refusals, the
form and the CLI, and the option and job checks that use them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from hub_ext.jobspec import validate_job_spec
from hub_ext.options import Context, OptionsError, Profile, validate_options
from hub_ext.quota import Usage, ago_text, over_quota, size_text, usage_line
from hub_ext.spawner.form import render_form
from server_ext.cli_usage import lines

GiB, MiB = 2**30, 2**20
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
PROFILES = {
    "small": Profile.from_config({"name": "small", "storage": "50M"}),
    "standard": Profile.from_config({"name": "standard", "storage": "100G", "default": True}),
}


@pytest.mark.parametrize(
    "n,text",
    [
        (0, "0 B"),
        (512, "512 B"),
        (1024, "1 KiB"),
        (int(1.25 * GiB), "1.2 GiB"),
        (100 * GiB, "100 GiB"),
        (int(101.2 * GiB), "101.2 GiB"),
        (1024 * MiB - 1, "1 GiB"),  # 1023.99 MiB rounds to the next unit, not "1024 MiB"
        (3 * 2**50, "3 PiB"),
    ],
)
def test_size_text(n: int, text: str) -> None:
    assert size_text(n) == text


def test_ago_text() -> None:
    assert [ago_text(s) for s in (-3, 5, 119, 180, 7199, 7200, 50 * 3600)] == [
        "0 s",
        "5 s",
        "119 s",
        "3 min",
        "119 min",
        "2 h",
        "2 d",
    ]


def test_usage_line_and_refusal_name_the_numbers() -> None:
    u = Usage(int(101.2 * GiB), NOW - timedelta(minutes=3))
    assert usage_line(u, 100 * GiB, NOW) == "101.2 GiB of 100 GiB (measured 3 min ago)"
    assert over_quota(u, 100 * GiB, NOW).startswith(
        "workspace 101.2 GiB is over the profile's 100 GiB (measured 3 min ago)"
    )
    assert over_quota(u, 200 * GiB, NOW) is None
    assert over_quota(Usage(100 * GiB, NOW), 100 * GiB, NOW) is None  # exactly full fits
    assert over_quota(None, 1, NOW) is None  # never measured: nothing to refuse on
    naive = Usage(1, (NOW - timedelta(seconds=5)).replace(tzinfo=None))  # as SQLite gives it
    assert usage_line(naive, 1024, NOW) == "1 B of 1 KiB (measured 5 s ago)"


def ctx(used: int | None) -> Context:
    workspace = None if used is None else Usage(used, datetime.now(timezone.utc))
    return Context(PROFILES, set(), set(), {}, workspace=workspace)


def test_spawn_refused_over_the_profiles_storage() -> None:
    with pytest.raises(OptionsError) as info:
        validate_options({"profile": "small", "lifetime_hours": -1}, ctx(60 * MiB))
    fields = [f for f, _ in info.value.errors]
    assert fields == ["profile", "lifetime_hours"]  # reported with the other problems
    assert "workspace 60 MiB is over the profile's 50 MiB (measured 0 s ago)" in str(info.value)
    assert validate_options({}, ctx(60 * MiB)).profile == "standard"  # the default fits
    assert validate_options({"profile": "small"}, ctx(None)).profile == "small"


def test_job_refused_over_its_profiles_storage() -> None:
    spec = {"command": "python x.py", "profile": "small"}
    with pytest.raises(OptionsError) as info:
        validate_job_spec(spec, ctx(60 * MiB))
    assert info.value.errors[0][0] == "profile"
    assert "over the profile's 50 MiB" in info.value.errors[0][1]
    assert validate_job_spec(spec, ctx(10 * MiB)).profile == "small"


def test_form_shows_the_workspace_and_the_profiles_too_small() -> None:
    data = {
        "profiles": [p.to_dict() for p in PROFILES.values()],
        "datasets": [],
        "jobs": [],
        "max_datasets": 5,
        "workspace": {"bytes": 60 * MiB, "measured_at": "2025-03-01T11:57:00Z"},
    }
    html = render_form(data, now=NOW)
    assert "Workspace: 60 MiB of 100 GiB (measured 3 min ago)" in html
    assert "(your workspace, 60 MiB, is over its 50 MiB)" in html
    assert html.count("kqi-too-small") == 1
    assert "Workspace:" not in render_form({**data, "workspace": None}, now=NOW)


def test_cli_lines() -> None:
    data = {
        "user": "ann",
        "bytes": 60 * MiB,
        "files": 3,
        "measured_at": "2025-03-01T11:59:50Z",
        "profile": "small",
        "quota": 50 * MiB,
        "over_quota": True,
    }
    out = lines(data, NOW)
    assert out[0] == "workspace: 60 MiB of 50 MiB (measured 10 s ago)"
    assert "profile:   small (50 MiB of storage)" in out
    assert out[-1].startswith("over the quota: new servers and jobs with profile small")
    assert not lines({**data, "over_quota": False}, NOW)[-1].startswith("over")
