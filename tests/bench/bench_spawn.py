"""Spawn benchmark: a server with 5 datasets, a parent and an inference job bound under /kqi
(bubblewrap, as in production local mode) against a plain SimpleLocalProcessSpawner spawn.

Two real platforms run side by side; both start the same ``jupyterhub-singleuser`` with the
same default URL (/lab) and a home under their data root. The time is what the user waits
for: from the POST to the hub until ``GET /user/<name>/api/status`` answers 200 through the
proxy. Spawns alternate between ours and the anchor so load from elsewhere hits both alike.
"""

from __future__ import annotations

import re
import time

import requests

from ..jobs import add_job
from ..platform import Platform
from .common import Context, Result, median

TITLE = "spawn with 5 datasets + parent + inference vs plain SimpleLocalProcessSpawner"
USER = "bench"
POLL = 0.02  # seconds between status polls
GOAL = 1.1

ANCHOR_CONFIG = """
c.JupyterHub.spawner_class = "jupyterhub.spawner.SimpleLocalProcessSpawner"
c.Spawner.default_url = "/lab"  # as KqiLocalSpawner
c.SimpleLocalProcessSpawner.home_dir_template = {home!r}
# the same arguments KqiLocalSpawner.get_args adds
import json, os, shutil
c.Spawner.args = [
    "--ServerApp.terminado_settings="
    + json.dumps({{"shell_command": [shutil.which("bash") or "/bin/sh"]}})
] + (["--ServerApp.allow_root=True"] if os.geteuid() == 0 else [])
"""


def _prepare_ours(p: Platform, big: int) -> dict:
    """5 datasets (one with ``big`` small files), two earlier jobs; the spawn options."""
    names = []
    for i in range(4):
        name = f"ds{i}"
        p.add_dataset(name, {f"part{j}.csv": f"{i},{j}\n" for j in range(5)})
        names.append(name)
    p.add_dataset("many", {f"f/{j:05d}.txt": f"{j}\n" for j in range(big)})
    names.append("many")
    parent = add_job(p, USER, "training", files={"model.pt": "weights"})
    inference = add_job(p, USER, "inference", files={"pred.csv": "1,2\n"})
    return {"datasets": names, "parent": parent, "inference": inference}


def _spawn_time(p: Platform, options: dict | None, timeout: float = 120) -> float:
    """Seconds from the POST to the hub until the server answers api/status through the proxy."""
    url = f"{p.url}/user/{USER}/api/status"
    headers = {"Authorization": f"token {p.token(USER)}"}
    with requests.Session() as s:
        t0 = time.perf_counter()
        r = p.spawn(USER, options)
        if r.status_code not in (201, 202):
            raise RuntimeError(f"spawn refused: {r.status_code} {r.text}\n{p.log_tail(30)}")
        deadline = t0 + timeout
        while time.perf_counter() < deadline:
            try:
                # no redirects: before the route exists the hub answers (424 or a redirect)
                r = s.get(url, headers=headers, timeout=5, allow_redirects=False)
                if r.status_code == 200 and "started" in r.json():
                    return time.perf_counter() - t0
            except (requests.RequestException, ValueError):
                pass
            time.sleep(POLL)
    raise RuntimeError(f"server not up after {timeout} s:\n{p.log_tail()}")


#: hub log lines that mark the phases of a spawn (JupyterHub's and jupyter-server's own)
MARKS = {
    "begin": f"Creating oauth client jupyterhub-user-{USER}",  # before apply_user_options
    "process": "Spawning ",  # LocalProcessSpawner.start, just before Popen
    "listening": "is running at:",  # the server's own log, once it listens
    "seen": f"User {USER} took",  # the hub found it up
}
STAMP = re.compile(r"\d\d:\d\d:\d\d\.\d{3}")


def _phases(log: str) -> dict[str, float]:
    """Seconds between the marks of one spawn's hub log: before the process, the hub's lag."""
    at: dict[str, float] = {}
    for line in log.splitlines():
        for mark, text in MARKS.items():
            m = STAMP.search(line)
            if mark not in at and text in line and m:
                h, mi, sec = m.group().split(":")
                at[mark] = int(h) * 3600 + int(mi) * 60 + float(sec)
    if len(at) < len(MARKS):
        return {}
    return {"before": at["process"] - at["begin"], "lag": at["seen"] - at["listening"]}


