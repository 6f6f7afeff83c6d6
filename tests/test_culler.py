"""The kqi-culler hub service end to end: a real hub with real servers, kernels and programs,
thresholds of seconds. Servers of all idle-rule scenarios run side by side through one
observation window (a browser keeps each open while it is set up, then the tab closes)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import psutil
import pytest
import requests

from culler.rules import parse_time

from .browser import Browser, KeepAlive, execute, start_kernel, start_workload
from .platform import Platform, private_platform
from .workloads import RENAME_PT, Workload, workloads, write_files

IDLE = 12  # seconds; a browser keeps each server open while its scenario is set up
BASE_CONFIG = """
c.NativeAuthenticator.open_signup = True
c.JupyterHub.allow_named_servers = True
c.KqiCuller.every = 2
c.KqiCuller.probe_timeout = 2
c.KqiCuller.api_timeout = 2
"""


@pytest.fixture(scope="module")
def p() -> Iterator[Platform]:
    if not shutil.which("lmp"):
        pytest.fail("LAMMPS (lmp) is not installed; ./setup-and-test.sh installs it")
    with private_platform("culler", BASE_CONFIG + f"c.KqiCuller.idle_timeout = {IDLE}\n") as q:
        yield q


def now() -> datetime:
    return datetime.now(timezone.utc)


def running(p: Platform, user: str, server: str = "") -> bool:
    srv = p.api("GET", f"users/{user}").json().get("servers", {}).get(server)
    return bool(srv and srv.get("ready"))


def events(p: Platform, token: str, **params: str) -> list[dict[str, Any]]:
    r = p.service("api/cull-events", token, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def wait_for(what: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, message
        time.sleep(0.5)


def server_pid(p: Platform, user: str) -> int:
    """The user's jupyterhub-singleuser process (found by its environment)."""
    api = f"http://127.0.0.1:{p.hub_port}/"
    for proc in psutil.process_iter(["cmdline", "environ"]):
        env = proc.info["environ"] or {}
        cmd = " ".join(proc.info["cmdline"] or [])
        if (
            env.get("JUPYTERHUB_USER") == user
            and env.get("JUPYTERHUB_API_URL", "").startswith(api)
            and "jupyterhub-singleuser" in cmd
        ):
            return proc.pid
    raise AssertionError(f"no server process of {user}")


# -- the idle-rule scenarios, set up side by side --------------------------------------------------
@dataclass
class Scenario:
    user: str
    servers: tuple[str, ...] = ("",)
    setup: Callable[[Platform, str], None] | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _busy_kernel(p: Platform, user: str) -> None:
    execute(p, user, start_kernel(p, user), "import time; time.sleep(600)", wait=False)


def _renamed_kernel(p: Platform, user: str) -> None:
    assert execute(p, user, start_kernel(p, user), RENAME_PT)["status"] == "ok"


def _workload(index: int) -> Callable[[Platform, str], None]:
    def setup(p: Platform, user: str) -> None:
        write_files(p.home(user), user)
        start_workload(p, user, workloads(user)[index])

    return setup


WORKLOADS = [w.name for w in workloads("x")]
SCENARIOS = {
    # a named server, polled with an API token by a script all along
    "idle": Scenario("idle-ann", servers=("second",)),
    "busy-kernel": Scenario("busy-kim", setup=_busy_kernel),
    "renamed-kernel": Scenario("kren-ken", setup=_renamed_kernel),
    "browser": Scenario("web-wes"),
    "frozen": Scenario("frozen-fay"),
    **{
        name: Scenario(f"w{i}-{name.split('-')[0].replace('_', '')}"[:20], setup=_workload(i))
        for i, name in enumerate(WORKLOADS)
    },
}
BROWSER_EXTRA = 6  # seconds the "browser" scenario's tab stays open after the others closed


@dataclass
class Outcome:
    release: datetime  # when the tabs closed (the idle clocks start)
    running: dict[tuple[str, str], bool]  # at the end of the window
    activity: dict[str, dict[str, Any]]  # of the servers still running
    events: list[dict[str, Any]]  # all cull events, admin view
    admin: str  # an admin user's token
    frozen_culled_after_thaw: dict[str, Any] | None = None
    log_offset: int = 0

    def event(self, user: str, server: str = "") -> dict[str, Any] | None:
        for e in self.events:
            if e["user"] == user and e["server"] == server:
                return e
        return None


