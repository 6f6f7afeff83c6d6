"""The user server's job routes, as the lab extension calls them: ``POST api/kqi/submit`` from a
file of the server, and the pass-through of the kqi service API (``api/kqi/jobs...``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from .jobs import wait_job
from .platform import Platform
from .test_jobs_cli import write_notebook
from .test_spawn_form import login

USER, OTHER = "route-cy", "route-di"


@pytest.fixture(scope="module")
def p(platform: Platform) -> Iterator[Platform]:
    platform.add_dataset("route-words", {"words.txt": "alpha beta\n"})
    for who in (USER, OTHER):
        platform.add_user(who)
    work = platform.home(USER) / "work"
    (work / "helpers").mkdir(parents=True, exist_ok=True)
    (work / "helpers" / "__init__.py").write_text("SUFFIX = '!'\n")
    (work / "count.py").write_text(
        "import os, helpers\n"
        "words = open('/kqi/input/route-words/words.txt').read().split()\n"
        "open('/kqi/output/result.txt', 'w').write(f'{len(words)} words{helpers.SUFFIX}')\n"
        "print('counted', words)\n"
    )
    (work / "ticks.py").write_text(
        "import time\nprint('tick one', flush=True)\ntime.sleep(4)\nprint('tick two')\n"
    )
    for who in (USER, OTHER):
        assert platform.spawn(who).ok
        platform.wait_ready(who)
    yield platform
    for who in (USER, OTHER):
        platform.stop_server(who)


def submit(p: Platform, body: dict[str, Any], user: str = USER) -> requests.Response:
    return p.server(user, "api/kqi/submit", method="POST", json=body)


def wait_log(p: Platform, job_id: int, text: str, timeout: float = 60) -> str:
    """The job's log once it holds ``text``: the job is really under way."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = p.server(USER, f"api/kqi/jobs/{job_id}/logs").text
        if text in log:
            return log
        time.sleep(0.3)
    raise TimeoutError(f"job {job_id} never logged {text!r}: {log}")


def test_submit_file_of_the_server(p: Platform) -> None:
    r = submit(p, {"path": "work/count.py", "datasets": ["route-words"], "name": "count"})
    assert r.status_code == 201, r.text
    job = r.json()
    assert (job["owner"], job["name"], job["command"]) == (USER, "count", "python count.py")
    job = wait_job(p, p.token(USER), job["id"])
    assert job["status"] == "succeeded", job
    # everything through the server's pass-through, as the lab extension sees it
    r = p.server(USER, f"api/kqi/jobs/{job['id']}")
    assert r.status_code == 200 and r.json()["status"] == "succeeded"
    assert "counted ['alpha', 'beta']" in p.server(USER, f"api/kqi/jobs/{job['id']}/logs").text
    files = p.server(USER, f"api/kqi/jobs/{job['id']}/files").json()
    assert [f["path"] for f in files] == ["result.txt"]
    r = p.server(USER, f"api/kqi/jobs/{job['id']}/files/result.txt")
    assert r.status_code == 200 and r.content == b"2 words!"
    assert job["id"] in [j["id"] for j in p.server(USER, "api/kqi/jobs").json()]


def test_papermill_route_with_typed_parameters(p: Platform) -> None:
    write_notebook(
        p.home(USER) / "work" / "nb" / "params.ipynb",
        "n = 1\ntag = 'x'",
        "open('/kqi/output/got.txt', 'w').write(f'{n * 2} {tag}')",
        parameters=0,
    )
    r = submit(
        p,
        {"path": "work/nb/params.ipynb", "mode": "papermill", "parameters": {"n": 21, "tag": "7"}},
    )
    assert r.status_code == 201, r.text
    job = wait_job(p, p.token(USER), r.json()["id"], timeout=120)
    assert job["status"] == "succeeded", p.server(USER, f"api/kqi/jobs/{job['id']}/logs").text
    assert p.server(USER, f"api/kqi/jobs/{job['id']}/files/got.txt").text == "42 7"


def test_logs_follow_streams_as_the_job_writes(p: Platform) -> None:
    job = submit(p, {"path": "work/ticks.py"}).json()
    wait_job(p, p.token(USER), job["id"], until=("running",))
    started = time.monotonic()
    seen: list[tuple[float, bytes]] = []
    with p.server(USER, f"api/kqi/jobs/{job['id']}/logs?follow=1", stream=True) as r:
        assert r.status_code == 200
        for chunk in r.iter_content(chunk_size=None):
            seen.append((time.monotonic() - started, chunk))
    text = b"".join(c for _, c in seen).decode()
    assert "tick one" in text and "tick two" in text
    first = next(t for t, c in seen if b"tick one" in c)
    last = next(t for t, c in seen if b"tick two" in c)
    assert last - first > 2, seen  # the first line came while the job was still sleeping
    assert wait_job(p, p.token(USER), job["id"])["status"] == "succeeded"


