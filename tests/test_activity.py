"""The server extension's ``api/kqi/activity`` against real servers (bubblewrap isolation):
who may read it, browser access vs. tokens, kernels, watched processes, the forecast."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from culler.rules import parse_time

from .browser import (
    Browser,
    close_terminal,
    execute,
    start_in_terminal,
    start_kernel,
    start_workload,
)
from .platform import Platform, private_platform
from .workloads import RENAME_PT, Workload, workloads, write_files

IDLE = 7200  # long enough that nothing is culled here, and lifetime forecasts come first

CONFIG = f"""
c.NativeAuthenticator.open_signup = True
c.KqiCuller.idle_timeout = {IDLE}
"""


@pytest.fixture(scope="module")
def p() -> Iterator[Platform]:
    if not shutil.which("bwrap") or not shutil.which("lmp"):
        pytest.fail("bubblewrap and lammps must be installed; ./setup-and-test.sh does that")
    with private_platform("activity", CONFIG, isolation="bubblewrap") as q:
        yield q


def activity(p: Platform, user: str) -> dict[str, Any]:
    r = p.server(user, "api/kqi/activity")
    assert r.status_code == 200, r.text
    return r.json()


def start(p: Platform, user: str, options: dict | None = None) -> None:
    p.add_user(user)
    r = p.spawn(user, options)
    assert r.status_code in (201, 202), r.text
    p.wait_ready(user)


def test_only_owner_and_tokens_with_access(p: Platform) -> None:
    start(p, "olga")
    eve = p.add_user("eve")
    url = f"{p.url}/user/olga/api/kqi/activity"
    try:
        assert requests.get(url, timeout=30).status_code == 403  # nobody
        r = requests.get(url, headers={"Authorization": f"token {eve}"}, timeout=30)
        assert r.status_code == 403  # another user
        assert p.server("olga", "api/kqi/activity").status_code == 200  # the owner
        r = requests.get(url, headers={"Authorization": f"token {p.admin_token}"}, timeout=30)
        assert r.status_code == 200  # a token with access to this server (admin service)
        assert set(r.json()) == {
            "started",
            "last_browser_access",
            "kernels",
            "watched_processes",
            "last_watched_process",
            "forecast",
        }
    finally:
        p.stop_server("olga")


def test_browser_access_counts_tokens_do_not(p: Platform) -> None:
    b = Browser(p, "bea")
    start(p, "bea")
    try:
        assert activity(p, "bea")["last_browser_access"] is None
        b.open_lab()  # page load
        seen = activity(p, "bea")["last_browser_access"]
        assert seen is not None

        # API-token requests (CLI, scripts, the culler) and typing through them: not access
        assert p.server("bea", "api/kernels").status_code == 200
        assert p.server("bea", "api/contents").status_code == 200
        assert p.run_in_server("bea", "true")[0] == 0
        assert activity(p, "bea")["last_browser_access"] == seen
        # the browser reading the activity route itself: not access either
        assert b.api("api/kqi/activity").status_code == 200
        assert activity(p, "bea")["last_browser_access"] == seen

        # JupyterLab's polling (cookie + XSRF + the page's token) and a cookie-only request
        for lab_token in (True, False):
            time.sleep(0.05)
            assert b.api("api/sessions", lab_token=lab_token).status_code == 200
            now = activity(p, "bea")["last_browser_access"]
            assert parse_time(now) > parse_time(seen)
            seen = now

        # typing in a terminal: each websocket message from the browser counts
        name = start_in_terminal(p, "bea", "true")
        opened: list[str] = []
        b.type_in_terminal(
            name,
            "echo typed\r",
            connected=lambda: opened.append(activity(p, "bea")["last_browser_access"]),
        )
        typed = activity(p, "bea")
        assert parse_time(opened[0]) > parse_time(seen)  # the websocket upgrade
        assert parse_time(typed["last_browser_access"]) > parse_time(opened[0])  # the keys
        # forecast: idle, counted from the last access (no kernels, no watched process)
        at = parse_time(typed["last_browser_access"]) + timedelta(seconds=IDLE)
        assert typed["forecast"]["rule"] == "idle"
        assert parse_time(typed["forecast"]["at"]) == at
        close_terminal(p, "bea", name)
    finally:
        p.stop_server("bea")


def test_kernel_busy_then_idle(p: Platform) -> None:
    start(p, "kai")
    try:
        kid = start_kernel(p, "kai")
        execute(p, "kai", kid, "import time; time.sleep(4)", wait=False)
        busy = activity(p, "kai")
        [k] = busy["kernels"]
        assert k["id"] == kid and k["execution_state"] == "busy"
        assert busy["forecast"]["rule"] == "no-access"  # not idle while a cell runs
        deadline = time.monotonic() + 30
        while activity(p, "kai")["kernels"][0]["execution_state"] != "idle":
            assert time.monotonic() < deadline, "the cell did not finish"
            time.sleep(0.5)
        done = activity(p, "kai")
        last = parse_time(done["kernels"][0]["last_activity"])
        assert last > parse_time(k["last_activity"])
        assert done["forecast"]["rule"] == "idle"
        assert parse_time(done["forecast"]["at"]) == last + timedelta(seconds=IDLE)
    finally:
        p.stop_server("kai")


def _by_marker(found: list[dict[str, Any]], marker: str) -> list[dict[str, Any]]:
    return [w for w in found if marker in " ".join(w["cmdline"])]


def test_watched_processes_of_this_server(p: Platform) -> None:
    start(p, "wes")
    tag = "wes"
    write_files(p.home("wes"), tag)
    loads = workloads(tag)
    try:
        # a kernel that renamed itself pt_main_thread (torch >= 2.4 does) is still the kernel
        kid = start_kernel(p, "wes")
        assert execute(p, "wes", kid, RENAME_PT)["status"] == "ok"
        kernel_pid = next(
            q.pid
            for q in psutil.process_iter(["cmdline"])
            if kid in " ".join(q.info["cmdline"] or [])
        )
        assert psutil.Process(kernel_pid).name() == "pt_main_thread"
        # a program not on the watch list
        quiet = start_in_terminal(p, "wes", "sleep 600 &")
        started = {w.name: start_workload(p, "wes", w) for w in loads}

        def seen_as_expected(w: Workload, found: list[dict[str, Any]]) -> bool:
            hits = _by_marker(found, w.marker)
            if w.watch == "pt_main_thread":  # once it renamed itself: by its name alone
                return any(h["name"] == "pt_main_thread" for h in hits)
            return any(h["name"].startswith(w.watch) for h in hits)

        found = activity(p, "wes")["watched_processes"]  # all of them, at once
        assert all(seen_as_expected(w, found) for w in loads), found
        # the server reports the pids of its own pid namespace (what its terminals show)
        host = host_pids("wes")
        started = {name: host[pid] for name, pid in started.items()}
        for w in loads:
            assert all(h["pid"] in host for h in _by_marker(found, w.marker))
        pt = [h for w in loads if w.watch == "pt_main_thread" for h in _by_marker(found, w.marker)]
        assert "python" not in pt[0]["cmdline"][0]  # its command line names no watched program
        # nothing else: not the server, not its kernel, not sleep, not other processes here
        pids = {host[w["pid"]] for w in found}
        assert kernel_pid not in pids and not any("sleep" == w["name"] for w in found)
        others = [w for w in found if not any(_by_marker([w], x.marker) for x in loads)]
        # ... except the kernel papermill started for its notebook
        assert all("ipykernel" in " ".join(w["cmdline"]) for w in others), others
        assert len(others) <= 1
        close_terminal(p, "wes", quiet)
    finally:
        p.stop_server("wes")
    # stopping the server ends what it left running, as a pod would (env -i included)
    left = {w: pid for w, pid in started.items() if running(pid)}
    assert left == {}, left


def host_pids(user: str) -> dict[int, int]:
    """The pids of the user's sandbox (its own pid namespace, as the server reports them)
    with the host's pid of each process, from ``NSpid`` in /proc/<pid>/status."""
    ours = os.readlink("/proc/self/ns/pid")  # bubblewrap itself runs here, with the same env
    namespace = next(
        ns
        for q in psutil.process_iter(["cmdline", "environ"])
        if (q.info["environ"] or {}).get("JUPYTERHUB_USER") == user
        and "jupyterhub-singleuser" in " ".join(q.info["cmdline"] or [])
        and (ns := os.readlink(f"/proc/{q.pid}/ns/pid")) != ours
    )
    found = {}
    for pid in psutil.pids():
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") != namespace:
                continue
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        nspids = next(x for x in status.splitlines() if x.startswith("NSpid:")).split()[1:]
        found[int(nspids[-1])] = int(nspids[0])
    return found


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_forecast_lifetime(p: Platform) -> None:
    start(p, "liv", {"lifetime_hours": 0.5})
    try:
        a = activity(p, "liv")
        hub_started = parse_time(p.api("GET", "users/liv").json()["servers"][""]["started"])
        assert a["forecast"]["rule"] == "lifetime"
        ahead = (parse_time(a["forecast"]["at"]) - hub_started).total_seconds()
        assert 1800 <= ahead < 1800 + 30  # from the server's start, as the culler counts it
    finally:
        p.stop_server("liv")
