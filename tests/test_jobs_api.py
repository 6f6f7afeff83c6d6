"""Jobs through the kqi service's real REST API: run, fail, stop, time out, continue, queue,
follow logs, download outputs, webhooks, and who may see what."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import psutil
import pytest
import requests

from .jobs import archive, submit, wait_job, wait_started
from .platform import Platform, free_port

TRAIN = """
import os
data = open(os.path.join(os.environ["KQI_ROOT"], "input/mnist/a.txt")).read()
print("read", len(data), "bytes from", os.environ["KQI_DATASETS"], "job", os.environ["KQI_JOB_ID"])
with open("/kqi/output/result.txt" if os.environ["KQI_ISOLATION"] == "bubblewrap"
          else os.path.join(os.environ["KQI_ROOT"], "output/result.txt"), "w") as f:
    f.write(data.upper())
"""


@pytest.fixture(scope="module")
def p(platform: Platform) -> Platform:
    platform.add_dataset("mnist", {"a.txt": "digits\n"})
    return platform


@pytest.fixture(params=["platform", "plain_platform"])
def any_p(request) -> Platform:
    pl = request.getfixturevalue(request.param)
    pl.add_dataset("mnist", {"a.txt": "digits\n"})
    return pl


def test_script_reads_input_writes_output(any_p: Platform) -> None:
    p = any_p
    tok = p.add_user("jo")
    r = submit(
        p,
        tok,
        {"command": "python train.py", "datasets": ["mnist"], "name": "t"},
        {"train.py": TRAIN},
    )
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] in ("queued", "running") and job["owner"] == "jo"
    job = wait_job(p, tok, job["id"])
    assert (job["status"], job["exit_code"]) == ("succeeded", 0), job
    log = p.service(f"api/jobs/{job['id']}/logs", tok).text
    assert f"read 7 bytes from mnist job {job['id']}" in log
    files = p.service(f"api/jobs/{job['id']}/files", tok).json()
    assert [f["path"] for f in files] == ["result.txt"]
    r = p.service(f"api/jobs/{job['id']}/files/result.txt", tok)
    assert r.status_code == 200 and r.text == "DIGITS\n"
    assert job["id"] in [j["id"] for j in p.service("api/jobs", tok).json()]


def test_job_environment_has_no_tokens_and_inputs_are_read_only(p: Platform) -> None:
    tok = p.add_user("kim")
    script = "env | sort; echo x > /kqi/input/mnist/new.txt && echo WROTE; pwd"
    job = submit(p, tok, {"command": script, "datasets": ["mnist"]}).json()
    job = wait_job(p, tok, job["id"])
    log = p.service(f"api/jobs/{job['id']}/logs", tok).text
    assert "JUPYTERHUB_API_TOKEN" not in log and "TOKEN" not in log
    assert "PYTHONUNBUFFERED=1" in log and f"KQI_JOB_ID={job['id']}" in log
    assert "Read-only file system" in log and "WROTE" not in log
    assert "/kqi/code" in log
    assert not (p.data_root / "datasets/mnist/new.txt").exists()


def test_parent_of_a_new_job_and_admin_listing(p: Platform) -> None:
    tok = p.add_user("pam")
    first = wait_job(p, tok, submit(p, tok, {"command": "echo w > /kqi/output/model"}).json()["id"])
    both = [first["id"]]
    second = submit(p, tok, {"command": "cat /kqi/parent/model", "parent": first["id"]}).json()
    second = wait_job(p, tok, second["id"])
    assert p.service(f"api/jobs/{second['id']}/logs", tok).text == "w\n"
    both.append(second["id"])
    admin = p.add_user("boss", admin=True)
    listed = [j["id"] for j in p.service("api/jobs?user=pam", admin).json()]
    assert listed == both[::-1]  # newest first
    assert set(both) <= {j["id"] for j in p.service("api/jobs?all=1", admin).json()}
    assert p.service("api/jobs", admin).json() == []  # the admin's own: none


def test_failing_script_is_failed_with_its_exit_code(p: Platform) -> None:
    tok = p.add_user("lu")
    code = {"bad.py": "import sys\nprint('about to fail')\nsys.exit(3)\n"}
    job = wait_job(p, tok, submit(p, tok, {"command": "python bad.py"}, code).json()["id"])
    assert (job["status"], job["exit_code"]) == ("failed", 3)
    assert "about to fail" in p.service(f"api/jobs/{job['id']}/logs", tok).text


def _sleepers(tag: str) -> list[psutil.Process]:
    return [
        pr
        for pr in psutil.process_iter(["cmdline"])
        if pr.info["cmdline"] and pr.info["cmdline"][:2] == ["sleep", tag]
    ]


def test_stop_kills_the_job_and_its_children(p: Platform) -> None:
    tok = p.add_user("mo")
    # a child in the background, one in its own session, and the main command
    cmd = "sleep 4241 & setsid sleep 4241 & echo started; sleep 4241"
    job = submit(p, tok, {"command": cmd}).json()
    wait_job(p, tok, job["id"], until=("running",))
    deadline = time.monotonic() + 10
    while len(_sleepers("4241")) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(_sleepers("4241")) == 3
    r = p.service(f"api/jobs/{job['id']}/stop", tok, method="POST")
    assert r.status_code == 200, r.text
    job = wait_job(p, tok, job["id"])
    assert job["status"] == "stopped"
    assert _sleepers("4241") == []
    # stop is idempotent
    assert p.service(f"api/jobs/{job['id']}/stop", tok, method="POST").json()["status"] == "stopped"


def test_timeout(p: Platform) -> None:
    tok = p.add_user("ned")
    job = submit(p, tok, {"command": "echo begin; sleep 60", "timeout_seconds": 1}).json()
    job = wait_job(p, tok, job["id"], timeout=30)
    assert job["status"] == "failed" and "time limit" in job["message"]
    assert "timeout after 1 s" in p.service(f"api/jobs/{job['id']}/logs", tok).text


def test_continue_sees_parent_and_leaves_it_untouched(p: Platform) -> None:
    tok = p.add_user("ola")
    first = submit(
        p,
        tok,
        {"command": "python step.py", "datasets": ["mnist"]},
        {"step.py": "import os\nopen('/kqi/output/result.txt','w').write('step 1\\n')\n"},
    ).json()
    first = wait_job(p, tok, first["id"])
    assert first["status"] == "succeeded"
    out1 = p.data_root / "users/ola/jobs" / str(first["id"]) / "output/result.txt"
    before = hashlib.sha256(out1.read_bytes()).hexdigest()

    cmd = (
        "cat /kqi/parent/result.txt; ls /kqi/output; echo $KQI_CONTINUED_FROM;"
        " ls /kqi/input; echo more >> /kqi/parent/result.txt || echo PARENT-RO;"
        " echo 'step 2' > /kqi/output/result.txt"
    )
    r = p.service(f"api/jobs/{first['id']}/continue", tok, method="POST", json={"command": cmd})
    assert r.status_code == 201, r.text
    second = wait_job(p, tok, r.json()["id"])
    assert second["continued_from"] == first["id"] and second["parents"] == [first["id"]]
    log = p.service(f"api/jobs/{second['id']}/logs", tok).text
    assert "step 1" in log and "PARENT-RO" in log and "mnist" in log
    assert str(first["id"]) in log.split()
    assert hashlib.sha256(out1.read_bytes()).hexdigest() == before

    # a continue of a continue, output copied in, same code as before
    r = p.service(
        f"api/jobs/{second['id']}/continue",
        tok,
        method="POST",
        json={"copy_output": True, "command": "cat /kqi/output/result.txt; ls"},
    )
    third = wait_job(p, tok, r.json()["id"])
    log = p.service(f"api/jobs/{third['id']}/logs", tok).text
    assert third["status"] == "succeeded" and "step 2" in log and "step.py" in log
    assert p.service(f"api/jobs/{second['id']}/files/result.txt", tok).text == "step 2\n"


def test_queue_beyond_the_per_user_limit_starts_in_order(p: Platform) -> None:
    tok = p.add_user("pia")
    ids = [submit(p, tok, {"command": f"sleep {s}"}).json()["id"] for s in (3, 3, 1, 1)]
    time.sleep(1.5)
    states = [p.service(f"api/jobs/{i}", tok).json()["status"] for i in ids]
    assert states[:2] == ["running", "running"] and states[2:] == ["queued", "queued"]
    jobs = [wait_job(p, tok, i) for i in ids]
    assert all(j["status"] == "succeeded" for j in jobs)
    assert jobs[2]["started_at"] <= jobs[3]["started_at"]
    assert jobs[2]["started_at"] >= min(jobs[0]["finished_at"], jobs[1]["finished_at"])


def test_logs_follow_streams_until_the_end(p: Platform) -> None:
    tok = p.add_user("quinn")
    cmd = "for i in 1 2 3 4; do echo line $i; sleep 0.5; done"
    job = submit(p, tok, {"command": cmd}).json()
    t0 = time.monotonic()
    with requests.get(
        f"{p.url}/services/kqi/api/jobs/{job['id']}/logs?follow=1",
        headers={"Authorization": f"token {tok}"},
        stream=True,
        timeout=30,
    ) as r:
        first_at = None
        text = ""
        for chunk in r.iter_content(chunk_size=None):
            text += chunk.decode()
            if first_at is None and "line 1" in text:
                first_at = time.monotonic() - t0
    assert [f"line {i}" for i in (1, 2, 3, 4)] == [x for x in text.splitlines() if x]
    assert first_at is not None and first_at < time.monotonic() - t0 - 1  # streamed, not at end


class _Hook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_webhook_on_finish_and_a_failing_one_never_fails_the_job(p: Platform) -> None:
    tok = p.add_user("rae")
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook"
        job = submit(p, tok, {"command": "true", "notify_url": url}).json()
        wait_job(p, tok, job["id"])
        deadline = time.monotonic() + 10
        while not _Hook.received and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _Hook.received[0]["job"]["id"] == job["id"]
        assert _Hook.received[0]["job"]["status"] == "succeeded"
    finally:
        server.shutdown()
    dead = f"http://127.0.0.1:{free_port()}/nobody"
    job = wait_job(p, tok, submit(p, tok, {"command": "true", "notify_url": dead}).json()["id"])
    assert job["status"] == "succeeded"
    deadline = time.monotonic() + 10
    while f"webhook {dead} failed" not in p.log_tail(300) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert f"webhook {dead} failed" in p.log_tail(300)


def test_other_users_cannot_reach_a_job(p: Platform) -> None:
    owner = p.add_user("sue")
    other = p.add_user("tom")
    job = wait_job(
        p, owner, submit(p, owner, {"command": "echo private > /kqi/output/x"}).json()["id"]
    )
    jid = job["id"]
    for method, path in [
        ("GET", f"api/jobs/{jid}"),
        ("GET", f"api/jobs/{jid}/logs"),
        ("GET", f"api/jobs/{jid}/files"),
        ("GET", f"api/jobs/{jid}/files/x"),
        ("POST", f"api/jobs/{jid}/stop"),
        ("POST", f"api/jobs/{jid}/continue"),
    ]:
        r = p.service(path, other, method=method, json={} if method == "POST" else None)
        assert r.status_code == 404, (path, r.status_code, r.text)
    assert jid not in [j["id"] for j in p.service("api/jobs", other).json()]
    assert p.service("api/jobs?all=1", other).status_code == 403
    assert p.service("api/jobs?user=sue", other).status_code == 403
    r = submit(p, other, {"command": "true", "parent": jid})
    assert r.status_code == 400 and f"no job {jid} that you may read" in r.json()["message"]
    r = p.spawn("tom", {"parent": jid})
    assert r.status_code == 400
    r = p.service(f"api/jobs/{jid}/files/../../../../hub/kqi-service-token", owner)
    assert r.status_code == 404


def _incoming(p: Platform, user: str) -> list[str]:
    d = p.data_root / "users" / user / "jobs"
    return sorted(x.name for x in d.iterdir()) if d.exists() else []


@pytest.mark.parametrize(
    "members,message",
    [
        ({"../evil.py": "x"}, "'..' in path"),
        ({"/etc/evil.py": "x"}, "absolute path"),
    ],
)
def test_bad_archives_refused_nothing_written(p: Platform, members: dict, message: str) -> None:
    tok = p.add_user("uma")
    before = _incoming(p, "uma")
    r = submit(p, tok, {"command": "true"}, archive(members))
    assert r.status_code == 400 and message in r.json()["message"], r.text
    assert _incoming(p, "uma") == before
    assert p.service("api/jobs", tok).json() == []


def test_link_leaving_the_folder_refused(p: Platform) -> None:
    import io
    import tarfile

    tok = p.add_user("vic")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        ti = tarfile.TarInfo("data")
        ti.type, ti.linkname = tarfile.SYMTYPE, "../../../hub"
        tf.addfile(ti)
    r = submit(p, tok, {"command": "true"}, buf.getvalue())
    assert r.status_code == 400 and "leaves the folder" in r.json()["message"]
    assert _incoming(p, "vic") == []


def test_bad_specs_refused(p: Platform) -> None:
    tok = p.add_user("wes")
    r = submit(p, tok, {"command": ""})
    assert r.status_code == 400 and "command: is required" in r.json()["message"]
    r = submit(p, tok, {"command": "true", "datasets": ["nope"], "purpose": "fun", "x": 1})
    msg = r.json()["message"]
    assert "unknown dataset 'nope'" in msg and "purpose" in msg and "x: unknown field" in msg
    r = p.service("api/jobs", tok, method="POST", json={"command": "true"})
    assert r.status_code == 400 and "code archive" in r.json()["message"]
    assert p.service("api/jobs", tok).json() == []


def _service_pid(p: Platform) -> int:
    for pr in psutil.process_iter(["cmdline"]):
        cmd = pr.info["cmdline"] or []
        if "hub_ext.service" in cmd and str(p.data_root) in cmd:
            return pr.pid
    raise LookupError("kqi service not running")


def test_service_kill9_jobs_reattached(p: Platform) -> None:
    tok = p.add_user("xia")
    ends = submit(p, tok, {"command": "sleep 2; echo done > /kqi/output/done.txt; exit 4"}).json()
    keeps = submit(p, tok, {"command": "sleep 300"}).json()
    for j in (ends, keeps):
        wait_started(p, tok, "xia", j["id"])
    sup_file = p.data_root / f"users/xia/jobs/{keeps['id']}/logs/supervisor.json"
    old = _service_pid(p)
    psutil.Process(old).kill()  # kill -9 while both run
    # while the service is down: the second job's supervisor vanishes without a status
    psutil.Process(json.loads(sup_file.read_text())["pid"]).kill()
    time.sleep(3)  # the first job ends while nobody watches
    deadline = time.monotonic() + 60  # JupyterHub restarts its managed service
    while time.monotonic() < deadline:
        try:
            if _service_pid(p) != old and p.service("api/jobs", tok).status_code == 200:
                break
        except (LookupError, requests.ConnectionError):
            pass
        time.sleep(0.5)
    ended = wait_job(p, tok, ends["id"])
    assert (ended["status"], ended["exit_code"]) == ("failed", 4)
    assert p.service(f"api/jobs/{ends['id']}/files/done.txt", tok).text == "done\n"
    lost = wait_job(p, tok, keeps["id"])
    assert lost["status"] == "lost" and "no exit status" in lost["message"]
    # nothing duplicated
    ids = [j["id"] for j in p.service("api/jobs", tok).json()]
    assert sorted(ids) == sorted([ends["id"], keeps["id"]])


def test_running_job_survives_service_restart(p: Platform) -> None:
    tok = p.add_user("yan")
    # it runs until the test drops a file into its code folder
    cmd = "while [ ! -e go ]; do sleep 0.2; done; echo finished"
    job = submit(p, tok, {"command": cmd}).json()
    wait_started(p, tok, "yan", job["id"])
    old = _service_pid(p)
    psutil.Process(old).kill()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if _service_pid(p) != old and p.service("api/jobs", tok).status_code == 200:
                break
        except (LookupError, requests.ConnectionError):
            pass
        time.sleep(0.5)
    assert p.service(f"api/jobs/{job['id']}", tok).json()["status"] == "running"
    (p.data_root / f"users/yan/jobs/{job['id']}/code/go").touch()
    job = wait_job(p, tok, job["id"])
    assert job["status"] == "succeeded"
    assert "finished" in p.service(f"api/jobs/{job['id']}/logs", tok).text


def test_notebook_sees_own_jobs_read_only(p: Platform) -> None:
    tok = p.add_user("zed")
    job = wait_job(p, tok, submit(p, tok, {"command": "echo 42 > /kqi/output/answer"}).json()["id"])
    assert p.spawn("zed", {"parent": job["id"]}).ok
    p.wait_ready("zed")
    try:
        status, out = p.run_in_server(
            "zed", f"cat ~/jobs/{job['id']}/output/answer ~/parent/answer; touch ~/jobs/x"
        )
        assert out.count("42") >= 2 and "Read-only file system" in out
    finally:
        p.stop_server("zed")


def test_stop_right_after_submit_is_stopped_not_lost(p: Platform) -> None:
    tok = p.add_user("abe")
    for _ in range(3):
        job = submit(p, tok, {"command": "sleep 30"}).json()
        p.service(f"api/jobs/{job['id']}/stop", tok, method="POST")
        job = wait_job(p, tok, job["id"])
        assert job["status"] == "stopped", job