def test_stop_and_continue_through_the_server(p: Platform) -> None:
    body = {"path": "work/count.py", "datasets": ["route-words"]}
    first = wait_job(p, p.token(USER), submit(p, body).json()["id"])
    command = "cat /kqi/output/result.txt; echo; echo waiting; sleep 300"
    r = p.server(
        USER,
        f"api/kqi/jobs/{first['id']}/continue",
        method="POST",
        json={"copy_output": True, "command": command},
    )
    assert r.status_code == 201, r.text
    nxt = r.json()
    assert (nxt["continued_from"], nxt["command"]) == (first["id"], command)
    log = wait_log(p, nxt["id"], "waiting")
    assert "2 words!" in log  # the output it continues from
    r = p.server(USER, f"api/kqi/jobs/{nxt['id']}/stop", method="POST", json={})
    assert r.status_code == 200, r.text
    done = wait_job(p, p.token(USER), nxt["id"])
    assert done["status"] == "stopped", done


def test_datasets_and_profiles_pass_through(p: Platform) -> None:
    names = {d["name"] for d in p.server(USER, "api/kqi/datasets").json()}
    assert "route-words" in names
    profiles = {x["name"] for x in p.server(USER, "api/kqi/profiles").json()}
    assert "standard" in profiles


def test_refusals(p: Platform) -> None:
    (p.home(USER) / "work" / "bad.ipynb").write_text('{"cells": "not a list"}')
    r = submit(p, {"path": "work/bad.ipynb"})
    assert r.status_code == 400 and "bad.ipynb is not a valid notebook" in r.json()["message"]
    r = submit(p, {"path": "../route-di/home/x.py"})
    assert r.status_code == 400 and "leaves the server's root folder" in r.json()["message"]
    r = submit(p, {"path": "work/nope.py"})
    assert r.status_code == 404 and "no such file" in r.json()["message"]
    r = submit(p, {"path": "work/count.py", "gpu": 8})
    assert r.status_code == 400 and "gpu" in r.json()["message"]
    # the service's own refusal comes back with its status and words
    r = submit(p, {"path": "work/count.py", "datasets": ["no-such-words"]})
    assert r.status_code == 400 and "no-such-words" in r.json()["message"]
    r = p.server(USER, "api/kqi/jobs/../internal/plan")
    assert r.status_code in (400, 404)


def test_other_users_job_and_no_auth(p: Platform) -> None:
    mine = submit(p, {"path": "work/count.py", "datasets": ["route-words"]}).json()
    for path, method in (
        (f"api/kqi/jobs/{mine['id']}", "GET"),
        (f"api/kqi/jobs/{mine['id']}/logs", "GET"),
        (f"api/kqi/jobs/{mine['id']}/files", "GET"),
        (f"api/kqi/jobs/{mine['id']}/stop", "POST"),
        (f"api/kqi/jobs/{mine['id']}/continue", "POST"),
    ):
        r = p.server(OTHER, path, method=method, json={} if method == "POST" else None)
        assert r.status_code in (403, 404), (path, r.status_code, r.text)
        assert r.json()["message"], r.text
    # another user's token does not open my server
    r = requests.post(
        f"{p.url}/user/{USER}/api/kqi/submit",
        headers={"Authorization": f"token {p.token(OTHER)}"},
        json={"path": "work/count.py"},
        timeout=30,
    )
    assert r.status_code in (403, 404)
    r = requests.post(f"{p.url}/user/{USER}/api/kqi/submit", json={"path": "x"}, timeout=30)
    assert r.status_code in (302, 403) or "login" in r.url
    assert wait_job(p, p.token(USER), mine["id"])["status"] == "succeeded"


def test_browser_session_needs_xsrf(p: Platform) -> None:
    """As the lab extension calls it: the hub login cookie, OAuth into the server, and the
    XSRF token the page carries; without the XSRF token a POST is refused."""
    admin = "admin"
    (p.home(admin) / "web").mkdir(parents=True, exist_ok=True)
    (p.home(admin) / "web" / "hello.py").write_text("print('from the browser')\n")
    # explicit options: earlier tests may have left refused options to be reused
    r = p.spawn(admin, {"profile": "standard"})
    assert r.ok, r.text
    p.wait_ready(admin)
    try:
        s = login(p, admin, p.password_file.read_text().strip())
        r = s.get(f"{p.url}/user/{admin}/lab", timeout=60)
        assert r.status_code == 200 and r.url.endswith(f"/user/{admin}/lab"), r.url
        xsrf = next(c.value for c in s.cookies if c.name == "_xsrf" and c.path.startswith("/user"))
        url = f"{p.url}/user/{admin}/api/kqi/submit"
        fetch = {"Sec-Fetch-Mode": "cors", "Sec-Fetch-Site": "same-origin"}
        r = s.post(url, json={"path": "web/hello.py"}, headers=fetch, timeout=30)
        assert r.status_code == 403, r.text
        r = s.post(
            url, json={"path": "web/hello.py"}, headers={**fetch, "X-XSRFToken": xsrf}, timeout=30
        )
        assert r.status_code == 201, r.text
        job = wait_job(p, p.token(admin), r.json()["id"])
        assert job["status"] == "succeeded" and job["owner"] == admin
        log = s.get(
            f"{p.url}/user/{admin}/api/kqi/jobs/{job['id']}/logs",
            headers={**fetch, "X-XSRFToken": xsrf},  # JupyterLab sends it on every request
            timeout=30,
        )
        assert log.status_code == 200 and log.text == "from the browser\n"
    finally:
        p.stop_server(admin)