def _measure(p: Platform, options: dict | None, phases: dict[str, list[float]]) -> float:
    """One timed spawn and stop; its phases from the hub log go to ``phases``."""
    offset = p.log_path.stat().st_size
    took = _spawn_time(p, options)
    p.stop_server(USER)
    with open(p.log_path, "rb") as f:
        f.seek(offset)
        for k, v in _phases(f.read().decode(errors="replace")).items():
            phases.setdefault(k, []).append(v)
    return took


def _check_mounts(p: Platform, options: dict) -> str:
    """Ours really binds the inputs: layout says present, contents API lists them."""
    layout = p.server(USER, "api/kqi/layout").json()
    missing = [b["target"] for b in layout["bindings"] if not b["present"]]
    if missing or layout["isolation"] != "bubblewrap":
        raise RuntimeError(f"mounts wrong: isolation {layout['isolation']}, missing {missing}")
    listed = {c["name"] for c in p.server(USER, "api/contents/input").json()["content"]}
    if listed != set(options["datasets"]):
        raise RuntimeError(f"~/input lists {sorted(listed)}, not {options['datasets']}")
    many = p.server(USER, "api/contents/input/many/f").json()["content"]
    for name in ("parent", "inference"):
        if p.server(USER, f"api/contents/{name}").status_code != 200:
            raise RuntimeError(f"~/{name} is not there")
    return f"{len(layout['bindings'])} bindings, input/many/f has {len(many)} files"


def run(ctx: Context) -> list[Result]:
    big = 200 if ctx.quick else 2000
    platforms: dict[str, Platform] = {}
    try:
        for kind in ("ours", "anchor"):
            base = ctx.workdir / kind
            extra = ""
            if kind == "anchor":
                home = str(base / "data" / "users" / "{username}" / "home")
                extra = ANCHOR_CONFIG.format(home=home)
            p = platforms[kind] = Platform(base, extra_config=extra)
            ctx.log(f"starting the {kind} platform")
            p.start()
            p.add_user(USER)
        options = _prepare_ours(platforms["ours"], big)
        opts = {"ours": options, "anchor": None}

        ctx.log("warm-up spawns")
        check = ""
        for kind, p in platforms.items():
            _spawn_time(p, opts[kind])
            if kind == "ours":
                check = _check_mounts(p, options)
            p.stop_server(USER)

        samples: dict[str, list[float]] = {"ours": [], "anchor": []}
        phases: dict[str, dict[str, list[float]]] = {"ours": {}, "anchor": {}}
        for i in range(ctx.runs):
            order = ("ours", "anchor") if i % 2 == 0 else ("anchor", "ours")
            for kind in order:
                samples[kind].append(_measure(platforms[kind], opts[kind], phases[kind]))
            ctx.log(
                f"run {i + 1}/{ctx.runs}: ours {samples['ours'][-1]:.2f} s, "
                f"anchor {samples['anchor'][-1]:.2f} s"
            )
        ours, anchor = median(samples["ours"]), median(samples["anchor"])

        def ph(kind: str, name: str) -> float | None:
            xs = phases[kind].get(name)
            return median(xs) if xs else None

        lag = {k: ph(k, "lag") for k in platforms}
        lag_text = ", ".join(f"{k} {v:.2f} s" for k, v in lag.items() if v is not None)
        results = [
            Result(
                bench="spawn",
                metric="POST to api/status 200 (5 datasets + parent + inference)",
                unit="s",
                ours=ours,
                anchor=anchor,
                anchor_name="SimpleLocalProcessSpawner",
                goal=f"≤ {GOAL}×",
                met=ours <= GOAL * anchor,
                detail=f"bubblewrap; {check}; hub sees the listening server after: {lag_text}",
                samples=samples,
            )
        ]
        before = {k: ph(k, "before") for k in platforms}
        if before["ours"] is not None:
            results.append(
                Result(
                    bench="spawn",
                    metric="in the hub before the server process starts (plan, mounts)",
                    unit="s",
                    ours=before["ours"],
                    anchor=before["anchor"],
                    anchor_name="SimpleLocalProcessSpawner",
                    goal="(info)",
                    detail="hub log: 'Creating oauth client' to 'Spawning'",
                    samples={k: v.get("before", []) for k, v in phases.items()},
                )
            )
        return results
    finally:
        for p in platforms.values():
            p.stop()
