"""Job records for tests of the spine: written into the service's real sqlite database, as the
jobs capability will, so parent/inference checks have something real to check against."""

from __future__ import annotations

from hub_ext.service.db import Job, make_session_factory

from .platform import Platform


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
