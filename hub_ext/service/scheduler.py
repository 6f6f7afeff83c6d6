"""The job loop: start queued jobs within the limits, follow running ones, record how they end.

Every status change is committed before it is acted on, so a service that dies at any point
finds on restart what it was doing: running jobs are re-attached through the runner (which
finds them by their runner reference or their folder), jobs that ended meanwhile get their
recorded exit status, vanished ones become ``lost``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from typing import Any

from sqlalchemy import select
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from ..layout import JobRef, plan_job
from ..runners import JobLaunch, JobRunner, RunState
from .db import API_FIELDS, Job, utcnow

FINISHED = ("succeeded", "failed", "stopped", "lost")


def _iso(t: Any) -> str | None:
    if t is None:
        return None
    return t.isoformat().replace("+00:00", "Z") if t.tzinfo else t.isoformat() + "Z"


#: how each kind of field in API_FIELDS reads from a Job row (SQLite's json_object page in
#: db.jobs_page_json writes the same fields the same way)
_CONVERT = {
    "plain": lambda v: v,
    "time": _iso,
    "list": lambda v: list(v or []),
    "mapping": lambda v: dict(v or {}),
}


def job_to_dict(job: Job) -> dict[str, Any]:
    """A job as the API shows it: the fields of API_FIELDS, in that order."""
    return {name: _CONVERT[kind](getattr(job, name)) for name, kind in API_FIELDS.items()}


def final_status(state: RunState) -> str:
    if state.state == "vanished":
        return "lost"
    if state.reason == "stopped":
        return "stopped"
    return "succeeded" if state.exit_code == 0 and state.reason == "exited" else "failed"


class Scheduler:
    def __init__(self, kqi: Any, runner: JobRunner, log: logging.Logger):
        self.kqi = kqi
        self.runner = runner
        self.log = log
        self._wake = asyncio.Event()
        self._webhooks: set[asyncio.Task] = set()
        # a job that ends is recorded at once, not at the next tick
        runner.on_change = self.wake

    def wake(self) -> None:
        self._wake.set()

    async def run(self, every: float = 1.0) -> None:
        self._resend_webhooks()
        while True:
            try:
                await self.tick()
            except Exception:
                self.log.exception("job loop: tick failed (will retry)")
            try:
                await asyncio.wait_for(self._wake.wait(), every)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    async def tick(self) -> None:
        await self._follow_running()
        await self._start_queued()

    async def _follow_running(self) -> None:
        with self.kqi.session() as s:
            running = s.scalars(select(Job).where(Job.status == "running")).all()
        for job in running:
            state = await self.runner.poll(job.owner, job.id, job.runner_ref)
            if state.state == "running":
                continue
            with self.kqi.session() as s:
                j = s.get(Job, job.id)
                j.status = final_status(state)
                j.exit_code = state.exit_code
                j.finished_at = utcnow()
                j.message = state.message
                s.commit()
                done = job_to_dict(j)
            self.log.info("job %s of %s: %s (%s)", job.id, job.owner, done["status"], state.message)
            if done["notify_url"]:
                self._notify(done)

    async def _start_queued(self) -> None:
        with self.kqi.session() as s:
            running = Counter(s.scalars(select(Job.owner).where(Job.status == "running")).all())
            queued = s.scalars(select(Job).where(Job.status == "queued").order_by(Job.id)).all()
        total = sum(running.values())
        for job in queued:
            if total >= self.kqi.max_running_jobs:
                break
            if running[job.owner] >= self.kqi.max_running_jobs_per_user:
                continue
            with self.kqi.session() as s:
                j = s.get(Job, job.id)
                if j.status != "queued":  # stopped meanwhile
                    continue
                j.status, j.started_at, j.message = "running", utcnow(), ""
                s.commit()
            try:
                ref = await self.runner.start(self.launch_for(job))
            except Exception as e:
                self.log.exception("job %s could not start", job.id)
                with self.kqi.session() as s:
                    j = s.get(Job, job.id)
                    j.status, j.finished_at, j.message = "failed", utcnow(), f"did not start: {e}"
                    s.commit()
                continue
            with self.kqi.session() as s:
                j = s.get(Job, job.id)
                j.runner_ref = ref
                s.commit()
                stop_asked = j.message.startswith("stop requested")
            if stop_asked:  # asked while it was starting
                await self.runner.stop(job.owner, job.id, ref)
            running[job.owner] += 1
            total += 1

    def launch_for(self, job: Job) -> JobLaunch:
        with self.kqi.session() as s:
            parents = [
                JobRef(p.id, p.owner, p.purpose)
                for p in s.scalars(select(Job).where(Job.id.in_(job.parents or [])))
            ]
        plan = plan_job(
            job.owner, job.id, job.datasets or [], parents, continued_from=job.continued_from
        )
        env = {**(job.env or {}), **plan.env}
        return JobLaunch(
            id=job.id,
            owner=job.owner,
            command=job.command,
            plan=plan,
            env=env,
            profile=self.kqi.profile_map.get(job.profile)
            or next(iter(self.kqi.profile_map.values())),
            timeout_seconds=job.timeout_seconds,
            labels={"kqi-job-id": str(job.id), "kqi-user": job.owner},
        )

    async def stop(self, job_id: int, who: str) -> None:
        """Stop a job (idempotent): a queued one at once, a running one through its runner."""
        with self.kqi.session() as s:
            j = s.get(Job, job_id)
            if j.status == "queued":
                j.status, j.finished_at, j.message = "stopped", utcnow(), f"stopped by {who}"
                s.commit()
                return
            if j.status != "running":
                return
            j.message = f"stop requested by {who}"
            s.commit()
            owner, ref = j.owner, j.runner_ref
        await self.runner.stop(owner, job_id, ref)
        self.wake()

    # -- webhooks ---------------------------------------------------------------------------
    def _notify(self, job: dict[str, Any]) -> None:
        task = asyncio.ensure_future(self._send_webhook(job))
        self._webhooks.add(task)
        task.add_done_callback(self._webhooks.discard)

    def _resend_webhooks(self) -> None:
        with self.kqi.session() as s:
            pending = s.scalars(
                select(Job).where(
                    Job.status.in_(FINISHED), Job.notify_url != "", Job.notified.is_(False)
                )
            ).all()
            for j in pending:
                self._notify(job_to_dict(j))

    async def _send_webhook(self, job: dict[str, Any]) -> None:
        """POST the finished job; a failing hook is logged and retried, never fails the job."""
        delay = self.kqi.webhook_retry_delay
        for attempt in range(1, self.kqi.webhook_attempts + 1):
            try:
                await AsyncHTTPClient().fetch(
                    HTTPRequest(
                        job["notify_url"],
                        method="POST",
                        body=json.dumps({"event": "job.finished", "job": job}),
                        headers={"Content-Type": "application/json"},
                        request_timeout=10,
                        follow_redirects=False,
                    )
                )
            except Exception as e:
                self.log.warning(
                    "job %s: webhook %s failed (attempt %d): %s",
                    job["id"],
                    job["notify_url"],
                    attempt,
                    e,
                )
                await asyncio.sleep(delay)
                delay *= 2
                continue
            with self.kqi.session() as s:
                s.get(Job, job["id"]).notified = True
                s.commit()
            return
        self.log.error("job %s: webhook %s given up", job["id"], job["notify_url"])
        with self.kqi.session() as s:  # given up: do not retry at every restart
            s.get(Job, job["id"]).notified = True
            s.commit()
