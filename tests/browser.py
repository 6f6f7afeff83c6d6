"""Acting on a real server as a person would: a browser session (hub login + OAuth into the
server, then requests and websocket messages the way JupyterLab sends them), terminals and
kernels through the real Jupyter APIs."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import requests
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from .platform import Platform, read_terminal_until
from .workloads import Workload


def server_prefix(user: str, server: str = "") -> str:
    return f"/user/{user}/{server + '/' if server else ''}"


class Browser:
    """A logged-in browser of ``user`` (signed up through the hub's own form; needs
    ``c.NativeAuthenticator.open_signup = True``)."""

    def __init__(self, p: Platform, user: str):
        self.p, self.user = p, user
        self.s = requests.Session()
        self.page_token: dict[str, str] = {}
        password = "pw-" + secrets.token_hex(8)
        r = self.s.get(f"{p.url}/hub/signup", timeout=30)
        r = self.s.post(
            f"{p.url}/hub/signup",
            data={
                "username": user,
                "signup_password": password,
                "signup_password_confirmation": password,
                "_xsrf": self._xsrf("/hub/"),
            },
            timeout=30,
        )
        assert "signup was successful" in r.text, re.findall(r"alert-\w+.{0,300}", r.text, re.S)
        r = self.s.post(
            f"{p.url}/hub/login?next=/hub/home",
            data={"username": user, "password": password, "_xsrf": self._xsrf("/hub/")},
            timeout=30,
        )
        assert r.status_code == 200 and r.url.endswith("/hub/home"), (r.status_code, r.url)

    def _xsrf(self, path: str) -> str:
        for c in self.s.cookies:
            if c.name == "_xsrf" and c.path.rstrip("/") == path.rstrip("/"):
                return c.value or ""
        return ""

    def open_lab(self, server: str = "") -> None:
        """Load JupyterLab (the OAuth dance into the server happens here) and keep the token
        JupyterLab finds in its page config, as the real page does."""
        prefix = server_prefix(self.user, server)
        r = self.s.get(f"{self.p.url}{prefix}lab", timeout=60)
        assert r.status_code == 200 and r.url.endswith(f"{prefix}lab"), (r.status_code, r.url)
        m = re.search(r'<script id="jupyter-config-data"[^>]*>(.*?)</script>', r.text, re.S)
        assert m, "no page config in the JupyterLab page"
        self.page_token[server] = json.loads(m.group(1)).get("token", "")

    def api(self, path: str, server: str = "", lab_token: bool = True) -> requests.Response:
        """A request as JupyterLab's ServerConnection sends it: cookies, the XSRF header and
        (``lab_token``) the page-config token; ``lab_token=False``: the cookie alone."""
        prefix = server_prefix(self.user, server)
        headers = {
            "X-XSRFToken": self._xsrf(prefix),
            "Sec-Fetch-Mode": "cors",
            "Sec-Fetch-Site": "same-origin",
        }
        if lab_token and self.page_token.get(server):
            headers["Authorization"] = f"token {self.page_token[server]}"
        return self.s.get(f"{self.p.url}{prefix}{path}", headers=headers, timeout=30)

    def type_in_terminal(
        self, name: str, text: str, server: str = "", connected: Any = None
    ) -> None:
        """Keystrokes into an open terminal over its websocket, with the browser's cookies;
        ``connected()`` is called once the websocket is open, before typing."""
        cookie = "; ".join(f"{c.name}={c.value}" for c in self.s.cookies)
        prefix = server_prefix(self.user, server)
        ws = f"ws://127.0.0.1:{self.p.port}{prefix}terminals/websocket/{name}"
        headers = {"Cookie": cookie, "Sec-Fetch-Mode": "websocket", "Origin": self.p.url}

        async def go() -> None:
            conn = await websocket_connect(HTTPRequest(ws, headers=headers))
            if connected is not None:
                await asyncio.to_thread(connected)
            await conn.write_message(json.dumps(["stdin", text]))
            await asyncio.sleep(0.5)
            conn.close()

        asyncio.run(go())


class KeepAlive:
    """An open JupyterLab tab: polls the server every ``every`` seconds until closed."""

    every = 2.0

    def __init__(self, browser: Browser, server: str = ""):
        self.browser, self.server = browser, server
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.browser.api("api/kernels", self.server)
            except requests.RequestException:
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


# -- terminals and kernels through the Jupyter APIs (with the user's API token) -------------------
def _auth(p: Platform, user: str) -> dict[str, str]:
    return {"Authorization": f"token {p.token(user)}"}


def start_in_terminal(
    p: Platform,
    user: str,
    command: str,
    server: str = "",
    ready: Callable[[], bool] | None = None,
    timeout: float = 60,
) -> str:
    """Open a terminal, type ``command``, leave the terminal open; return its name. Returns
    once ``ready()`` is true (the caller's condition: e.g. the process is seen by the server),
    polled while the terminal stays open; without ``ready``, once the shell has run the
    command and echoed a marker typed after it (for commands that return to the prompt)."""
    prefix = f"{server}/" if server else ""
    r = p.server(user, f"{prefix}api/terminals", method="POST")
    assert r.status_code == 200, r.text
    name = r.json()["name"]
    ws = f"ws://127.0.0.1:{p.port}{server_prefix(user, server)}terminals/websocket/{name}"
    marker = uuid.uuid4().hex

    async def go() -> None:
        conn = await websocket_connect(HTTPRequest(ws, headers=_auth(p, user)))
        deadline = time.monotonic() + timeout
        try:
            if ready is not None:
                await conn.write_message(json.dumps(["stdin", command + "\r"]))
                while not await asyncio.to_thread(ready):
                    assert time.monotonic() < deadline, f"not ready in {timeout:g} s: {command}"
                    await asyncio.sleep(0.3)
                return
            # the marker comes after the command: echoed once the command has returned
            typed = f"{command}\recho {marker}-$((6*7))\r"
            await conn.write_message(json.dumps(["stdin", typed]))
            m, out = await read_terminal_until(conn, f"{marker}-42", deadline)
            assert m, out[-2000:]
        finally:
            conn.close()

    asyncio.run(go())
    return name


def start_workload(p: Platform, user: str, w: Workload, server: str = "") -> int:
    """Start a watch-list workload in a terminal as a user would, and return its pid once the
    server's own scan reports it by the name it should have; with ``w.close_terminal`` the
    terminal is closed after that, and it is still reported once the terminal has gone."""
    prefix = f"{server}/" if server else ""

    def seen() -> int:
        r = p.server(user, f"{prefix}api/kqi/activity")
        assert r.status_code == 200, r.text
        for x in r.json()["watched_processes"]:
            if w.marker in " ".join(x["cmdline"]) and x["name"].startswith(w.watch):
                return x["pid"]
        return 0

    name = start_in_terminal(p, user, w.command, server, ready=lambda: bool(seen()))
    if w.close_terminal:
        close_terminal(p, user, name, server)
        terminals = p.server(user, f"{prefix}api/terminals").json()
        assert name not in {t["name"] for t in terminals}, terminals
    pid = seen()
    assert pid, f"{w.name} not seen in {user}'s server after its terminal closed"
    return pid


def close_terminal(p: Platform, user: str, name: str, server: str = "") -> None:
    prefix = f"{server}/" if server else ""
    r = p.server(user, f"{prefix}api/terminals/{name}", method="DELETE")
    assert r.status_code == 204, r.text


def start_kernel(p: Platform, user: str, server: str = "") -> str:
    prefix = f"{server}/" if server else ""
    r = p.server(user, f"{prefix}api/kernels", method="POST", json={"name": "python3"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def run_cell(
    p: Platform,
    user: str,
    kernel: str,
    code: str,
    until_busy: bool = False,
    server: str = "",
    timeout: float = 120,
) -> dict[str, Any]:
    """Run a cell through the kernel's websocket as JupyterLab does: ``{"reply"`` (the
    execute_reply's content; ``{"status": "busy"}`` when ``until_busy`` and the kernel said it
    is busy), ``"stdout"`` (what it printed), ``"died"}`` ("restarting" / "dead" / "closed"
    when the kernel died instead of replying, else "")."""
    ws = f"ws://127.0.0.1:{p.port}{server_prefix(user, server)}api/kernels/{kernel}/channels"
    msg_id = uuid.uuid4().hex
    request = {
        "header": {
            "msg_id": msg_id,
            "username": user,
            "session": uuid.uuid4().hex,
            "msg_type": "execute_request",
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": {"code": code, "silent": False, "store_history": True, "allow_stdin": False},
        "channel": "shell",
    }

    async def go() -> dict[str, Any]:
        conn = await websocket_connect(HTTPRequest(ws, headers=_auth(p, user)))
        await conn.write_message(json.dumps(request))
        out, deadline = "", time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                raw = await asyncio.wait_for(conn.read_message(), deadline - time.monotonic())
                if raw is None:
                    return {"reply": None, "stdout": out, "died": "closed"}
                msg = json.loads(raw)
                kind, content = msg["header"]["msg_type"], msg["content"]
                if kind == "status" and content["execution_state"] in ("restarting", "dead"):
                    return {"reply": None, "stdout": out, "died": content["execution_state"]}
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                if kind == "stream":
                    out += content["text"]
                elif kind == "execute_reply":
                    return {"reply": content, "stdout": out, "died": ""}
                elif until_busy and kind == "status" and content["execution_state"] == "busy":
                    return {"reply": {"status": "busy"}, "stdout": out, "died": ""}
        finally:
            conn.close()
        raise TimeoutError(f"no reply to {code[:80]!r}; printed {out[-500:]!r}")

    return asyncio.run(go())


def execute(
    p: Platform, user: str, kernel: str, code: str, wait: bool = True, server: str = ""
) -> dict[str, Any]:
    """Run a cell; its execute_reply's content. ``wait``: until its reply (else return as
    soon as the kernel said it is busy)."""
    res = run_cell(p, user, kernel, code, until_busy=not wait, server=server, timeout=60)
    if res["reply"] is None:
        raise RuntimeError(f"the kernel died ({res['died']}) running {code[:80]!r}")
    return res["reply"]
