"""LocalRunner: each job a supervised process group on this machine, in the /kqi layout.

With bubblewrap the plan is mounted at /kqi (read-only inputs, private pid namespace, no
capabilities, the rest of the data root hidden); without it a per-job folder of links stands
in and KQI_ROOT names it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psutil
from traitlets import CaselessStrEnum, List, Unicode, default

from ..accounts import (
    Account,
    AccountError,
    KqiAccounts,
    accounts_from_hub,
    prepare_tree,
    setpriv_argv,
)
from ..cgroups import KqiCgroups
from ..isolation import Decision, IsolationUnavailable, decide_here
from ..layout import user_dir
from ..materialize import build_link_tree, bwrap_args, missing_sources
from ..sandbox import DEFAULT_HIDDEN, HOST_ENV, INIT, host_view
from .base import JobLaunch, JobRunner, RunState

#: the hub's c.KqiLocalSpawner.isolation, the default of LocalRunner.isolation
ISOLATION_ENV = "KQI_ISOLATION_SETTING"
#: run by path, not ``-m hub_ext.runners.supervise``: that would import the runners package
#: (traitlets, the layout...), half a second before each job could start
SUPERVISOR = str(Path(__file__).with_name("supervise.py"))


class LocalRunner(JobRunner):
    isolation = CaselessStrEnum(
        ["auto", "bubblewrap", "none"],
        help="'bubblewrap': each job runs as its owner's Unix account in a sandbox with the "
        "layout at /kqi (needs root, bwrap, setpriv, useradd); 'none': as the service's account "
        "with a per-job folder of links (nothing isolated); 'auto': 'bubblewrap' where it can "
        "be had, elsewhere only admins may submit jobs. Keep it equal to "
        "c.KqiLocalSpawner.isolation, which the embedded platform passes as the default.",
    ).tag(config=True)

    @default("isolation")
    def _isolation_of_the_hub(self) -> str:
        return os.environ.get(ISOLATION_ENV) or "auto"

    bwrap_path = Unicode("bwrap", help="The bubblewrap executable.").tag(config=True)
    hidden_paths = List(
        Unicode(),
        DEFAULT_HIDDEN,
        help="""Host folders a sandboxed job sees empty (bubblewrap; the rest of the machine is
        read-only, /tmp, /dev/shm and /var/tmp are its own, the data root is hidden). The
        platform's Python stays readable where it sits below one.""",
    ).tag(config=True)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._children: dict[int, subprocess.Popen] = {}
        self._watched: dict[int, int] = {}  # job id -> pidfd of its supervisor
        self.cgroups = KqiCgroups(parent=self)
        self.log.info("jobs: %s", self.cgroups.note())

    @property
    def decision(self) -> Decision:
        """Whether owners are kept apart (an account each, in a sandbox); see isolation.py."""
        return decide_here(self.isolation, self.bwrap_path, self.setpriv_path)

    def use_bubblewrap(self) -> bool:
        try:
            return self.decision.mode == "bubblewrap"
        except IsolationUnavailable as e:
            raise RuntimeError(str(e)) from e

    def refusal(self, user: str, admin: bool) -> str | None:
        """Why ``user`` may not submit jobs here: owners cannot be kept apart (admins may)."""
        decision = self.decision
        return decision.refusal(user) if decision.admins_only and not admin else None

    setpriv_path = Unicode(
        "setpriv", help="util-linux setpriv: inside the sandbox it becomes the owner's account."
    ).tag(config=True)

    async def _account(self, owner: str) -> Account | None:
        """The owner's Unix account (made now if they never started a server); None when
        owners cannot be kept apart here (then the job runs as the service's account)."""
        if not self.decision.isolated:
            return None
        if self.accounts is None:
            self.accounts = accounts_from_hub(self.data_root)
        try:
            return await asyncio.to_thread(self.accounts.ensure, owner)
        except (AccountError, ValueError) as e:
            raise RuntimeError(f"cannot set up the Unix account of {owner}: {e}") from e

    accounts: KqiAccounts | None = None

    @staticmethod
    def _hand_over(jdir: Path, scratch: Path, account: Account) -> None:
        """What the job writes is the owner's (0700); its logs stay the platform's: the
        supervisor writes them, the job cannot change them."""
        for d in (jdir / "code", jdir / "output"):
            prepare_tree(d, account)
        for d in scratch.iterdir():
            if d.is_dir() and not d.is_symlink():
                prepare_tree(d, account)
        os.chmod(jdir / "logs", 0o755)

    def _scratch(self, job_id: int) -> Path:
        return Path(self.data_root) / "run" / "jobs" / str(job_id)

    async def start(self, launch: JobLaunch) -> dict[str, Any]:
        data_root = Path(self.data_root)
        jdir = self.job_path(launch.owner, launch.id)
        (jdir / "logs").mkdir(parents=True, exist_ok=True)
        (jdir / "output").mkdir(parents=True, exist_ok=True)
        missing = missing_sources(launch.plan, data_root)
        if missing:
            raise RuntimeError(
                "missing: " + ", ".join(f"/kqi/{b.target} ({b.source})" for b in missing)
            )
        scratch = self._scratch(launch.id)
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        env = {
            "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.defpath]),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            **launch.env,
            "KQI_JOB_MARK": uuid.uuid4().hex,
        }
        if self.use_bubblewrap():
            root = "/kqi"
            Path(root).mkdir(mode=0o755, exist_ok=True)  # the mount point, on the host
            account = await self._account(launch.owner)
            if account is not None:
                await asyncio.to_thread(self._hand_over, jdir, scratch, account)
            # the owner's home, read-only at its own path: what `pip install` put in ~/.local
            # imports here too (links in it resolve inside the sandbox, not on the host)
            home = data_root / user_dir(launch.owner) / "home"
            prefix = bwrap_args(
                launch.plan,
                data_root,
                scratch,
                [],
                bwrap=self.bwrap_path,
                host=host_view(self.hidden_paths, data_root / "run"),
                keep_read_only=[home] if home.is_dir() else [],
                die_with_parent=True,
                as_pid_1=True,  # the init: /proc shows the owner's processes only
                chdir=f"{root}/code",
                user=setpriv_argv(account, self.setpriv_path) if account else [],
            )
            env["KQI_ISOLATION"] = "bubblewrap"
            env.setdefault("PYTHONUSERBASE", str(home / ".local"))
            cwd = str(jdir / "code")
        else:
            tree = scratch / "kqi"
            build_link_tree(launch.plan, data_root, scratch, tree)
            root, prefix = str(tree), []
            env["KQI_ISOLATION"] = "none"
            cwd = str(tree / "code")
        env.update(KQI_ROOT=root, HOME=f"{root}/code")
        command, supervisor_env, env_fd = ["/bin/sh", "-c", launch.command], env, -1
        if prefix:  # sandboxed: the job's environment goes to the init inside, by a memfd
            env_fd = os.memfd_create("kqi-job-env", 0)
            os.write(env_fd, json.dumps(env).encode())
            os.lseek(env_fd, 0, os.SEEK_SET)
            init = [sys.executable, "-I", INIT, "--what=job", f"--env-fd={env_fd}"]
            command = [*init, f"--grace={self.stop_grace:g}", "--", *command]
            supervisor_env = dict(HOST_ENV)
        argv = [
            sys.executable,
            "-I",  # the job's environment (PYTHONHOME, PYTHONWARNINGS...) is not the supervisor's
            SUPERVISOR,
            "--logs",
            str(jdir / "logs"),
            "--cwd",
            cwd,
            "--timeout",
            str(launch.timeout_seconds or 0),
            "--grace",
            str(self.stop_grace),
            "--mark",
            env["KQI_JOB_MARK"],
            *([f"--pass-fd={env_fd}"] if env_fd >= 0 else []),
            *self._cgroup_args(launch),
            "--",
            *prefix,
            *command,
        ]
        try:
            proc = subprocess.Popen(
                argv,
                env=supervisor_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=open(jdir / "logs" / "supervisor.log", "ab"),
                start_new_session=True,
                pass_fds=(env_fd,) if env_fd >= 0 else (),
            )
        finally:
            if env_fd >= 0:
                os.close(env_fd)
        self._children[launch.id] = proc
        self._watch(launch.id, proc.pid)
        self.log.info("job %s of %s started (pid %s)", launch.id, launch.owner, proc.pid)
        return {"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time()}

    def _alive(self, job_id: int, ref: dict[str, Any] | None) -> bool:
        child = self._children.get(job_id)
        if child is not None and child.poll() is not None:  # reap our own child
            self._children.pop(job_id, None)
            return False
        if not ref:
            return False
        try:
            p = psutil.Process(ref["pid"])
            return (
                abs(p.create_time() - ref["create_time"]) < 0.01
                and p.status() != psutil.STATUS_ZOMBIE
            )
        except psutil.Error:
            return False

    async def poll(self, owner: str, job_id: int, ref: dict[str, Any] | None) -> RunState:
        status = self.recorded_status(owner, job_id)
        if status is not None:
            self._alive(job_id, ref)  # reap
            self._cleanup(job_id)
            return status
        ref = ref or self._ref_on_disk(owner, job_id)
        if self._alive(job_id, ref):
            if job_id not in self._watched and ref:  # re-attached after a restart
                self._watch(job_id, ref["pid"])
            return RunState("running")
        status = self.recorded_status(owner, job_id)  # it may have ended just now
        if status is not None:
            self._cleanup(job_id)
            return status
        self._end_cgroup(owner, job_id)
        return RunState("vanished", message="the job's process is gone and recorded no exit status")

    def _watch(self, job_id: int, pid: int) -> None:
        """Call ``on_change`` as soon as the supervisor ``pid`` exits (it writes status.json
        first), through a pidfd in the event loop; without pidfds the periodic poll notices."""
        try:
            fd = os.pidfd_open(pid)
            loop = asyncio.get_running_loop()
        except (AttributeError, OSError, RuntimeError):
            return
        self._watched[job_id] = fd

        def ended() -> None:
            loop.remove_reader(fd)
            os.close(fd)
            self._watched.pop(job_id, None)
            self.on_change()

        loop.add_reader(fd, ended)

    def _ref_on_disk(self, owner: str, job_id: int) -> dict[str, Any] | None:
        try:
            return json.loads((self.job_path(owner, job_id) / "logs/supervisor.json").read_text())
        except (OSError, ValueError):
            return None

    def _cleanup(self, job_id: int) -> None:
        shutil.rmtree(self._scratch(job_id), ignore_errors=True)

    async def stop(self, owner: str, job_id: int, ref: dict[str, Any] | None) -> None:
        # a supervisor that has not yet written supervisor.json has no SIGTERM handler yet
        for _ in range(50):
            if self._ref_on_disk(owner, job_id) or not self._alive(job_id, ref):
                break
            await asyncio.sleep(0.1)
        ref = ref or self._ref_on_disk(owner, job_id)
        if ref and self._alive(job_id, ref):
            try:
                os.kill(ref["pid"], signal.SIGTERM)  # the supervisor stops the job's group
            except ProcessLookupError:
                pass

    # -- limits: each job's command in a cgroup of its own (made here, joined, read and
    # removed by the supervisor) --------------------------------------------------------------
    def _cgroup_args(self, launch: JobLaunch) -> list[str]:
        """The supervisor's ``--cgroup``: a new cgroup with the profile's CPU and memory."""
        self.cgroups.sweep(self.data_root, launch.owner, "job-")
        leaf = f"job-{launch.id}"
        try:
            cgroup = self.cgroups.make(
                self.data_root, launch.owner, leaf, launch.profile.cpu, launch.profile.memory
            )
        except OSError as e:
            raise RuntimeError(f"cannot make the job's cgroup {leaf}: {e}") from e
        if cgroup is None:
            return []
        return ["--cgroup", json.dumps({**cgroup.to_dict(), "memory": launch.profile.memory})]

    def _end_cgroup(self, owner: str, job_id: int) -> None:
        """A job whose supervisor vanished: nothing of it may stay in its cgroup."""
        cgroup = self.cgroups.group(self.data_root, owner, f"job-{job_id}")
        if cgroup is not None and not cgroup.remove(kill=True):
            self.log.warning("job %s: processes left in %s", job_id, cgroup.paths)
