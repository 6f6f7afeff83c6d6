"""The cull rules as a pure function, with an injected clock (DESIGN.md, "Cull rules")."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from jupyterhub.app import JupyterHub
from traitlets.config import Config

from culler.app import hub_settings, proxy_origin, server_rules_json
from culler.rules import (
    DEFAULT_WATCH,
    Activity,
    Kernel,
    LastWatched,
    ServerRecord,
    Thresholds,
    WatchedProcess,
    decide,
    human,
    isoformat,
    parse_lifetime_hours,
    parse_time,
    programs,
    watch_match,
)

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
TH = Thresholds(max_uptime=1000, no_access_timeout=500, idle_timeout=100)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def server(**kw) -> ServerRecord:
    return ServerRecord(user="ann", **{"started": T0, **kw})


def activity(access: float | None = None, kernels=(), procs=()) -> Activity:
    return Activity(
        started=at(1),
        last_browser_access=None if access is None else at(access),
        kernels=tuple(kernels),
        watched_processes=tuple(procs),
    )


def test_idle_server_is_culled_when_idle_timeout_has_passed() -> None:
    act = activity(access=10)
    before = decide(at(109), TH, server(), act)
    assert not before.cull and before.rule == "idle" and before.at == at(110)
    d = decide(at(110), TH, server(), act)
    assert d.cull and d.rule == "idle" and d.at == at(110)
    assert d.measured["idle_seconds"] == 100 and d.measured["no_browser_access_seconds"] == 100
    assert d.measured["kernels"] == 0 and d.measured["watched_processes"] == []


def test_never_opened_server_counts_from_its_start() -> None:
    d = decide(at(101), TH, server(), activity())
    assert d.cull and d.rule == "idle" and d.measured["access_source"] == "start"
    assert not decide(at(100.5), TH, server(), activity()).cull


@pytest.mark.parametrize("state", ["busy", "restarting"])
def test_busy_kernel_keeps_server_forecast_falls_to_no_access(state: str) -> None:
    d = decide(at(400), TH, server(), activity(access=0, kernels=[Kernel("k1", state, at(5))]))
    assert not d.cull and d.rule == "no-access" and d.at == at(500)
    assert f"kernel k1 is {state}" in d.why and d.measured["busy_kernels"] == 1


def test_kernel_nobody_connected_to_counts_as_idle() -> None:
    # started through the REST API and never connected: it stays "starting" and runs no code
    act = activity(access=0, kernels=[Kernel("k1", "starting", at(5))])
    assert decide(at(150), TH, server(), act).rule == "idle"
    assert not decide(
        at(100), TH, server(), activity(access=0, kernels=[Kernel("k1", "starting", at(50))])
    ).cull


def test_recent_kernel_activity_delays_idle() -> None:
    act = activity(access=0, kernels=[Kernel("k1", "idle", at(50)), Kernel("k2", "dead")])
    assert not decide(at(120), TH, server(), act).cull
    d = decide(at(150), TH, server(), act)
    assert d.cull and d.rule == "idle" and d.at == at(150) and d.measured["kernels"] == 2


def test_watched_process_keeps_server() -> None:
    proc = WatchedProcess(42, "lmp", ("lmp", "-in", "in.lj"))
    d = decide(at(499), TH, server(), activity(access=0, procs=[proc]))
    assert not d.cull and "watched process lmp (pid 42)" in d.why
    assert d.measured["watched_processes"] == ["lmp[42]"]
    # it does not keep it from rule 2
    d = decide(at(500), TH, server(), activity(access=0, procs=[proc]))
    assert d.cull and d.rule == "no-access"


def test_failed_probe_never_idle_culls_and_no_access_uses_hub_activity() -> None:
    d = decide(at(450), TH, server(last_activity=at(100)), None)
    assert not d.cull and d.measured["probe"] == "failed"
    assert "probe failed" in d.why and d.rule == "no-access" and d.at == at(600)
    d = decide(at(600), TH, server(last_activity=at(100)), None)
    assert d.cull and d.rule == "no-access" and d.measured["access_source"] == "hub"
    # without hub activity: from the start
    d = decide(at(500), TH, server(), None)
    assert d.cull and d.rule == "no-access" and d.measured["access_source"] == "start"


def test_uptime_is_the_first_rule_that_holds() -> None:
    busy = [Kernel("k", "busy", at(995))]
    d = decide(at(1000), TH, server(), activity(access=999, kernels=busy))
    assert d.cull and d.rule == "uptime" and d.measured["uptime_seconds"] == 1000
    # when several hold, the order of DESIGN.md decides: uptime before no-access and idle
    d = decide(at(2000), TH, server(lifetime_hours=0.01), activity(access=0))
    assert d.cull and d.rule == "uptime"
    d = decide(at(700), TH, server(lifetime_hours=0.01), activity(access=0))
    assert d.cull and d.rule == "no-access"


def test_lifetime() -> None:
    rec = server(lifetime_hours=0.05)  # 180 s
    busy = [Kernel("k", "busy", at(170))]
    d = decide(at(179), TH, rec, activity(access=178, kernels=busy))
    assert not d.cull and d.rule == "lifetime" and d.at == at(180)
    d = decide(at(180), TH, rec, activity(access=179, kernels=busy))
    assert d.cull and d.rule == "lifetime" and d.measured["lifetime_hours"] == 0.05


def test_forecast_takes_the_earliest_rule() -> None:
    d = decide(at(10), TH, server(lifetime_hours=1), activity(access=5))
    assert (d.rule, d.at) == ("idle", at(105))
    d = decide(at(10), TH, server(), activity(access=5, kernels=[Kernel("k", "busy")]))
    assert (d.rule, d.at) == ("no-access", at(505))
    f = d.forecast()
    assert f == {"rule": "no-access", "at": "2025-01-01T00:08:25.000000Z"}


@pytest.mark.parametrize(
    "name, cmdline, hit",
    [
        ("python3", ["python3", "script.py"], "python"),
        ("python3.11", ["/usr/bin/python3.11", "x.py"], "python"),
        ("python", ["python"], "python"),
        ("papermill", ["/venv/bin/python", "/venv/bin/papermill", "a.ipynb"], "papermill"),
        ("python3", ["python3", "-m", "papermill", "a.ipynb"], "python"),
        ("papermill", ["papermill", "a.ipynb", "b.ipynb"], "papermill"),
        ("lmp", ["lmp", "-in", "in.lj"], "lmp"),
        ("lmp_serial", ["lmp_serial"], "lmp_serial"),
        ("x", ["/opt/lammps/bin/lmp_mpi", "-in", "in.lj"], "lmp_mpi"),  # by argv[0]
        ("pt_main_thread", ["trainer", "--epochs", "3"], "pt_main_thread"),
        # words that only mention a program do not run it: its own process is watched
        ("tmux: server", ["tmux", "new", "-d", "python3 busy.py"], None),
        ("bash", ["bash", "-c", "python3 -u train.py; gzip out"], None),
        ("mpirun", ["mpirun", "-np", "4", "lmp_mpi", "-in", "in.lj"], None),
        ("less", ["less", "lmp.log"], None),
        ("vim", ["vim", "train.py"], None),
        ("bash", ["/bin/bash"], None),
        ("pythonista", ["pythonista"], None),
        ("ipython", ["ipython"], None),
        ("sleep", ["sleep", "600"], None),
    ],
)
def test_watch_list_matches_name_and_programs(name, cmdline, hit) -> None:
    assert watch_match(name, cmdline, DEFAULT_WATCH) == hit


@pytest.mark.parametrize(
    "cmdline, found",
    [
        (["python3", "-m", "papermill", "in.ipynb"], ["python3", "papermill"]),
        (["python3", "-mpapermill"], ["python3", "papermill"]),
        (["/v/bin/python3", "-u", "-X", "dev", "/v/bin/papermill", "a"], ["python3", "papermill"]),
        (["python3", "-W", "ignore", "train.py", "lmp"], ["python3", "train.py"]),
        (["python3", "-c", "import lmp"], ["python3"]),
        (["sh", "-c", "cd /x && exec lmp -in 'a b'"], ["sh"]),
        (["tmux", "new", "-d", "python3 busy.py"], ["tmux"]),
        ([], []),
    ],
)
def test_programs_of_a_command_line(cmdline, found) -> None:
    assert programs(cmdline) == found


def test_watch_list_of_scripts_matches_an_interpreters_script() -> None:
    watch = ("papermill",)
    assert watch_match("python3", ["python3", "/v/bin/papermill", "a"], watch) == "papermill"
    assert watch_match("python3", ["python3", "-m", "papermill", "a"], watch) == "papermill"
    assert watch_match("python3", ["python3", "x.py", "papermill"], watch) is None


def test_idle_clock_starts_when_the_last_watched_process_ended() -> None:
    """A pipeline's watched step ran until 300 (browser last at 10): idle counts from 300."""
    act = Activity(at(1), at(10), (), (), LastWatched("lmp", at(300)))
    kept = decide(at(399), TH, server(), act)
    assert not kept.cull and (kept.rule, kept.at) == ("idle", at(400))
    d = decide(at(400), TH, server(), act)
    assert d.cull and d.rule == "idle" and d.measured["idle_since_ended"] == "lmp"
    assert d.why.startswith("idle for 100 s since lmp ended (max 100 s)"), d.why
    # an older sighting than the last browser access changes nothing
    old = Activity(at(1), at(10), (), (), LastWatched("lmp", at(5)))
    d = decide(at(110), TH, server(), old)
    assert d.cull and "idle_since_ended" not in d.measured and "since" not in d.why