@pytest.fixture(scope="module")
def outcome(p: Platform) -> Outcome:
    admin = p.add_user("culler-admin", admin=True)

    def prepare(sc: Scenario) -> list[KeepAlive]:
        browser, keeps = Browser(p, sc.user), []
        for server in sc.servers:
            r = p.spawn(sc.user, server=server)
            assert r.status_code in (201, 202), r.text
            p.wait_ready(sc.user, server)
            browser.open_lab(server)
            keeps.append(KeepAlive(browser, server))
        if sc.setup:
            sc.setup(p, sc.user)
        return keeps

    with ThreadPoolExecutor(max_workers=4) as pool:  # fewer at once: each is ready sooner
        keeps = dict(zip(SCENARIOS, pool.map(prepare, SCENARIOS.values()), strict=True))
    for name, sc in SCENARIOS.items():
        for server in sc.servers:
            assert running(p, sc.user, server), f"{name}: culled while a browser had it open"

    # the tabs close; the frozen server stops answering; a script polls with an API token
    release = now()
    for name, ks in keeps.items():
        if name != "browser":
            for k in ks:
                k.close()
    frozen_pid = server_pid(p, SCENARIOS["frozen"].user)
    os.killpg(frozen_pid, signal.SIGSTOP)
    threading.Timer(BROWSER_EXTRA, keeps["browser"][0].close).start()
    stop_polling = threading.Event()

    def poll_with_token() -> None:
        while not stop_polling.wait(1):
            try:
                p.server("idle-ann", "second/api/kernels")
            except requests.RequestException:
                pass

    poller = threading.Thread(target=poll_with_token, daemon=True)
    poller.start()
    try:
        expected = {("idle-ann", "second")} | {
            (SCENARIOS[n].user, "") for n in ("renamed-kernel", "browser")
        }
        wait_for(
            lambda: expected <= {(e["user"], e["server"]) for e in events(p, admin)},
            IDLE + BROWSER_EXTRA + 30,
            "idle servers were not culled",
        )
        # give the others the same chance to be (wrongly) culled
        time.sleep(max(0.0, (release + timedelta(seconds=IDLE + 6) - now()).total_seconds()))
        state = {
            (sc.user, s): running(p, sc.user, s) for sc in SCENARIOS.values() for s in sc.servers
        }
        acts = {}
        for name, sc in SCENARIOS.items():
            if state.get((sc.user, "")) and name != "frozen":
                acts[name] = p.server(sc.user, "api/kqi/activity").json()
    finally:
        stop_polling.set()
        os.killpg(frozen_pid, signal.SIGCONT)
    out = Outcome(release, state, acts, events(p, admin), admin)
    # thawed, the frozen server answers again and is idle: now it goes
    fay = SCENARIOS["frozen"].user
    wait_for(
        lambda: any(e["user"] == fay for e in events(p, admin)),
        30,
        "the thawed idle server was not culled",
    )
    out.frozen_culled_after_thaw = next(e for e in events(p, admin) if e["user"] == fay)
    return out


def test_idle_server_is_stopped_and_the_event_says_idle(outcome: Outcome) -> None:
    # a named server: stopped through the hub API as such, recorded with its name
    assert not outcome.running[("idle-ann", "second")]
    e = outcome.event("idle-ann", "second")
    assert e is not None and e["rule"] == "idle", e
    m = e["measured"]
    assert m["probe"] == "ok" and m["kernels"] == 0 and m["watched_processes"] == []
    assert m["idle_seconds"] >= IDLE and m["no_browser_access_seconds"] >= IDLE
    waited = (parse_time(e["culled_at"]) - outcome.release).total_seconds()
    assert IDLE - KeepAlive.every - 1 <= waited < IDLE + 15, waited  # the tab polled until then
    assert e["reason"].startswith("idle for") and e["server_started"] is not None


def test_server_with_a_busy_kernel_is_kept(outcome: Outcome) -> None:
    user = SCENARIOS["busy-kernel"].user
    assert outcome.running[(user, "")] and outcome.event(user) is None
    assert [k["execution_state"] for k in outcome.activity["busy-kernel"]["kernels"]] == ["busy"]


