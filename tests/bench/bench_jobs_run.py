"""Job run benchmark: a tiny notebook as a job, ours (papermill mode, bubblewrap, supervised
process) against jupyter-scheduler 2.12.1 (PyPI) in a real jupyter-server from .venv-anchors.

Both get the same notebook (two code cells, python3 kernel, one writes a small file, one
prints a marker). The clock starts before the submission request (ours includes building the
spec and code archive, as ``kqi submit`` does; the anchor copies the file on the server) and
both sides are polled every 10 ms for the job's status: until "running" / IN_PROGRESS and until
"succeeded" / COMPLETED. Each side then must show the executed output notebook with the
marker. Runs alternate between ours and the anchor so load from elsewhere hits both alike.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import secrets
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import psutil
import requests

from server_ext.submission import build_submission

from ..platform import Platform, free_port
from .common import ANCHOR_VENV, Context, Result, env_without_hub, median

TITLE = "tiny notebook job: submit → running and end to end vs jupyter-scheduler"
USER = "bench"
POLL = 0.01  # seconds between status polls
NB_NAME = "tiny.ipynb"
MARKER = "kqi-bench-42"
ANCHOR = "jupyter-scheduler 2.12.1"
CELLS = [
    "from pathlib import Path\nPath('result.txt').write_text('forty-two')",
    f"print('{MARKER.rsplit('-', 1)[0]}-' + str(6 * 7))",
]


def write_notebook(path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in CELLS]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))


def check_output(text: str, where: str) -> None:
    """The executed notebook: the marker printed by the second cell."""
    nb = nbformat.reads(text, as_version=4)
    outs = [o.get("text", "") for c in nb.cells for o in c.get("outputs", [])]
    if not any(MARKER in t for t in outs):
        raise RuntimeError(f"{where}: output notebook lacks the cell output {MARKER!r}: {outs}")


def poll_until(
    get: Callable[[], str], running: set[str], done: set[str], failed: set[str], t0: float
) -> tuple[float, float]:
    """(seconds until a running-or-later status, seconds until done) since ``t0``."""
    t_run: float | None = None
    deadline = t0 + 180
    status = ""
    while time.perf_counter() < deadline:
        status = get()
        now = time.perf_counter() - t0
        if t_run is None and status in running | done | failed:
            t_run = now
        if status in done:
            return t_run, now
        if status in failed:
            raise RuntimeError(f"job ended {status}")
        time.sleep(POLL)
    raise TimeoutError(f"job still {status!r} after 180 s")


# -- ours ---------------------------------------------------------------------------------------
class Ours:
    def __init__(self, base: Path):
        self.p = Platform(base / "ours")
        self.project = base / "project"
        write_notebook(self.project / NB_NAME)
        self.http = requests.Session()

    def start(self) -> None:
        self.p.start()
        self.token = self.p.add_user(USER)
        self.http.headers["Authorization"] = f"token {self.token}"

    def run_once(self) -> tuple[float, float]:
        url = f"{self.p.url}/services/kqi/api/jobs"
        t0 = time.perf_counter()
        spec, code = build_submission(self.project, NB_NAME, "papermill")
        r = self.http.post(
            url,
            data={"spec": json.dumps(spec)},
            files={"code": ("code.tar.gz", code)},
            timeout=60,
        )
        if r.status_code != 201:
            raise RuntimeError(f"submit refused: {r.status_code} {r.text}")
        job_id = r.json()["id"]

        def status() -> str:
            return self.http.get(f"{url}/{job_id}", timeout=30).json()["status"]

        try:
            times = poll_until(
                status, {"running"}, {"succeeded"}, {"failed", "stopped", "lost"}, t0
            )
        except RuntimeError as e:
            log = self.http.get(f"{url}/{job_id}/logs", timeout=30).text
            raise RuntimeError(f"ours, job {job_id}: {e}\n{log[-2000:]}") from e
        out = self.http.get(f"{url}/{job_id}/files/{NB_NAME}", timeout=30)
        if out.status_code != 200:
            raise RuntimeError(f"ours, job {job_id}: no output notebook ({out.status_code})")
        check_output(out.text, f"ours, job {job_id}")
        result = self.p.data_root / "users" / USER / "jobs" / str(job_id) / "code" / "result.txt"
        if result.read_text() != "forty-two":
            raise RuntimeError(f"ours, job {job_id}: result.txt not written")
        return times

    def stop(self) -> None:
        self.http.close()
        self.p.stop()


# -- anchor -------------------------------------------------------------------------------------
class Anchor:
    """A jupyter-server with jupyter-scheduler, every Jupyter folder in ``base``."""

    def __init__(self, base: Path):
        self.base = base / "anchor"
        self.root = self.base / "root"
        write_notebook(self.root / NB_NAME)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {secrets.token_hex(16)}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> None:
        jdirs = {k: self.base / k.lower() for k in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR")}
        for d in jdirs.values():
            d.mkdir(parents=True, exist_ok=True)
        env = env_without_hub(
            **{k: str(v) for k, v in jdirs.items()},
            JUPYTER_RUNTIME_DIR=str(self.base / "runtime"),
            JUPYTER_PLATFORM_DIRS="1",
            IPYTHONDIR=str(self.base / "ipython"),
            PATH=os.pathsep.join([str(ANCHOR_VENV / "bin"), os.environ.get("PATH", os.defpath)]),
        )
        env.pop("VIRTUAL_ENV", None)
        self.log = open(self.base / "server.log", "ab")
        self.proc = subprocess.Popen(
            [
                str(ANCHOR_VENV / "bin" / "jupyter-server"),
                f"--IdentityProvider.token={self.http.headers['Authorization'].split()[1]}",
                f"--port={self.port}",
                "--ip=127.0.0.1",
                f"--ServerApp.root_dir={self.root}",
                "--no-browser",
                "--allow-root",
                f"--SchedulerApp.db_url=sqlite:///{self.base / 'scheduler.sqlite'}",
                f"--Scheduler.staging_path={self.base / 'staging'}",
            ],
            cwd=self.base,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"anchor server exited {self.proc.returncode}: {self.tail()}")
            try:
                if self.http.get(f"{self.url}/scheduler/config", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"anchor server did not come up: {self.tail()}")

    def tail(self) -> str:
        return (self.base / "server.log").read_text(errors="replace")[-3000:]

    def run_once(self) -> tuple[float, float]:
        body: dict[str, Any] = {
            "name": "tiny",
            "input_uri": NB_NAME,
            "runtime_environment_name": "python3",
            "output_formats": ["ipynb"],
        }
        t0 = time.perf_counter()
        r = self.http.post(f"{self.url}/scheduler/jobs", json=body, timeout=60)
        if r.status_code != 200:
            raise RuntimeError(f"anchor refused the job: {r.status_code} {r.text}")
        job_id = r.json()["job_id"]

        # a new job's row says STOPPED (the column default) until its process marks it
        # IN_PROGRESS; we never stop one, so STOPPED here means "not started yet"
        def status() -> str:
            return self.http.get(f"{self.url}/scheduler/jobs/{job_id}", timeout=30).json()["status"]

        try:
            times = poll_until(status, {"IN_PROGRESS"}, {"COMPLETED"}, {"FAILED"}, t0)
        except RuntimeError as e:
            raise RuntimeError(f"anchor, job {job_id}: {e}\n{self.tail()}") from e
        staged = self.base / "staging" / job_id
        outs = [p for p in staged.glob("*.ipynb") if p.name != NB_NAME]
        if not outs:
            raise RuntimeError(f"anchor, job {job_id}: no output notebook in {staged}")
        check_output(outs[0].read_text(), f"anchor, job {job_id}")
        if (staged / "result.txt").read_text() != "forty-two":
            raise RuntimeError(f"anchor, job {job_id}: result.txt not written")
        return times

    def stop(self) -> None:
        self.http.close()
        if self.proc and self.proc.poll() is None:
            # executor processes and kernels, which may run in sessions of their own
            try:
                children = psutil.Process(self.proc.pid).children(recursive=True)
            except psutil.Error:
                children = []
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
            for child in children:
                try:
                    child.kill()
                except psutil.Error:
                    pass
        if getattr(self, "log", None):
            self.log.close()


def jsonschema_versions() -> str:
    """Which jsonschema each side imports: from 4.24 its import alone takes seconds
    (rfc3987-syntax builds its parsers), in papermill and jupyter-scheduler's executor alike."""
    code = "import importlib.metadata as m; print(m.version('jsonschema'))"
    anchor = subprocess.run(
        [str(ANCHOR_VENV / "bin" / "python"), "-c", code], capture_output=True, text=True
    ).stdout.strip()
    return f"{importlib.metadata.version('jsonschema')} ours, {anchor or '?'} anchor"


