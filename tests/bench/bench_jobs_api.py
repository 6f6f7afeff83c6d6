"""Jobs API under load: 10,000 jobs in the real sqlite database, 50 users listing their own jobs
at once through the proxy with their own tokens; and the kqi service's memory when idle.

No anchor: the goals are absolute (p99 of the list call, RSS of the idle service). Latency is
measured on the client side, one sample per request, so it includes the proxy, the service's
token check and the hub look-up of the caller's groups whenever those caches expire.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
import psutil
from sqlalchemy import insert, select

from hub_ext.service.db import Job, make_session_factory

from ..jobs import submit
from ..platform import Platform
from .common import Context, Result, median, percentile, rss_mb

TITLE = "jobs API list: 10,000 jobs, 50 concurrent clients; kqi service RSS idle"
P99_GOAL_S = 0.200
RSS_GOAL_MB = 120.0
CHURN_S = 0.5
FINISHED = ("succeeded", "succeeded", "succeeded", "failed", "stopped", "lost")


def service_pid(p: Platform, timeout: float = 30) -> int:
    """The kqi service: the hub's child whose command line runs ``hub_ext.service``."""
    assert p.proc is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(p.proc.pid).children(recursive=True):
            try:
                if "hub_ext.service" in child.cmdline():
                    return child.pid
            except psutil.Error:
                continue
        time.sleep(0.3)
    raise RuntimeError(f"no kqi service process under the hub:\n{p.log_tail()}")


def idle_rss(pid: int, settle: float = 5.0, samples: int = 5) -> float:
    """RSS once the service has been quiet for ``settle`` seconds (median of a few reads)."""
    time.sleep(settle)
    xs = []
    for _ in range(samples):
        xs.append(rss_mb(pid))
        time.sleep(0.2)
    return median(xs)


def job_rows(users: list[str], n_jobs: int, seed: int = 7) -> list[dict[str, Any]]:
    """Finished jobs of many kinds, owners interleaved, timestamps over the last 90 days.

    Only final statuses: queued or running rows would be picked up by the live job loop."""
    rng = random.Random(seed)
    owners = [users[i % len(users)] for i in range(n_jobs)]
    rng.shuffle(owners)
    now = datetime.now(timezone.utc)
    t = now - timedelta(days=90)
    step = timedelta(days=90) / n_jobs
    rows = []
    training: dict[str, list[int]] = {}
    for i, owner in enumerate(owners, start=1):
        t += step
        status = rng.choice(FINISHED)
        purpose = "inference" if training.get(owner) and rng.random() < 0.3 else "training"
        parents = [rng.choice(training[owner])] if purpose == "inference" else []
        if purpose == "training":
            training.setdefault(owner, []).append(i)
        started = t + timedelta(seconds=rng.uniform(0.5, 30))
        finished = started + timedelta(seconds=rng.uniform(5, 7200))
        exit_code = {"succeeded": 0, "failed": 1, "stopped": -15, "lost": None}[status]
        rows.append(
            {
                "id": i,
                "owner": owner,
                "name": f"{purpose} {rng.choice(['resnet', 'bert', 'mlp', 'lammps'])} #{i}",
                "status": status,
                "purpose": purpose,
                "command": f"python train.py --epochs {rng.randint(1, 50)} --lr 0.001 --seed {i}",
                "profile": rng.choice(["standard", "standard", "large"]),
                "datasets": rng.sample(["mnist", "cifar10", "qm9", "md17", "imagenet-1k"], 2),
                "parents": parents,
                "env": {"SEED": str(i), "WANDB_MODE": "offline"},
                "exit_code": exit_code,
                "message": {
                    "lost": "the job's process vanished",
                    "stopped": f"stopped by {owner}",
                }.get(status, ""),
                "continued_from": None,
                "created_at": t,
                "started_at": started,
                "finished_at": finished,
                "timeout_seconds": rng.choice([None, 3600, 86400]),
                "notify_url": "",
                "runner": "LocalRunner",
                "runner_ref": {"pid": rng.randint(1000, 99999), "start": started.timestamp()},
                "copy_output": False,
                "notified": True,
            }
        )
    return rows


def fill_db(p: Platform, users: list[str], n_jobs: int) -> dict[str, list[int]]:
    """Bulk insert through the service's ORM into the live sqlite file; each user's ids, newest
    first (what GET api/jobs must answer)."""
    engine, sessions = make_session_factory(f"sqlite:///{p.data_root / 'kqi.sqlite'}")
    try:
        with sessions() as s:
            s.execute(insert(Job), job_rows(users, n_jobs))
            s.commit()
            ids: dict[str, list[int]] = {u: [] for u in users}
            for job_id, owner in s.execute(select(Job.id, Job.owner).order_by(Job.id.desc())):
                ids.setdefault(owner, []).append(job_id)
    finally:
        engine.dispose()
    return ids


def check_page(body: bytes, user: str, want: list[int]) -> None:
    jobs = json.loads(body)
    got = [j["id"] for j in jobs]
    owners = {j["owner"] for j in jobs}
    if got != want or owners - {user}:
        raise AssertionError(
            f"{user}: got {len(got)} jobs of {sorted(owners)}, want {len(want)} of [{user}]"
        )