def test_last_watched_process_round_trips_through_the_route() -> None:
    act = Activity(at(1), None, (), (), LastWatched("lmp", at(300)))
    wire = json.loads(json.dumps(act.to_dict()))
    assert wire["last_watched_process"] == {"name": "lmp", "seen": isoformat(at(300))}
    assert Activity.from_dict(wire) == act
    assert Activity.from_dict({**wire, "last_watched_process": None}).last_watched_process is None


@pytest.mark.parametrize(
    "value, hours",
    [(2, 2.0), ("0.5", 0.5), (None, None), ("", None), ("x", None), (True, None), (-1, None)],
)
def test_lifetime_hours_from_spawn_options(value, hours) -> None:
    assert parse_lifetime_hours(value) == hours


def test_activity_round_trip_and_times() -> None:
    act = Activity(
        started=at(1),
        last_browser_access=at(2.5),
        kernels=(Kernel("k", "idle", at(3)),),
        watched_processes=(WatchedProcess(7, "lmp", ("lmp",)),),
    )
    assert Activity.from_dict(json.loads(json.dumps(act.to_dict()))) == act
    assert parse_time("2025-01-01T00:00:01.5Z") == at(1.5)
    assert parse_time("2025-01-01T00:00:01Z") == at(1)
    assert parse_time("2025-01-01T09:00:01+09:00") == at(1)
    assert isoformat(at(1)) == "2025-01-01T00:00:01.000000Z"
    with pytest.raises(KeyError):
        Activity.from_dict({"kernels": [{"id": "k"}]})