def run(ctx: Context) -> list[Result]:
    # the data root's path goes into bubblewrap arguments: keep it short and private
    base = Path(tempfile.mkdtemp(prefix="jr-", dir=ctx.workdir))
    ours, anchor = Ours(base), Anchor(base)
    samples: dict[str, list[float]] = {
        k: [] for k in ("ours_run", "ours_e2e", "anc_run", "anc_e2e")
    }
    try:
        ctx.log("starting the platform and the anchor's jupyter-server")
        ours.start()
        anchor.start()
        ctx.log("warm-up run each")
        ours.run_once()
        anchor.run_once()
        for i in range(ctx.runs):
            a_run, a_e2e = anchor.run_once()
            o_run, o_e2e = ours.run_once()
            samples["ours_run"].append(o_run)
            samples["ours_e2e"].append(o_e2e)
            samples["anc_run"].append(a_run)
            samples["anc_e2e"].append(a_e2e)
            ctx.log(
                f"run {i + 1}/{ctx.runs}: ours {o_run * 1000:.0f} ms / {o_e2e:.2f} s, "
                f"anchor {a_run * 1000:.0f} ms / {a_e2e:.2f} s"
            )
    finally:
        ours.stop()
        anchor.stop()
    o_run, a_run = median(samples["ours_run"]), median(samples["anc_run"])
    o_e2e, a_e2e = median(samples["ours_e2e"]), median(samples["anc_e2e"])
    both = {"ours": samples["ours_run"], "anchor": samples["anc_run"]}
    return [
        Result(
            "jobs_run",
            "submit → running (local runner)",
            "s",
            o_run,
            a_run,
            ANCHOR + " create → in_progress",
            "≤ 0.5× and ≤ 0.5 s",
            o_run <= 0.5 * a_run and o_run <= 0.5,
            detail="ours: spec + archive built as kqi submit, POST, until running (set as the "
            "service launches the supervised process); the anchor sets IN_PROGRESS inside its "
            "spawned executor process, after that process's imports",
            samples=both,
        ),
        Result(
            "jobs_run",
            "tiny notebook end to end (papermill)",
            "s",
            o_e2e,
            a_e2e,
            ANCHOR + " create → completed",
            "≤ 0.7×",
            o_e2e <= 0.7 * a_e2e,
            detail="until succeeded / COMPLETED (output notebook checked); jsonschema "
            + jsonschema_versions(),
            samples={"ours": samples["ours_e2e"], "anchor": samples["anc_e2e"]},
        ),
    ]
