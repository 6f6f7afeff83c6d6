"""One culler pass over 1,000 running servers, against jupyterhub-idle-culler and the floor.

A real hub + proxy (1,000 routes) and one process answering every server's activity route
(tests/bench/simulated.py) after the time a real JupyterLab server's route takes, measured
first in the same run. Each culler runs one pass as its own process (ours: ``python -m culler
--once``; idle-culler: its ``cull_idle`` once). The hub's own request counters
(``/hub/metrics``) count the requests each pass makes to the hub API; ``wait4`` gives each
process's peak RSS.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from tests.platform import Platform, free_port

from .common import REPO, Context, Result, env_without_hub, median

TITLE = "culler pass over 1,000 running servers (simulated) vs jupyterhub-idle-culler"
N = 1000
CONCURRENCY = 10  # both cullers' default

SIM_CONFIG = """
import sys
sys.path.insert(0, {repo!r})
from tests.bench.simulated import SimulatedSpawner
c.JupyterHub.spawner_class = SimulatedSpawner
c.SimulatedSpawner.sim_url = {sim_url!r}
c.JupyterHub.concurrent_spawn_limit = 0
c.JupyterHub.last_activity_interval = 3600
c.JupyterHub.cleanup_servers = False
c.Spawner.poll_interval = 3600
c.KqiCuller.every = 86400  # the hub's own culler: one pass at start (no servers), then asleep
"""

IDLE_CULLER = """
import asyncio, logging, sys, time
from jupyterhub_idle_culler import cull_idle
url, token, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3])
logging.basicConfig(level=logging.INFO)
t0 = time.monotonic()
asyncio.run(cull_idle(url, token, inactive_limit=86400, logger=logging.getLogger("idle-culler"),
                      concurrency=concurrency))
print(f"ELAPSED {time.monotonic() - t0:.6f}")
"""


def hub_requests(p: Platform) -> float:
    """Requests the hub has answered so far, by its own Prometheus counters (the metrics
    requests themselves left out)."""
    headers = {"Authorization": f"token {p.admin_token}"}
    text = requests.get(f"{p.url}/hub/metrics", headers=headers, timeout=60).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("jupyterhub_request_duration_seconds_count{") and (
            "MetricsHandler" not in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def run_measured(cmd: list[str], env: dict[str, str], log: Path) -> tuple[str, float, float]:
    """Run a culler to its end; its stdout, peak RSS (MB) and CPU seconds from wait4."""
    with open(log, "ab") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, cwd=REPO)
        out = proc.stdout.read().decode() if proc.stdout else ""
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} exited {proc.returncode}; see {log}")
    return out, usage.ru_maxrss / 1000, usage.ru_utime + usage.ru_stime  # KB -> MB


def real_route_time(ctx: Context) -> float:
    """Round trip of a real server's activity route through the proxy (median of 30)."""
    p = Platform(ctx.workdir / "real")
    try:
        p.start()
        p.add_user("real")
        assert p.spawn("real").status_code in (201, 202)
        p.wait_ready("real")
        url = f"{p.url}/user/real/api/kqi/activity"
        headers = {"Authorization": f"token {p.admin_token}"}
        times = []
        for _ in range(31):
            t0 = time.perf_counter()
            r = requests.get(url, headers=headers, timeout=30)
            times.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
        return median(times[1:])
    finally:
        p.stop()


def start_servers(p: Platform, n: int) -> None:
    names = [f"u{i:04d}" for i in range(n)]
    headers = {"Authorization": f"token {p.admin_token}"}
    for i in range(0, n, 100):  # the hub adds users slowly (~70 ms each): in batches
        batch = {"usernames": names[i : i + 100]}
        r = requests.post(f"{p.url}/hub/api/users", json=batch, headers=headers, timeout=600)
        assert r.status_code == 201, r.text

    def spawn(name: str) -> None:
        r = requests.post(f"{p.url}/hub/api/users/{name}/server", headers=headers, timeout=600)
        assert r.status_code in (201, 202), r.text

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(spawn, names))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        r = requests.get(
            f"{p.url}/hub/api/users?state=ready&limit=1",
            headers={
                "Authorization": f"token {p.admin_token}",
                "Accept": "application/jupyterhub-pagination+json",
            },
            timeout=60,
        )
        if r.json()["_pagination"]["total"] >= n:
            return
        time.sleep(1)
    raise RuntimeError(f"only {r.json()['_pagination']['total']} of {n} servers ready")


