"""The runner interface: how the kqi service starts, watches and stops a job.

A runner gets everything as plain data (JobLaunch: the layout plan, command, environment,
profile) and keeps no state the service could not rebuild: what it needs to find a job again
after a restart goes into ``runner_ref`` (stored with the job) or the job's folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traitlets import Float, Unicode
from traitlets.config import LoggingConfigurable

from ..cgroups import oom_message
from ..layout import LayoutPlan, job_dir
from ..options import Profile


@dataclass(frozen=True)
class JobLaunch:
    id: int
    owner: str
    command: str
    plan: LayoutPlan
    env: dict[str, str]
    profile: Profile
    timeout_seconds: int | None = None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunState:
    """``running``, ``exited`` (with exit code and reason: exited | timeout | stopped | oom) or
    ``vanished`` (no process and no recorded status)."""

    state: str
    exit_code: int | None = None
    reason: str = ""
    message: str = ""


class JobRunner(LoggingConfigurable):
    data_root = Unicode(help="The data root (set by the kqi service).").tag(config=True)
    stop_grace = Float(10, help="Seconds between SIGTERM and SIGKILL when a job is stopped.").tag(
        config=True
    )

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        #: called (no arguments) when a job may have ended, so the service polls it at once
        #: instead of at its next periodic tick; the service sets it. Runners that cannot
        #: tell never call it and are polled on the tick alone.
        self.on_change: Callable[[], None] = lambda: None

    def refusal(self, user: str, admin: bool) -> str | None:
        """Why ``user`` may not submit jobs through this runner at all (None: they may)."""
        return None

    def job_path(self, owner: str, job_id: int) -> Path:
        return Path(self.data_root) / job_dir(owner, job_id)

    def recorded_status(self, owner: str, job_id: int) -> RunState | None:
        """The status file the supervisor writes last, if it is there."""
        path = self.job_path(owner, job_id) / "logs" / "status.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        reason = data.get("reason", "exited")
        code = data.get("exit_code")
        message = {
            "timeout": "stopped: over its time limit",
            "stopped": "stopped on request",
        }.get(reason, "" if code == 0 else f"exit code {code}")
        if reason == "oom":  # the kernel killed for memory in the job's cgroup
            limit = data.get("memory_limit", 0)
            message = oom_message(data.get("oom_kills", 1), limit, data.get("memory_peak"))
        return RunState("exited", code, reason, message)

    async def start(self, launch: JobLaunch) -> dict[str, Any]:
        """Start the job; return the runner reference to store with it."""
        raise NotImplementedError

    async def poll(self, owner: str, job_id: int, ref: dict[str, Any] | None) -> RunState:
        raise NotImplementedError

    async def stop(self, owner: str, job_id: int, ref: dict[str, Any] | None) -> None:
        """Ask the job to stop (idempotent); the final status comes through poll."""
        raise NotImplementedError