@pytest.mark.parametrize("name", WORKLOADS)
def test_server_running_a_watched_program_is_kept(outcome: Outcome, name: str) -> None:
    user = SCENARIOS[name].user
    w = next(x for x in workloads(user) if x.name == name)
    assert outcome.running[(user, "")], outcome.event(user)
    assert outcome.event(user) is None
    found = outcome.activity[name]["watched_processes"]
    assert any(w.marker in " ".join(x["cmdline"]) for x in found), found
    assert outcome.activity[name]["kernels"] == []  # nothing but the program keeps it


def test_kernel_renamed_pt_main_thread_does_not_keep_the_server(outcome: Outcome) -> None:
    user = SCENARIOS["renamed-kernel"].user
    assert not outcome.running[(user, "")]
    e = outcome.event(user)
    assert e is not None and e["rule"] == "idle"
    assert e["measured"]["kernels"] == 1 and e["measured"]["watched_processes"] == []


def test_browser_access_resets_the_idle_clock_token_requests_do_not(outcome: Outcome) -> None:
    def last_access(e: dict[str, Any]) -> float:
        """When the culler saw the last browser access, relative to the release."""
        at = parse_time(e["culled_at"]) - timedelta(
            seconds=e["measured"]["no_browser_access_seconds"]
        )
        return (at - outcome.release).total_seconds()

    web = outcome.event(SCENARIOS["browser"].user)
    tok = outcome.event("idle-ann", "second")
    assert web and tok and web["rule"] == tok["rule"] == "idle"
    # the open tab polled until BROWSER_EXTRA after the release: its clock started then
    assert BROWSER_EXTRA - KeepAlive.every - 1 <= last_access(web) <= BROWSER_EXTRA + 1
    # a script polled with an API token every second, all along: the clock did not move
    assert -KeepAlive.every - 1 <= last_access(tok) <= 1
    assert parse_time(tok["culled_at"]) < parse_time(web["culled_at"])


def test_unreachable_server_is_not_idle_culled(p: Platform, outcome: Outcome) -> None:
    user = SCENARIOS["frozen"].user
    assert outcome.running[(user, "")] and outcome.event(user) is None
    log = p.log_path.read_text(errors="replace")
    assert f"probe of {user}/ failed" in log
    assert f"keep {user}/: activity probe failed, idle rule not applied" in log
    e = outcome.frozen_culled_after_thaw
    assert e is not None and e["rule"] == "idle" and e["measured"]["probe"] == "ok"


def test_one_log_line_per_decision(p: Platform, outcome: Outcome) -> None:
    log = p.log_path.read_text(errors="replace")
    assert "cull idle-ann/second: idle: idle for" in log
    busy = SCENARIOS["busy-kernel"].user
    assert f"keep {busy}/: kernel " in log and " is busy; next: no-access in " in log
    lmp = SCENARIOS["lmp"].user
    assert f"keep {lmp}/: watched process lmp (pid " in log


def test_cull_events_users_see_their_own_admins_all(p: Platform, outcome: Outcome) -> None:
    ann = p.token("idle-ann")
    mine = events(p, ann)
    assert [(e["user"], e["server"]) for e in mine] == [("idle-ann", "second")]
    assert events(p, p.token(SCENARIOS["busy-kernel"].user)) == []
    assert p.service("api/cull-events", ann, params={"user": "kren-ken"}).status_code == 403
    every = {e["user"] for e in events(p, outcome.admin)}
    assert {"idle-ann", "kren-ken", "web-wes"} <= every
    assert {e["user"] for e in events(p, outcome.admin, user="kren-ken")} == {"kren-ken"}
    # only the kqi-culler service records culls
    fake = {"user": "idle-ann", "server": "", "rule": "idle"}
    for token in (ann, outcome.admin, p.admin_token):
        r = p.service("api/cull-events", token, method="POST", json=fake)
        assert r.status_code == 403, r.text


