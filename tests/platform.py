"""Start the real embedded platform (``kqi-hub``: JupyterHub + configurable-http-proxy + kqi
service) on free ports with a temporary data root, and talk to it like a user would."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import requests
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from hub_ext.accounts import COMMENT, unix_name

BIN = Path(sys.executable).parent

TEST_CONFIG = """
c = get_config()
c.JupyterHub.cleanup_servers = True
c.KqiLocalSpawner.isolation = {isolation!r}
c.KqiAuthenticator.password_file = {password_file!r}
# each test platform's own Unix accounts, removed when it stops (tests.platform.remove_accounts)
c.KqiAccounts.prefix = {account_prefix!r}
c.KqiAccounts.uid_min = 200000
c.KqiAccounts.uid_max = 299999
c.JupyterHub.services[0]["command"] += [
    "--KqiService.git_schemes=['https', 'file']",
    "--KqiService.max_running_jobs=3",
    "--KqiService.max_running_jobs_per_user=2",
    "--KqiService.webhook_retry_delay=0.2",
    "--LocalRunner.isolation={isolation}",
    "--LocalRunner.stop_grace=3",
]
c.JupyterHub.services.append({{"name": "test-admin", "api_token": {token!r}, "admin": True}})
"""


@contextmanager
def private_platform(
    name: str, extra_config: str = "", isolation: str = "none"
) -> Iterator[Platform]:
    """A platform of its own for a test module: started in a fresh folder, stopped with
    everything its servers left running, the folder removed (``KQI_TEST_KEEP=1`` keeps it:
    hub log, data root). The folder is short and outside pytest's tmp: it shows up in every
    bwrap command line of the log."""
    base = Path(tempfile.mkdtemp(prefix=f"kqi-{name}-"))
    os.chmod(base, 0o755)  # servers may run as other accounts
    p = Platform(base, isolation=isolation, extra_config=extra_config)
    try:
        p.start()
        yield p
    finally:
        p.stop()
        if os.environ.get("KQI_TEST_KEEP"):
            print(f"\nplatform files kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def remove_accounts(prefix: str) -> None:
    """Remove the Unix accounts (and their groups) a test platform made: ``prefix`` is its own.
    The platform itself never removes an account (a uid is never reused)."""
    for pw in pwd.getpwall():
        if pw.pw_name.startswith(prefix) and pw.pw_gecos.startswith(COMMENT):
            subprocess.run(["userdel", pw.pw_name], capture_output=True)
    for g in grp.getgrall():
        if g.gr_name.startswith(prefix):
            subprocess.run(["groupdel", g.gr_name], capture_output=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Platform:
    def __init__(
        self,
        base: Path,
        isolation: str = "auto",
        extra_config: str = "",
        wrap: list[str] | None = None,
    ):
        """``extra_config``: more lines for the platform's kqi_hub_config.py (e.g. culler
        thresholds), run after the test defaults; ``wrap``: a command prefix for kqi-hub
        (e.g. one that makes it another account)."""
        self.wrap = list(wrap or [])
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.data_root = base / "data"
        self.port, self.hub_port, self.proxy_api, self.service_port = (
            free_port() for _ in range(4)
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_token = secrets.token_hex(16)
        self.account_prefix = f"kt{secrets.token_hex(2)}-"
        self.password_file = base / "admin-password"
        self.log_path = base / "hub.log"
        (base / "kqi_hub_config.py").write_text(
            TEST_CONFIG.format(
                isolation=isolation,
                password_file=str(self.password_file),
                token=self.admin_token,
                account_prefix=self.account_prefix,
            )
            + extra_config
        )
        self.proc: subprocess.Popen | None = None
        self._tokens: dict[str, str] = {}

    # -- life cycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 60, sigint: Any = None) -> None:
        """Start kqi-hub (again: same data root and ports); ``sigint``: the SIGINT disposition
        it inherits (signal.SIG_DFL as from a terminal, SIG_IGN as in the background; None:
        this process's)."""
        env = dict(
            os.environ, KQI_DATA_ROOT=str(self.data_root), KQI_SERVICE_PORT=str(self.service_port)
        )
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                *self.wrap,
                str(BIN / "kqi-hub"),
                f"--port={self.port}",
                f"--JupyterHub.hub_bind_url=http://127.0.0.1:{self.hub_port}",
                f"--ConfigurableHTTPProxy.api_url=http://127.0.0.1:{self.proxy_api}",
            ],
            cwd=self.base,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=None if sigint is None else lambda: signal.signal(signal.SIGINT, sigint),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kqi-hub exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                r = requests.get(f"{self.url}/services/kqi/api/profiles", timeout=2)
                if r.status_code in (200, 403):
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"kqi-hub did not come up:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        # anything left that was started for this data root (servers run in their own sessions)
        for p in psutil.process_iter(["cmdline", "environ"]):
            try:
                cmd = " ".join(p.info["cmdline"] or [])
                env = p.info["environ"] or {}
            except (psutil.Error, TypeError):
                continue
            # ... and what servers of this hub left running (nohup, setsid)
            hub_api = f"http://127.0.0.1:{self.hub_port}/"
            if (
                str(self.data_root) in cmd
                or env.get("KQI_DATA_ROOT") == str(self.data_root)
                or env.get("JUPYTERHUB_API_URL", "").startswith(hub_api)
            ):
                try:
                    p.kill()
                except psutil.Error:
                    pass

        remove_accounts(self.account_prefix)

    def account(self, user: str):
        """The Unix account ``user``'s servers and jobs run as (pwd entry), or None."""
        try:
            return pwd.getpwnam(unix_name(user, self.account_prefix))
        except KeyError:
            return None

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # -- hub API ------------------------------------------------------------------------------
    def api(self, method: str, path: str, token: str | None = None, **kw: Any) -> requests.Response:
        headers = {"Authorization": f"token {token or self.admin_token}"}
        return requests.request(
            method, f"{self.url}/hub/api/{path}", headers=headers, timeout=60, **kw
        )

    def add_user(self, name: str, groups: list[str] = (), admin: bool = False) -> str:
        r = self.api("POST", f"users/{name}", json={"admin": admin})
        assert r.status_code in (201, 409), r.text
        for g in groups:
            r = self.api("POST", f"groups/{g}")
            assert r.status_code in (201, 409), r.text
            r = self.api("POST", f"groups/{g}/users", json={"users": [name]})
            assert r.status_code == 200, r.text
        return self.token(name)

    def token(self, name: str) -> str:
        if name not in self._tokens:
            r = self.api("POST", f"users/{name}/tokens", json={"note": "test"})
            assert r.status_code == 201, r.text
            self._tokens[name] = r.json()["token"]
        return self._tokens[name]

    def spawn(self, user: str, options: dict | None = None, server: str = "") -> requests.Response:
        path = f"users/{user}/servers/{server}" if server else f"users/{user}/server"
        return self.api("POST", path, json=options or {})

    def wait_ready(self, user: str, server: str = "", timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = self.api("GET", f"users/{user}").json()
            srv = model.get("servers", {}).get(server)
            if srv and srv.get("ready"):
                return srv
            if not srv or not srv.get("pending"):
                if srv is None and time.monotonic() > deadline - timeout + 5:
                    raise RuntimeError(f"server of {user} is gone:\n{self.log_tail()}")
            time.sleep(0.5)
        raise RuntimeError(f"server of {user} not ready:\n{self.log_tail()}")

    def stop_server(self, user: str, server: str = "") -> None:
        path = f"users/{user}/servers/{server}" if server else f"users/{user}/server"
        r = self.api("DELETE", path)
        assert r.status_code in (202, 204), r.text
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if server not in self.api("GET", f"users/{user}").json().get("servers", {}):
                return
            time.sleep(0.3)
        raise RuntimeError(f"server of {user} did not stop")

    def server(self, user: str, path: str, method: str = "GET", **kw: Any) -> requests.Response:
        headers = {"Authorization": f"token {self.token(user)}"}
        return requests.request(
            method, f"{self.url}/user/{user}/{path}", headers=headers, timeout=60, **kw
        )

    def service(self, path: str, token: str, method: str = "GET", **kw: Any) -> requests.Response:
        headers = {"Authorization": f"token {token}"}
        return requests.request(
            method, f"{self.url}/services/kqi/{path}", headers=headers, timeout=60, **kw
        )

    # -- data -----------------------------------------------------------------------------------
    def add_dataset(
        self, name: str, files: dict[str, str], groups: list[str] | None = None
    ) -> Path:
        d = self.data_root / "datasets" / name
        for rel, text in files.items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_text(text)
        if groups is not None:
            (self.data_root / "datasets" / f"{name}.toml").write_text(
                f"description = 'test data {name}'\ngroups = {json.dumps(groups)}\n"
            )
        return d

    def home(self, user: str) -> Path:
        return self.data_root / "users" / user / "home"

    # -- inside a server ------------------------------------------------------------------------
    def run_in_server(self, user: str, command: str, timeout: float = 30) -> tuple[int, str]:
        """Run a shell command in a real JupyterLab terminal of the user's server (so inside
        its namespace), return (exit status, output)."""
        return asyncio.run(self._run_in_terminal(user, command, timeout))

    async def _run_in_terminal(self, user: str, command: str, timeout: float) -> tuple[int, str]:
        r = self.server(user, "api/terminals", method="POST")
        assert r.status_code == 200, r.text
        name = r.json()["name"]
        ws_url = f"ws://127.0.0.1:{self.port}/user/{user}/terminals/websocket/{name}"
        req = HTTPRequest(ws_url, headers={"Authorization": f"token {self.token(user)}"})
        conn = await websocket_connect(req)
        marker = uuid.uuid4().hex
        await conn.write_message(json.dumps(["stdin", f"{command}; echo {marker}=$?\r"]))
        try:
            # the terminal echoes the typed line too, but with "$?", not a number
            m, out = await read_terminal_until(conn, rf"{marker}=(\d+)", time.monotonic() + timeout)
            if m:
                return int(m.group(1)), out[: m.start()]
        finally:
            conn.close()
            self.server(user, f"api/terminals/{name}", method="DELETE")
        raise TimeoutError(f"no result from terminal: {out[-2000:]}")


async def read_terminal_until(
    conn: Any, pattern: str, deadline: float
) -> tuple[re.Match[str] | None, str]:
    """Read a terminal's websocket until its output matches ``pattern`` (or the deadline, or
    the terminal closed): the match (None if none) and the output so far."""
    out = ""
    while time.monotonic() < deadline:
        msg = await asyncio.wait_for(conn.read_message(), deadline - time.monotonic())
        if msg is None:
            break
        kind, *rest = json.loads(msg)
        if kind == "stdout":
            out += rest[0]
            m = re.search(pattern, out)
            if m:
                return m, out
    return None, out