def run(ctx: Context) -> list[Result]:
    n = 200 if ctx.quick else N
    ctx.log("a real server's activity route, for the simulated servers' answer time")
    delay = real_route_time(ctx)
    ctx.log(f"real route: {delay * 1000:.1f} ms")
    sim_port = free_port()
    p = Platform(ctx.workdir / "sim", isolation="none")
    sim = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.simulated", str(sim_port), str(delay), p.admin_token],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    (p.base / "kqi_hub_config.py").write_text(
        (p.base / "kqi_hub_config.py").read_text()
        + SIM_CONFIG.format(repo=str(REPO), sim_url=f"http://127.0.0.1:{sim_port}")
    )
    ours_wall, ours_req, ours_rss, ic_wall, ic_req, ic_rss = ([] for _ in range(6))
    try:
        p.start()
        ctx.log(f"starting {n} simulated servers")
        start_servers(p, n)
        probe = f"{p.url}/user/u0000/api/kqi/activity"
        headers = {"Authorization": f"token {p.admin_token}"}
        rtts = []
        session = requests.Session()  # kept alive: the shortest round trip, the strictest floor
        for _ in range(51):
            t0 = time.perf_counter()
            r = session.get(probe, headers=headers, timeout=30)
            rtts.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
        rtt = median(rtts[1:])
        hub_api = f"http://127.0.0.1:{p.hub_port}/hub/api"
        env = env_without_hub(
            JUPYTERHUB_API_URL=hub_api,
            JUPYTERHUB_API_TOKEN=p.admin_token,
            KQI_PROXY_URL=p.url,
        )
        ours_cmd = [sys.executable, "-m", "culler", "--once", f"--concurrency={CONCURRENCY}"]
        ic_cmd = [sys.executable, "-c", IDLE_CULLER, hub_api, p.admin_token, str(CONCURRENCY)]
        for i in range(ctx.runs + 1):  # the first of each is a warm-up
            before = hub_requests(p)
            _, rss, cpu = run_measured(ours_cmd, env, ctx.workdir / "culler.log")
            after = hub_requests(p)
            text = (ctx.workdir / "culler.log").read_text()
            m = re.findall(r"pass over (\d+) servers in ([\d.]+) s: (.*)", text)[-1]
            if int(m[0]) != n or f"{n} kept" not in m[2]:
                raise RuntimeError(f"our pass judged wrongly: {m}")
            if i:
                ours_wall.append(float(m[1]))
                ours_req.append(after - before)
                ours_rss.append(rss)
            before = hub_requests(p)
            out, rss, ic_cpu = run_measured(ic_cmd, env, ctx.workdir / "idle-culler.log")
            after = hub_requests(p)
            if i:
                ic_wall.append(float(out.split("ELAPSED")[1]))
                ic_req.append(after - before)
                ic_rss.append(rss)
            ctx.log(
                f"run {i}: ours {m[1]} s ({cpu:.2f} s CPU), idle-culler "
                f"{out.split('ELAPSED')[1].strip()} s ({ic_cpu:.2f} s CPU)"
            )
        if os.environ.get("KQI_BENCH_PROFILE"):  # where our pass spends its time
            prof = [sys.executable, "-m", "pyinstrument", "-o", str(ctx.workdir / "culler.prof")]
            run_measured([*prof, "-m", *ours_cmd[2:]], env, ctx.workdir / "culler.log")
            ctx.log(f"profile of our pass: {ctx.workdir / 'culler.prof'}")
    finally:
        p.stop()
        sim.kill()
        sim.wait()
    floor = n * rtt / CONCURRENCY
    wall = median(ours_wall)
    bench = f"culler pass, {n:,} servers"
    return [
        Result(
            bench,
            "wall vs physical floor",
            "s",
            wall,
            floor,
            f"floor = {n}×{rtt * 1000:.1f} ms/{CONCURRENCY}",
            "≤ 1.5× floor and ≤ 10 s",
            wall <= 1.5 * floor and wall <= 10,
            f"a real server's route: {delay * 1000:.1f} ms (the simulated answer time)",
            {"ours": ours_wall},
        ),
        Result(
            bench,
            "wall vs idle-culler (it probes no server)",
            "s",
            wall,
            median(ic_wall),
            "jupyterhub-idle-culler 2.0.0",
            "—",
            None,
            samples={"ours": ours_wall, "anchor": ic_wall},
        ),
        Result(
            bench,
            "hub API requests per pass",
            "",
            median(ours_req),
            median(ic_req),
            "jupyterhub-idle-culler 2.0.0",
            "≤ 1.05×",
            median(ours_req) <= 1.05 * median(ic_req),
            samples={"ours": ours_req, "anchor": ic_req},
        ),
        Result(
            f"culler RSS at {n:,} servers",
            "peak RSS of the pass",
            "MB",
            median(ours_rss),
            None,
            "",
            "≤ 80 MB",
            median(ours_rss) <= 80,
            f"jupyterhub-idle-culler's: {median(ic_rss):.0f} MB",
            {"ours": ours_rss, "idle-culler": ic_rss},
        ),
    ]