def test_pipeline_is_kept_between_its_watched_steps(p: Platform, outcome: Outcome) -> None:
    """A script whose watched step (lmp) outlasts the idle threshold, then runs a step that
    is not watched: the idle clock starts when lmp ended, not at the last browser access."""
    user = "pipe-pia"
    browser = Browser(p, user)
    assert p.spawn(user).status_code in (201, 202)
    p.wait_ready(user)
    browser.open_lab()
    keep = KeepAlive(browser)
    home = p.home(user)
    (home / "in_pipe.sleep").write_text("shell sleep 600\n")
    (home / "pipe.sh").write_text("lmp -in in_pipe.sleep -log none\nsleep 600\n")
    step = Workload("pipeline", "sh pipe.sh", "in_pipe.sleep", "lmp")
    lmp = start_workload(p, user, step)
    keep.close()
    release = now()
    # the lmp step keeps the server past the idle threshold counted from the tab's close
    wait_for(lambda: now() > release + timedelta(seconds=IDLE + 4), IDLE + 10, "clock")
    assert running(p, user)
    assert not any(e["user"] == user for e in events(p, outcome.admin))
    os.kill(lmp, signal.SIGTERM)  # the step ends; the next one (sleep) is not watched
    ended = now()
    wait_for(
        lambda: not p.server(user, "api/kqi/activity").json()["watched_processes"],
        30,
        "lmp still seen after it ended",
    )
    wait_for(lambda: any(e["user"] == user for e in events(p, outcome.admin)), IDLE + 30, "cull")
    e = next(e for e in events(p, outcome.admin) if e["user"] == user)
    after = (parse_time(e["culled_at"]) - ended).total_seconds()
    assert after >= IDLE - 3, after  # the last probe that saw lmp was at most `every` before
    assert e["rule"] == "idle" and e["measured"]["idle_since_ended"] == "lmp", e
    assert re.match(r"idle for [\d.]+ s since lmp ended \(max 12 s\)", e["reason"]), e["reason"]


def _culler_env(p: Platform) -> dict[str, str]:
    return dict(
        os.environ,
        JUPYTERHUB_API_TOKEN=p.admin_token,
        JUPYTERHUB_API_URL=f"http://127.0.0.1:{p.hub_port}/hub/api",
        KQI_PROXY_URL=p.url,
    )


