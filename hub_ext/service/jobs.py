"""Jobs API of the kqi service: create (spec + code archive), list, logs, stop, continue, files.

A user reaches only their own jobs (admins: all); another user's job answers 404, as if it did
not exist.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import os
import posixpath
import shutil
import stat
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select
from tornado import web

from ..jobspec import JobSpec, continue_spec, validate_job_spec
from ..layout import JobRef, job_dir, user_dir
from ..options import OptionsError, requested_job_ids
from .archive import ArchiveError, unpack
from .db import Job, jobs_page_json
from .handlers import UserHandler, may_read_job
from .hubapi import UserInfo
from .safefiles import copy_tree_fd, list_files, open_beneath, open_root
from .scheduler import FINISHED, job_to_dict


class JobsBase(UserHandler):
    def job_for(self, job_id: str, user: UserInfo) -> Job:
        with self.kqi.session() as s:
            job = s.get(Job, int(job_id))
        if job is None or not may_read_job(job, user):
            raise web.HTTPError(404, "no job %s that you may read", job_id)
        return job

    def job_path(self, job: Job) -> Path:
        return Path(self.kqi.data_root) / job_dir(job.owner, job.id)

    def refuse_unisolated(self, user: UserInfo) -> None:
        """Where owners cannot be kept apart, only admins submit jobs (403 for the others)."""
        why = self.kqi.runner.refusal(user.name, user.admin)
        if why:
            raise web.HTTPError(403, why)

    def refuse(self, e: OptionsError) -> None:
        self.set_status(400)
        self.write_error(400, exc_info=(type(e), e, None))

    def read_spec_and_code(self) -> tuple[Any, bytes | None]:
        """multipart: field ``spec`` (JSON) + file ``code``; or a JSON body (no code)."""
        ctype = self.request.headers.get("Content-Type", "")
        if ctype.startswith("multipart/form-data"):
            raw = self.get_body_argument("spec", "{}")
            try:
                spec = json.loads(raw)
            except json.JSONDecodeError as e:
                raise web.HTTPError(400, "spec is not valid JSON: %s", e) from e
            files = self.request.files.get("code") or []
            return spec, (files[0]["body"] if files else None)
        return self.json_body(), None

    def create_job(
        self, user: UserInfo, spec: JobSpec, staging: Path, **extra: Any
    ) -> dict[str, Any]:
        """Record the job, then move its staged code (and output, if any) in place; only then
        may the loop start it."""
        with self.kqi.session() as s:
            job = Job(
                owner=user.name,
                name=spec.name,
                command=spec.command,
                profile=spec.profile,
                datasets=list(spec.datasets),
                parents=[p.id for p in spec.parents],
                purpose=spec.purpose,
                env=dict(spec.env),
                timeout_seconds=spec.timeout_seconds,
                notify_url=spec.notify_url,
                runner=self.kqi.runner.__class__.__name__,
                status="queued",
                **extra,
            )
            s.add(job)
            s.commit()
            path = self.job_path(job)
            path.mkdir(parents=True)
            (staging / "code").rename(path / "code")
            if (staging / "output").is_dir():
                (staging / "output").rename(path / "output")
            else:
                (path / "output").mkdir()
            (path / "logs").mkdir()
            result = job_to_dict(job)
        self.kqi.scheduler.wake()
        return result

    def staging(self, user: UserInfo) -> Path:
        d = (
            Path(self.kqi.data_root)
            / user_dir(user.name)
            / "jobs"
            / f".incoming-{uuid.uuid4().hex}"
        )
        d.mkdir(parents=True)
        return d


class JobsHandler(JobsBase):
    async def get(self) -> None:
        name = self.caller_name()  # one's own jobs need no question to the hub
        who = self.get_argument("user", None) or None
        everyone = self.get_argument("all", "0") not in ("0", "", "false")
        if (who and who != name or everyone) and not (await self.caller()).admin:
            raise web.HTTPError(403, "only admins may list other users' jobs")
        if not (who or everyone):
            who = name
        status = self.get_argument("status", None) or None
        try:
            limit = min(int(self.get_argument("limit", "200")), 1000)
            offset = max(int(self.get_argument("offset", "0")), 0)
        except ValueError as e:
            raise web.HTTPError(400, "limit and offset must be integers") from e
        with self.kqi.session() as s:
            body = jobs_page_json(s, who, status, limit, offset)  # encoded by SQLite, cached
            if body is None:
                q = select(Job).order_by(Job.id.desc()).limit(limit).offset(offset)
                if who:
                    q = q.where(Job.owner == who)
                if status:
                    q = q.where(Job.status == status)
                body = json.dumps([job_to_dict(j) for j in s.scalars(q)], default=str)
        self.write_json_text(body)

    async def post(self) -> None:
        user = await self.caller()
        self.refuse_unisolated(user)
        raw, code = self.read_spec_and_code()
        ids = requested_job_ids({"parent": raw.get("parent")}) if isinstance(raw, dict) else set()
        try:
            ctx = self.context_for(user, ids, await self.kqi.usage.usage(user.name))
            spec = validate_job_spec(raw, ctx, self.kqi.max_job_seconds)
        except OptionsError as e:
            return self.refuse(e)
        if code is None:
            raise web.HTTPError(
                400, "code: a code archive (multipart file field 'code') is required"
            )
        staging = self.staging(user)
        try:
            await asyncio.to_thread(unpack, code, staging / "code", self.kqi.max_archive_bytes)
            job = self.create_job(user, spec, staging)
        except ArchiveError as e:
            raise web.HTTPError(400, "code: %s", e) from e
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.kqi.log.info("job %s created by %s: %s", job["id"], user.name, spec.command)
        self.write_json(job, status=201)


class JobHandler(JobsBase):
    async def get(self, job_id: str) -> None:
        job = self.job_for(job_id, await self.caller())
        self.write_json(job_to_dict(job))


class StopHandler(JobsBase):
    async def post(self, job_id: str) -> None:
        user = await self.caller()
        job = self.job_for(job_id, user)
        await self.kqi.scheduler.stop(job.id, user.name)
        self.write_json(job_to_dict(self.job_for(job_id, user)))


class ContinueHandler(JobsBase):
    async def post(self, job_id: str) -> None:
        user = await self.caller()
        self.refuse_unisolated(user)
        prev = self.job_for(job_id, user)
        if prev.status not in FINISHED:
            raise web.HTTPError(
                409, "job %s is %s; continue it when it has ended", prev.id, prev.status
            )
        body, code = self.read_spec_and_code()
        if not isinstance(body, dict):
            raise web.HTTPError(400, "body must be a JSON object")
        copy_output = body.get("copy_output", False)
        previous = JobSpec(
            name=prev.name,
            command=prev.command,
            profile=prev.profile,
            datasets=tuple(prev.datasets or ()),
            purpose=prev.purpose,
            env=dict(prev.env or {}),
            timeout_seconds=prev.timeout_seconds,
            notify_url=prev.notify_url,
        )
        ref = JobRef(prev.id, prev.owner, prev.purpose)
        ctx = self.context_for(user, set(), await self.kqi.usage.usage(user.name))
        try:
            spec = continue_spec(body, previous, ref, ctx, self.kqi.max_job_seconds)
        except OptionsError as e:
            return self.refuse(e)
        old = self.job_path(prev)
        staging = self.staging(user)
        try:
            if code is not None:
                await asyncio.to_thread(unpack, code, staging / "code", self.kqi.max_archive_bytes)
            else:  # the same code: a copy, so the previous job is never modified
                await asyncio.to_thread(copy_tree_fd, old / "code", staging / "code")
            if copy_output:  # pre-filled /kqi/output; the previous output stays as it was
                await asyncio.to_thread(copy_tree_fd, old / "output", staging / "output")
            job = self.create_job(
                user, spec, staging, continued_from=prev.id, copy_output=copy_output
            )
        except ArchiveError as e:
            raise web.HTTPError(400, "code: %s", e) from e
        except ValueError as e:  # a tree too deep to copy
            raise web.HTTPError(400, "job %s: %s", prev.id, e) from e
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.write_json(job, status=201)


class LogsHandler(JobsBase):
    async def get(self, job_id: str) -> None:
        user = await self.caller()
        job = self.job_for(job_id, user)
        path = self.job_path(job) / "logs" / "output.log"
        try:
            offset = max(int(self.get_argument("offset", "0")), 0)
        except ValueError as e:
            raise web.HTTPError(400, "offset must be an integer") from e
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("X-Accel-Buffering", "no")
        follow = self.get_argument("follow", "0") not in ("0", "", "false")
        while True:
            chunk = b""
            if path.exists():
                with open(path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read(1 << 20)
            if chunk:
                offset += len(chunk)
                self.write(chunk)
                await self.flush()
                continue
            if not follow or self.request.connection.stream.closed():
                break
            with self.kqi.session() as s:
                status = s.get(Job, job.id).status
            if status in FINISHED:
                # the log may have grown between the read above and the status change
                if path.exists() and path.stat().st_size > offset:
                    continue
                break
            await asyncio.sleep(0.3)
        self.finish()


class FilesHandler(JobsBase):
    async def get(self, job_id: str, rel: str = "") -> None:
        """A file of the job's output, or the list of its files; opened beneath the output's
        fd without following links, then streamed from that fd (no check-then-open race)."""
        job = self.job_for(job_id, await self.caller())
        try:
            root = open_root(self.job_path(job) / "output")
            try:
                fd = open_beneath(root, rel, allow_dir=True)
            finally:
                os.close(root)
        except FileNotFoundError as e:
            raise web.HTTPError(404, "no output file %s in job %s", rel, job.id) from e
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            prefix = rel.rstrip("/") + "/" if rel.rstrip("/") else ""
            try:
                entries = list_files(fd, prefix)
            except ValueError as e:
                raise web.HTTPError(400, "%s", e) from e
            finally:
                os.close(fd)
            return self.write_json(entries)
        name = posixpath.basename(rel)
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        self.set_header("Content-Type", ctype)
        self.set_header("Content-Disposition", f'attachment; filename="{name}"')
        with os.fdopen(fd, "rb") as f:
            while chunk := f.read(1 << 20):
                self.write(chunk)
                await self.flush()
        self.finish()
