"""LocalRunner with real supervised processes: the service hears of a job's end as it happens
(also for a job re-attached after a restart), and the job's environment cannot break the
supervisor that runs outside the sandbox."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import psutil
import pytest

from hub_ext.accounts import KqiAccounts
from hub_ext.layout import job_dir, plan_job
from hub_ext.options import Profile
from hub_ext.runners import JobLaunch, LocalRunner

from .platform import remove_accounts

PROFILE = Profile("standard", "Standard", cpu=1, memory=2**30, storage=2**30)
ISOLATIONS = ["none"] + (["bubblewrap"] if shutil.which("bwrap") else [])


def launch(job_id: int, command: str, env: dict[str, str] | None = None) -> JobLaunch:
    plan = plan_job("ann", job_id)
    return JobLaunch(job_id, "ann", command, plan, {**(env or {}), **plan.env}, PROFILE)


#: this module's Unix accounts (a sandboxed job runs as its owner's)
PREFIX = f"kr{os.getpid() % 10000:04d}-"


@pytest.fixture(scope="module", autouse=True)
def _accounts():
    yield
    remove_accounts(PREFIX)


def runner(root: Path, isolation: str) -> tuple[LocalRunner, asyncio.Event]:
    r = LocalRunner(data_root=str(root), isolation=isolation, stop_grace=2)
    r.accounts = KqiAccounts(prefix=PREFIX, uid_min=200000, uid_max=299999, data_root=str(root))
    changed = asyncio.Event()
    r.on_change = changed.set
    return r, changed


def prepare(root: Path, job_id: int) -> Path:
    jdir = root / job_dir("ann", job_id)
    (jdir / "code").mkdir(parents=True)
    return jdir


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_end_is_reported_without_polling(tmp_path: Path, isolation: str) -> None:
    async def scenario() -> None:
        r, changed = runner(tmp_path, isolation)
        jdir = prepare(tmp_path, 1)
        ref = await r.start(launch(1, "echo hello from $KQI_JOB_ID"))
        await asyncio.wait_for(changed.wait(), 30)  # no poll was made meanwhile
        state = await r.poll("ann", 1, ref)
        assert (state.state, state.exit_code, state.reason) == ("exited", 0, "exited")
        assert "hello from 1" in (jdir / "logs" / "output.log").read_text()

    asyncio.run(scenario())


def test_reattached_job_end_is_reported(tmp_path: Path) -> None:
    """A new runner (a restarted service) that finds the job running hears when it ends."""

    async def scenario() -> None:
        first, _ = runner(tmp_path, "none")
        prepare(tmp_path, 2)
        ref = await first.start(launch(2, "sleep 1.5; exit 3"))
        second, changed = runner(tmp_path, "none")
        assert (await second.poll("ann", 2, ref)).state == "running"
        await asyncio.wait_for(changed.wait(), 30)
        state = await second.poll("ann", 2, ref)
        assert (state.state, state.exit_code) == ("exited", 3)

    asyncio.run(scenario())


def test_job_python_settings_do_not_reach_the_supervisor(tmp_path: Path) -> None:
    """PYTHONHOME may be set for a job; it is the job's, not the supervisor's (which would
    not start with it)."""

    async def scenario() -> None:
        r, changed = runner(tmp_path, "none")
        jdir = prepare(tmp_path, 3)
        ref = await r.start(launch(3, 'echo "home=$PYTHONHOME"', {"PYTHONHOME": "/nowhere"}))
        await asyncio.wait_for(changed.wait(), 30)
        state = await r.poll("ann", 3, ref)
        assert (state.state, state.exit_code) == ("exited", 0), state
        assert "home=/nowhere" in (jdir / "logs" / "output.log").read_text()

    asyncio.run(scenario())


def _alive(tag: str) -> list[int]:
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if (p.info["cmdline"] or [])[:2] == ["sleep", tag] and p.info["status"] != "zombie":
            found.append(p.pid)
    return found


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_nothing_of_a_job_outlives_it(tmp_path: Path, isolation: str) -> None:
    """A job that leaves programs behind in other sessions, one of them with no environment
    at all (``env -i`` drops the job's mark): when the job ends, they end too."""
    tag = f"43{os.getpid() % 1000:03d}{len(isolation)}"
    command = (
        f"( setsid env -i sleep {tag} & ); nohup env -i sleep {tag} >/dev/null 2>&1 & "
        f"( ( sleep {tag} & ) & ); "
        f"while [ \"$(pgrep -fc '^sleep {tag}$')\" -lt 3 ]; do sleep 0.05; done; "
        "echo left three"
    )

    async def scenario() -> None:
        r, changed = runner(tmp_path, isolation)
        jdir = prepare(tmp_path, 4)
        ref = await r.start(launch(4, command))
        await asyncio.wait_for(changed.wait(), 60)
        state = await r.poll("ann", 4, ref)
        assert (state.state, state.exit_code) == ("exited", 0), state
        assert "left three" in (jdir / "logs" / "output.log").read_text()
        assert _alive(tag) == []

    asyncio.run(scenario())
