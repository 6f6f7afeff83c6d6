"""KqiLocalSpawner: user servers as local processes, with the /kqi layout.

With bubblewrap the plan is mounted at /kqi itself (read-only binds, the machine read-only, the
rest of the data root hidden) and the server runs as the user's own Unix account (runas.py);
without it, a per-server folder of links stands in, KQI_ROOT names it, and the server runs as
the account that runs the hub.
"""

from __future__ import annotations

import asyncio
import functools
import glob
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

import psutil
from jupyterhub.spawner import SimpleLocalProcessSpawner
from jupyterhub.utils import can_connect
from tornado import web
from traitlets import Float, Integer, List, Unicode, default

from culler.app import server_rules_json

from ..accounts import prepare_tree, setpriv_argv
from ..layout import user_dir
from ..materialize import build_link_tree, bwrap_args, missing_sources
from ..sandbox import DEFAULT_HIDDEN, HOST_ENV, INIT, host_view, read_init_pid
from .common import KqiSpawnerMixin
from .gitclone import clone_repository
from .limits import CgroupLimitsMixin
from .runas import RunAsMixin

#: the server's init process, run by path with ``python -I`` (see serverinit.py)
SERVER_INIT = INIT
STARTUP_SCRIPT = (
    'cmd="$1"; shift; sh -c "$cmd" >"$HOME/.kqi-startup.log" 2>&1'
    ' || echo "kqi: startup command failed (exit $?); see ~/.kqi-startup.log" >&2; exec "$@"'
)


