"""Helpers for job tests: records written straight into the service's real sqlite database (for
the spine's parent/inference checks), archives, submission through the real API, waiting."""

from __future__ import annotations

import io
import json
import tarfile
import time
from typing import Any

import requests

from hub_ext.service.db import Job, make_session_factory

from .platform import Platform

RUNNING = ("queued", "running")


def add_job(
    p: Platform, owner: str, purpose: str = "training", files: dict[str, str] | None = None
) -> int:
    engine, sessions = make_session_factory(f"sqlite:///{p.data_root / 'kqi.sqlite'}")
    try:
        with sessions() as s:
            job = Job(owner=owner, name=f"{purpose} job", purpose=purpose, status="succeeded")
            s.add(job)
            s.commit()
            job_id = job.id
    finally:
        engine.dispose()
    out = p.data_root / "users" / owner / "jobs" / str(job_id) / "output"
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (files or {}).items():
        (out / name).write_text(text)
    return job_id


def archive(files: dict[str, str | bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = len(data), 0o644
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def submit(
    p: Platform, token: str, spec: dict[str, Any], files: dict[str, str] | bytes | None = None
) -> requests.Response:
    code = files if isinstance(files, bytes) else archive(files or {"empty.txt": ""})
    return p.service(
        "api/jobs",
        token,
        method="POST",
        data={"spec": json.dumps(spec)},
        files={"code": ("code.tar.gz", code)},
    )


def wait_job(
    p: Platform, token: str, job_id: int, until: tuple[str, ...] = (), timeout: float = 60
) -> dict[str, Any]:
    """Wait until the job's status is in ``until`` (default: any final status)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = p.service(f"api/jobs/{job_id}", token)
        if r.status_code == 200:
            job = r.json()
            if (job["status"] in until) if until else (job["status"] not in RUNNING):
                return job
        time.sleep(0.3)
    raise TimeoutError(f"job {job_id}: {r.text}\n{p.log_tail(40)}")


def wait_started(p: Platform, token: str, owner: str, job_id: int, timeout: float = 60) -> None:
    """Wait until the job runs and its supervisor is there (the job's status says "running"
    from the moment the service starts it, a little before its process exists)."""
    wait_job(p, token, job_id, until=("running",), timeout=timeout)
    sup_file = p.data_root / f"users/{owner}/jobs/{job_id}/logs/supervisor.json"
    deadline = time.monotonic() + timeout
    while not sup_file.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id}: no supervisor after {timeout:g} s")
        time.sleep(0.1)
