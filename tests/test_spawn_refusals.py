"""Bad spawn options are refused with a message naming the problem, and nothing is created."""

from __future__ import annotations

import pytest

from .jobs import add_job
from .platform import Platform


@pytest.fixture(scope="module")
def setup(platform: Platform) -> Platform:
    p = platform
    for name in ("d1", "d2", "d3", "d4", "d5", "d6"):
        p.add_dataset(name, {"x.txt": name})
    p.add_dataset("secret", {"x.txt": "classified"}, groups=["staff"])
    p.add_user("mallory", groups=["students"])
    p.add_user("owner")
    return p


def _other_users_job(p: Platform) -> int:
    return add_job(p, "owner", files={"model.pt": "private"})


CASES = [
    ({"datasets": ["secret"]}, "datasets: dataset 'secret' is not readable by your groups"),
    ({"datasets": ["nope"]}, "datasets: unknown dataset 'nope'"),
    ({"profile": "huge"}, "profile: unknown profile 'huge'"),
    ({"bogus": 1}, "bogus: unknown option"),
    ({"datasets": ["d1", "d2", "d3", "d4", "d5", "d6"]}, "datasets: 6 datasets chosen, at most 5"),
    ({"datasets": ["../secret"]}, "'../secret' is not a dataset name"),
    ({"datasets": ["d1/../secret"]}, "'d1/../secret' is not a dataset name"),
    ({"lifetime_hours": -3}, "lifetime_hours: must be a positive number of hours"),
    ({"env": {"JUPYTERHUB_API_TOKEN": "x"}}, "env: JUPYTERHUB_API_TOKEN is set by the platform"),
    ({"git": {"url": "ext::sh -c touch% /tmp/pwned"}}, "git.url:"),
]


@pytest.mark.parametrize(
    "options,message", CASES, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(CASES)]
)
def test_refused_with_named_problem(setup: Platform, options: dict, message: str) -> None:
    p = setup
    r = p.spawn("mallory", options)
    assert r.status_code == 400, r.text
    assert message in r.json()["message"]
    assert "" not in p.api("GET", "users/mallory").json()["servers"]
    # nothing created for this user: no home, no per-server folder
    assert not (p.data_root / "users" / "mallory").exists()
    assert not (p.data_root / "run" / "mallory").exists()


def test_jobs_of_others_and_wrong_purpose_refused(setup: Platform) -> None:
    p = setup
    theirs = _other_users_job(p)
    mine = add_job(p, "mallory", purpose="training")
    r = p.spawn("mallory", {"parent": theirs, "inference": mine})
    assert r.status_code == 400, r.text
    msg = r.json()["message"]
    assert f"parent: there is no job {theirs} that you may read" in msg
    assert f"inference: job {mine} has purpose 'training', not 'inference'" in msg
    r = p.spawn("mallory", {"parent": 999999})
    assert r.status_code == 400 and "no job 999999" in r.json()["message"]
    assert not (p.data_root / "run" / "mallory").exists()


def test_group_member_may_bind_restricted_dataset(setup: Platform) -> None:
    p = setup
    p.add_user("sam", groups=["staff"])
    r = p.spawn("sam", {"datasets": ["secret"]})
    assert r.status_code in (201, 202), r.text
    p.wait_ready("sam")
    try:
        status, out = p.run_in_server("sam", "cat ~/input/secret/x.txt")
        assert status == 0 and "classified" in out
    finally:
        p.stop_server("sam")