class KqiLocalSpawner(RunAsMixin, CgroupLimitsMixin, KqiSpawnerMixin, SimpleLocalProcessSpawner):
    data_root = Unicode(
        help="Data root (datasets/, users/); default env KQI_DATA_ROOT or ./.kqi-data."
    ).tag(config=True)

    @default("data_root")
    def _data_root(self) -> str:
        return os.path.abspath(os.environ.get("KQI_DATA_ROOT", ".kqi-data"))

    hidden_paths = List(
        Unicode(),
        DEFAULT_HIDDEN,
        help="""Host folders a sandboxed server sees empty (bubblewrap; the rest of the machine
        is read-only, /tmp, /dev/shm and /var/tmp are its own, the data root is hidden but for
        the user's home). The platform's Python stays readable where it sits below one.""",
    ).tag(config=True)
    git_timeout = Float(300, help="Seconds the git clone at start may take.").tag(config=True)
    ready_interval = Float(
        0.05,
        help="""Seconds between checks that a starting server accepts connections. start()
        returns once it does, so the hub's own check, which backs off with random waits of up
        to 5 s, finds the server at its first try instead of seconds later. 0: return as soon
        as the process is started (JupyterHub's behaviour).""",
    ).tag(config=True)

    leftover_grace = Float(
        3,
        help="""Seconds the processes a server left running (nohup, setsid, ...) get between
        SIGTERM and SIGKILL once the server itself has stopped.""",
    ).tag(config=True)

    #: the memfd the environment of the server starting now goes through (-1: none)
    _kqi_env_fd = -1

    # the sandbox's init (pid 1 of the server's pid namespace): its host pid and start time,
    # kept in the hub's state so a restarted hub still stops it, and never a reused pid
    init_pid = Integer(0)
    init_start = Float(0)

    @default("home_dir")
    def _home(self) -> str:
        return os.path.join(self.data_root, user_dir(self.user.name), "home")

    @default("default_url")
    def _default_url(self) -> str:
        return "/lab"

    @property
    def server_dir(self) -> Path:
        return Path(self.data_root, "run", self.user.name, self.name or "default")

    async def start(self):
        began = time.monotonic()
        self.refuse_unisolated()
        if self.kqi_plan is None:  # e.g. options reused without a new apply
            await self._apply_options(self, self.user_options or {})
        plan, options = self.kqi_plan, self.kqi_options
        data_root = Path(self.data_root)
        sandboxed = self.use_bubblewrap()
        account = await self._account() if self.isolation_decision.isolated else None
        await asyncio.to_thread(self._prepare_folders, account)
        missing = missing_sources(plan, data_root)
        if missing:
            names = ", ".join(f"/kqi/{b.target} ({b.role})" for b in missing)
            raise web.HTTPError(400, f"cannot start: no data for {names} (job without output?)")

        scratch = self.server_dir / "scratch"
        shutil.rmtree(scratch, ignore_errors=True)
        for b in plan.bindings:
            if b.source is None:
                (scratch / b.target).mkdir(parents=True, exist_ok=True)
                if account is not None:
                    prepare_tree(scratch / b.target, account)

        info_r = info_w = -1
        if sandboxed:
            kqi_root, isolation = "/kqi", "bubblewrap"
            try:  # the mount point, on the host (the sandbox's root is read-only)
                Path(kqi_root).mkdir(mode=0o755, exist_ok=True)
            except OSError as e:
                raise web.HTTPError(500, f"cannot create the mount point {kqi_root}: {e}") from e
            view = functools.partial(  # the server's view, as the user's account
                bwrap_args,
                plan,
                data_root,
                scratch,
                [Path(self.home_dir)],
                bwrap=self.bwrap_path,
                host=host_view(self.hidden_paths, data_root / "run"),
                user=setpriv_argv(account, self.setpriv_path) if account else [],
            )
            if options.git:  # as the user, in the server's view: nothing of theirs on the host
                clone = view(die_with_parent=True, chdir=self.home_dir)
                await clone_repository(
                    options.git.url, options.git.ref, "/kqi/git", clone, self.git_timeout
                )
            info_r, info_w = os.pipe()
            os.set_inheritable(info_w, True)
            prefix = view(as_pid_1=True, info_fd=info_w)
        else:
            if options.git:
                await clone_repository(
                    options.git.url, options.git.ref, str(scratch / "git"), [], self.git_timeout
                )
            root = self.server_dir / "kqi"
            build_link_tree(plan, data_root, scratch, root)
            kqi_root, isolation, prefix = str(root), "none", []
            self.log.warning(
                "%s: no bubblewrap: /kqi is %s; read-only inputs are not enforced",
                self._log_name,
                root,
            )
        self._kqi_extra_env = self.kqi_env(kqi_root)
        self._kqi_extra_env["KQI_ISOLATION"] = isolation
        decision = self.isolation_decision
        self._kqi_extra_env["KQI_USERS_ISOLATED"] = "1" if decision.isolated else "0"
        self._kqi_extra_env["KQI_ISOLATION_NOTE"] = decision.note()
        # the culler's view: processes carrying this start's id are the server's, also after
        # they left its process tree (nohup, setsid); the thresholds give the forecast
        self.kqi_server_id = uuid.uuid4().hex
        self._kqi_extra_env["KQI_SERVER_ID"] = self.kqi_server_id
        self._kqi_extra_env["KQI_CULL_RULES"] = server_rules_json(self.config)
        # links into this user's per-server folders are ours too (moved when the mode changes)
        runs = glob.escape(str(data_root / "run" / self.user.name))
        self._kqi_extra_env["KQI_LINK_ROOTS"] = os.pathsep.join(["/kqi", f"{runs}/*/kqi"])
        startup = []
        if options.startup_command:
            startup = ["sh", "-c", STARTUP_SCRIPT, "kqi-startup", options.startup_command]
        # the init process: what the server leaves running stays below it (watched, and ended
        # with the server), whatever it did to its session or environment. In the sandbox it
        # is the pid namespace's pid 1 (already the user's account); without one it runs on
        # top, as a subreaper
        init = [sys.executable, "-I", SERVER_INIT, f"--grace={self.leftover_grace:g}"]
        env_fd = -1
        if sandboxed:  # the environment goes to the init, not through bubblewrap (get_env)
            env_fd = os.memfd_create("kqi-server-env", 0)
            init.append(f"--env-fd={env_fd}")
        self._kqi_env_fd = env_fd
        prefix = [*prefix, *init, "--", *startup]

        base, popen_kwargs = list(self.cmd), self.popen_kwargs
        self._kqi_bin_dir = os.path.dirname(shutil.which(base[0]) or base[0])
        self.cmd = prefix + base
        if info_w >= 0:
            self.popen_kwargs = {**popen_kwargs, "pass_fds": (info_w, env_fd)}
        self.init_pid, self.init_start = 0, 0.0
        try:
            ip, port = await super().start()
        except BaseException:
            if info_r >= 0:
                os.close(info_r)
            raise
        finally:
            self.cmd, self.popen_kwargs = base, popen_kwargs
            if info_w >= 0:
                os.close(info_w)
            if env_fd >= 0:
                os.close(env_fd)
            self._kqi_env_fd = -1
        if info_r >= 0:
            self.init_pid, self.init_start = await asyncio.to_thread(read_init_pid, info_r)
        # within the hub's start_timeout; past it (or once the process ended) the hub's own
        # check takes over as before
        deadline = min(began + self.start_timeout - 5, time.monotonic() + self.http_timeout)
        await self._wait_listening(ip, port, deadline)
        return ip, port

    async def _wait_listening(self, ip: str, port: int, deadline: float) -> bool:
        """Poll the new server's port every ``ready_interval`` seconds until it listens."""
        if self.ready_interval <= 0:
            return False
        while time.monotonic() < deadline and self.proc.poll() is None:
            if await accepts(ip, port):
                return True
            await asyncio.sleep(self.ready_interval)
        return False

    def get_state(self) -> dict:
        state = super().get_state()
        if self.init_pid:
            state.update(init_pid=self.init_pid, init_start=self.init_start)
        return state

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.init_pid = int(state.get("init_pid", 0))
        self.init_start = float(state.get("init_start", 0.0))

    def clear_state(self) -> None:
        super().clear_state()
        self.init_pid, self.init_start = 0, 0.0

    def _init(self) -> psutil.Process | None:
        """The sandbox's init, if it still runs (the same process: pid and start time)."""
        if not self.init_pid:
            return None
        try:
            p = psutil.Process(self.init_pid)
            if abs(p.create_time() - self.init_start) < 0.01 and p.status() != "zombie":
                return p
        except psutil.Error:
            pass
        return None

    async def poll(self) -> int | None:
        init = self._init()
        status = await super().poll()
        if status is not None and init is not None:
            # bubblewrap ended but the init did not (someone killed bubblewrap): the init
            # goes too, and with it everything in the namespace
            try:
                init.kill()
            except psutil.Error:
                pass
        return status

    async def stop(self, now: bool = False) -> None:
        server_id = self.kqi_server_id  # poll() clears the state once the process ended
        sandboxed = bool(self.init_pid)
        await super().stop(now=now)
        # what was left running goes with the server, as in a pod: the init process ends
        # what is below it (in a sandbox, the end of the init ends its pid namespace); should
        # it have been killed first, the marker still finds most
        if server_id and not sandboxed:
            ended = await asyncio.to_thread(kill_marked, server_id)
            if ended:
                self.log.info("%s: ended %d processes it left running", self._log_name, ended)
        # the git clone and other fresh folders are rebuilt at each start: free the disk now
        shutil.rmtree(self.server_dir / "scratch", ignore_errors=True)

    def get_args(self) -> list[str]:
        args = super().get_args()
        # terminals: an interactive (not login) shell, so /etc/profile does not reset the PATH
        # and environment this spawner set
        shell = json.dumps({"shell_command": [shutil.which("bash") or "/bin/sh"]})
        args.append(f"--ServerApp.terminado_settings={shell}")
        if os.geteuid() == 0 and not self.use_bubblewrap():  # the server runs as root: say so
            args.append("--ServerApp.allow_root=True")
        return args

    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        env.update(getattr(self, "_kqi_extra_env", {}))
        # terminals find the server's own python, pip and `kqi` first
        bin_dir = getattr(self, "_kqi_bin_dir", "")
        path = env.get("PATH", os.defpath).split(os.pathsep)
        if bin_dir and bin_dir not in path:
            env["PATH"] = os.pathsep.join([bin_dir, *path])
        if self._kqi_env_fd >= 0:  # for the sandbox's init (--env-fd); bubblewrap gets none
            data = json.dumps(env).encode()
            os.ftruncate(self._kqi_env_fd, 0)
            os.pwrite(self._kqi_env_fd, data, 0)
            return dict(HOST_ENV)
        return env

    async def _signal(self, sig: int) -> bool:
        """Signal the server: in a sandbox its init (pid 1 there: passes SIGINT and SIGTERM on
        to the server, SIGKILL ends the namespace; 0 asks whether it runs), else the whole
        process group (startup wrapper included)."""
        if self.init_pid:
            init = self._init()
            if init is None:
                return False
            if sig:
                try:
                    init.send_signal(sig)
                except psutil.NoSuchProcess:
                    return False
            return True
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            return False
        except PermissionError:
            return await super()._signal(sig)
        return True


async def accepts(ip: str, port: int) -> bool:
    """Whether something accepts TCP connections at ip:port: JupyterHub's own check (a
    wildcard bind is tried on loopback), a refused local connect answers at once."""
    return can_connect(ip, port)


def kill_marked(server_id: str, grace: float = 3.0) -> int:
    """End every process carrying ``KQI_SERVER_ID=server_id``: TERM, then KILL what is still
    running after ``grace`` seconds (a zombie has ended; its parent reaps it). Returns how
    many there were."""
    marked = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("KQI_SERVER_ID") == server_id:
                p.terminate()
                marked.append(p)
        except psutil.Error:
            continue  # gone, or another account's
    count, deadline = len(marked), time.monotonic() + grace
    while marked:
        marked = [p for p in marked if _running(p)]
        if not marked or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for p in marked:
        try:
            p.kill()
        except psutil.Error:
            pass
    return count


def _running(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