def test_dry_run_logs_decisions_and_stops_nothing(p: Platform, outcome: Outcome) -> None:
    user = SCENARIOS["busy-kernel"].user
    assert running(p, user)
    before = len(events(p, outcome.admin))
    proc = subprocess.Popen(
        [sys.executable, "-m", "culler", "--dry-run", "--max-uptime=1", "--every=1"],
        env=_culler_env(p),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Ctrl-C as from a terminal (the tests may run in the background, SIGINT ignored)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:  # until it made two passes that would cull the server, however slow the machine
        deadline = time.monotonic() + 120
        while sum(f"would cull {user}/" in x for x in lines) < 2:
            assert time.monotonic() < deadline, "".join(lines)
            line = proc.stdout.readline()
            assert line, "".join(lines)  # the culler ended
            lines.append(line)
    finally:
        proc.send_signal(signal.SIGINT)
        out = "".join(lines) + proc.communicate(timeout=30)[0]
    assert "dry run: nothing is stopped" in out
    assert f"would cull {user}/ (dry run): uptime: up " in out, out
    assert out.count(f"would cull {user}/") >= 2  # one line per decision, every pass
    assert running(p, user) and len(events(p, outcome.admin)) == before


def test_once_makes_one_pass_with_a_summary_and_exits(p: Platform, outcome: Outcome) -> None:
    user = SCENARIOS["busy-kernel"].user
    done = subprocess.run(
        [sys.executable, "-m", "culler", "--once", "--dry-run", "--max-uptime=1"],
        env=_culler_env(p),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count(f"would cull {user}/ (dry run): uptime: up ") == 1
    summary = re.search(r"pass over (\d+) servers in [\d.]+ s: (.*)", done.stderr)
    assert summary and int(summary[1]) >= 1 and "would-cull" in summary[2], done.stderr
    assert running(p, user)
    # a hub that cannot be reached: the pass fails, and so does the command
    env = dict(_culler_env(p), JUPYTERHUB_API_URL="http://127.0.0.1:9/hub/api")
    failed = subprocess.run(
        [sys.executable, "-m", "culler", "--once"], env=env, capture_output=True, text=True
    )
    assert failed.returncode == 1 and "pass failed" in failed.stderr, failed.stderr


# -- rules 1-3 with short thresholds, on a platform of their own -----------------------------------
SHORT = """
c.KqiCuller.idle_timeout = 3600
c.KqiCuller.no_access_timeout = 8
c.KqiCuller.max_uptime = 60
"""
LIFETIME_HOURS = 0.01  # 36 s: longer than a spawn + opening JupyterLab on a loaded machine
HUB_FROZEN = 8  # seconds the hub hangs (> every + api_timeout, so some pass must fail)
SLACK = 20  # seconds a cull may come after its threshold on a loaded 2-core machine


@pytest.fixture(scope="module")
def short() -> Iterator[Platform]:
    with private_platform("culler-short", BASE_CONFIG + SHORT) as q:
        yield q


@pytest.fixture(scope="module")
def short_rules(short: Platform) -> dict[str, dict[str, Any]]:
    """Three servers side by side: one never opened, two with a tab open all along (one
    with a lifetime); the event of each, by the rule that should stop it."""
    q = short
    admin = q.add_user("short-admin", admin=True)
    users = {"no-access": "nora", "uptime": "uma", "lifetime": "liv"}
    browsers = {u: Browser(q, u) for u in users.values()}

    def prepare(rule: str) -> KeepAlive | None:
        user = users[rule]
        options = {"lifetime_hours": LIFETIME_HOURS} if rule == "lifetime" else {}
        assert q.spawn(user, options).status_code in (201, 202)
        q.wait_ready(user)
        if rule == "no-access":
            return None  # nobody ever opens it
        browsers[user].open_lab()
        return KeepAlive(browsers[user])

    with ThreadPoolExecutor(max_workers=3) as pool:
        keeps = list(pool.map(prepare, users))
    try:
        # meanwhile the hub hangs for a while: every request to it times out
        pid, mark = culler_pid(q), len(q.log_path.read_bytes())
        os.kill(q.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(HUB_FROZEN)
        finally:
            os.kill(q.proc.pid, signal.SIGCONT)
        wait_for(
            lambda: set(users.values()) <= {e["user"] for e in events(q, admin)},
            90,
            "rules 1-3 did not stop the servers",
        )
    finally:
        for k in keeps:
            if k:
                k.close()
    by_user = {e["user"]: e for e in events(q, admin)}
    result = {rule: by_user[user] for rule, user in users.items()}
    log = q.log_path.read_bytes()[mark:].decode(errors="replace")
    result["hub-failure"] = {"log": log, "pid_before": pid, "pid_after": culler_pid(q)}
    return result


def culler_pid(p: Platform) -> int:
    api = f"http://127.0.0.1:{p.hub_port}/"
    for proc in psutil.process_iter(["cmdline", "environ"]):
        env = proc.info["environ"] or {}
        cmd = proc.info["cmdline"] or []
        if cmd[-2:] == ["-m", "culler"] and env.get("JUPYTERHUB_API_URL", "").startswith(api):
            return proc.pid
    raise AssertionError("no kqi-culler process")


def test_uptime_rule(short_rules) -> None:
    e = short_rules["uptime"]
    assert e["rule"] == "uptime" and e["measured"]["uptime_seconds"] >= 60
    up = parse_time(e["culled_at"]) - parse_time(e["server_started"])
    assert 60 <= up.total_seconds() < 60 + SLACK
    assert e["measured"]["no_browser_access_seconds"] < 5  # the tab was open


def test_no_access_rule(short_rules) -> None:
    e = short_rules["no-access"]
    assert e["rule"] == "no-access" and e["measured"]["access_source"] == "start"
    assert 8 <= e["measured"]["no_browser_access_seconds"] < 8 + SLACK
    assert e["measured"]["uptime_seconds"] < 60


def test_lifetime_rule(short_rules) -> None:
    e = short_rules["lifetime"]
    assert e["rule"] == "lifetime" and e["measured"]["lifetime_hours"] == LIFETIME_HOURS
    lived = parse_time(e["culled_at"]) - parse_time(e["server_started"])
    assert LIFETIME_HOURS * 3600 <= lived.total_seconds() < LIFETIME_HOURS * 3600 + SLACK


def test_culler_survives_the_hub_failing(short_rules) -> None:
    # the hub hung for HUB_FROZEN seconds: passes failed, the loop went on (the rules above
    # still stopped every server on time), in the same process
    failure = short_rules["hub-failure"]
    assert "pass failed, trying again in 2 s" in failure["log"]
    assert failure["pid_after"] == failure["pid_before"]