async def churn(p: Platform, token: str, every: float, stop: asyncio.Event) -> int:
    """Submit a tiny job every ``every`` seconds through the API, as another user: each is
    recorded, started and finished by the service (three commits), so the service's cached
    pages keep going stale while the measured users' lists stay the same."""
    n = 0
    while not stop.is_set():
        r = await asyncio.to_thread(submit, p, token, {"command": "true", "name": f"churn {n}"})
        if r.status_code != 201:
            raise AssertionError(f"churn job: HTTP {r.status_code} {r.text[:200]}")
        n += 1
        try:
            await asyncio.wait_for(stop.wait(), every)
        except asyncio.TimeoutError:
            pass
    return n


async def load(
    base: str,
    tokens: dict[str, str],
    expected: dict[str, list[int]],
    per_client: int,
    changes: tuple[Platform, str, float] | None = None,
) -> list[float]:
    """Every user lists their own jobs ``per_client`` times, all users at once, each on its own
    keep-alive connection (as browsers do); the first answer of each is checked in full (and a
    second page), the others must be byte-identical. aiohttp parses in C, so the client costs
    the shared cores little. ``changes``: (platform, token, seconds) for churn()."""
    url = f"{base}/services/kqi/api/jobs"
    connector = aiohttp.TCPConnector(limit=len(tokens))
    timeout = aiohttp.ClientTimeout(total=120)

    async def one(http: aiohttp.ClientSession, user: str, token: str) -> list[float]:
        headers = {"Authorization": f"token {token}"}

        async def get(params: dict[str, str] | None = None) -> tuple[int, bytes]:
            async with http.get(url, headers=headers, params=params) as r:
                return r.status, await r.read()

        status, first = await get()
        if status != 200:
            raise AssertionError(f"{user}: HTTP {status} {first[:200]!r}")
        check_page(first, user, expected[user][:200])  # the default page: 200 newest
        _, page = await get({"limit": "50", "offset": "150"})
        check_page(page, user, expected[user][150:200])
        lat = []
        for _ in range(per_client):
            t0 = time.perf_counter()
            status, body = await get()
            lat.append(time.perf_counter() - t0)
            if status != 200 or body != first:
                raise AssertionError(f"{user}: HTTP {status} {body[:200]!r}")
        return lat

    stop = asyncio.Event()
    writer = asyncio.ensure_future(churn(*changes, stop)) if changes else None
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            per_user = await asyncio.gather(*(one(http, u, t) for u, t in tokens.items()))
    finally:
        stop.set()
        if writer:
            await writer
    return [x for xs in per_user for x in xs]


def run(ctx: Context) -> list[Result]:
    n_users = 10 if ctx.quick else 50
    n_jobs = 2_000 if ctx.quick else 10_000
    per_client = 10 if ctx.quick else 20
    p = Platform(ctx.workdir / "platform", isolation="none")
    # steady: nothing changes while users poll; busy: a job submitted every CHURN_S seconds
    lat: dict[str, dict[str, list[float]]] = {k: {"p50": [], "p99": []} for k in ("steady", "busy")}
    try:
        ctx.log("starting the platform")
        p.start()
        pid = service_pid(p)
        rss_idle = idle_rss(pid)
        ctx.log(f"kqi service pid {pid}: {rss_idle:.1f} MB idle")
        users = [f"bench{i:02d}" for i in range(n_users)]
        tokens = {u: p.add_user(u) for u in users}
        expected = fill_db(p, users, n_jobs)
        ctx.log(f"{n_jobs} jobs of {n_users} users in the database")
        churner = p.add_user("churner")
        rss_idle_full = idle_rss(pid, settle=2.0)
        # all steady runs first: the churn's jobs must not linger into them
        for kind, changes in (("steady", None), ("busy", (p, churner, CHURN_S))):
            for i in range(ctx.runs):
                xs = asyncio.run(load(p.url, tokens, expected, per_client, changes))
                lat[kind]["p50"].append(percentile(xs, 50))
                lat[kind]["p99"].append(percentile(xs, 99))
                ctx.log(
                    f"run {i + 1} {kind}: {len(xs)} requests, p50 "
                    f"{lat[kind]['p50'][-1] * 1000:.0f} ms, p99 "
                    f"{lat[kind]['p99'][-1] * 1000:.0f} ms, max {max(xs) * 1000:.0f} ms"
                )
        rss_after = rss_mb(pid)
    finally:
        p.stop()
    shape = f"{n_jobs:,} jobs, {n_users} clients × {per_client} requests, page of 200"
    results = []
    busy = f", while a job is submitted every {CHURN_S:g} s"
    for kind, label in (("steady", ""), ("busy", busy)):
        p99, p50 = median(lat[kind]["p99"]), median(lat[kind]["p50"])
        results.append(
            Result(
                "jobs_api",
                f"list p99{label}",
                "s",
                p99,
                goal="p99 ≤ 200 ms",
                met=p99 <= P99_GOAL_S,
                detail=f"{shape}; p50 {p50 * 1000:.0f} ms",
                samples=lat[kind],
            )
        )
    results.append(
        Result(
            "jobs_api",
            "kqi service RSS idle",
            "MB",
            rss_idle,
            goal="≤ 120 MB",
            met=rss_idle <= RSS_GOAL_MB,
            detail=f"just started, empty database; {rss_idle_full:.0f} MB idle with "
            f"{n_jobs:,} jobs; {rss_after:.0f} MB after the load",
            samples={"idle": [rss_idle], "idle_full_db": [rss_idle_full], "after": [rss_after]},
        )
    )
    return results