def test_settings_from_the_hub_config_and_its_command_line() -> None:
    """kqi_hub_config.py sets c.KqiCuller.*; ``kqi-hub --KqiCuller.x=...`` arrives as text."""
    hub = JupyterHub()
    hub.parse_command_line(
        ["--KqiCuller.idle_timeout=7", "--KqiCuller.watch=['lmp']", "--KqiCuller.dry_run=True"]
    )
    config = Config(hub.config)
    config.KqiCuller.every = 2.0
    s = hub_settings(config)
    assert (s["idle_timeout"], s["watch"], s["every"]) == (7.0, ["lmp"], 2.0)
    assert s["max_uptime"] == 60 * 86400 and s["dry_run"] is True
    rules = Thresholds.from_dict(json.loads(server_rules_json(config)))
    assert rules == Thresholds(60 * 86400, 30 * 86400, 7.0, ("lmp",))
    assert Thresholds.from_dict({}) == Thresholds()


def test_proxy_origin() -> None:
    assert proxy_origin("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    assert proxy_origin("http://0.0.0.0:8080/base/") == "http://127.0.0.1:8080"
    assert proxy_origin("http://:8000/") == "http://127.0.0.1:8000"


def test_durations_in_log_lines() -> None:
    assert [human(x) for x in (12, 90 * 60, 36 * 3600, 30 * 86400)] == [
        "12 s",
        "90 min",
        "36 h",
        "30 d",
    ]
