"""The commands a person types: ``kqi-hub`` (first start, --help) and ``kqi`` in a terminal."""

from __future__ import annotations

import subprocess

import pytest
import requests

from .platform import BIN, Platform


def test_kqi_hub_help() -> None:
    out = subprocess.run(
        [str(BIN / "kqi-hub"), "--help"], capture_output=True, text=True, check=True
    )
    assert "KQI_DATA_ROOT" in out.stdout and "kqi-hub --port" in out.stdout


def test_first_start_prints_admin_password_once(tmp_path_factory) -> None:
    p = Platform(tmp_path_factory.mktemp("first"))
    try:
        p.start()
        password = p.password_file.read_text().strip()
        log = p.log_path.read_text()
        assert f"password: {password}" in log and log.count("password:") == 1
        p.stop()
        p.start()  # a restart keeps the account and says nothing more
        assert p.log_path.read_text().count("password:") == 1
        s = requests.Session()
        s.get(f"{p.url}/hub/login", timeout=30)
        r = s.post(
            f"{p.url}/hub/login",
            data={"username": "admin", "password": password, "_xsrf": s.cookies.get("_xsrf")},
            timeout=30,
        )
        assert r.status_code == 200 and "/hub/spawn" in r.url
        r = s.post(
            f"{p.url}/hub/login",
            data={"username": "admin", "password": "wrong", "_xsrf": s.cookies.get("_xsrf")},
            timeout=30,
        )
        assert "Invalid username or password" in r.text
    finally:
        p.stop()


def test_kqi_layout_in_a_terminal(platform: Platform) -> None:
    p = platform
    p.add_dataset("cli-set", {"a": "a"})
    p.add_user("hal")
    assert p.spawn("hal", {"datasets": ["cli-set"]}).ok
    p.wait_ready("hal")
    try:
        status, out = p.run_in_server("hal", "kqi layout")
        assert status == 0 and "/kqi/input/cli-set" in out and " ro " in out
        status, out = p.run_in_server("hal", "kqi --help")
        assert status == 0 and "layout" in out and "status" in out
        # the auto-stop forecast with the embedded defaults: idle after 90 min
        status, out = p.run_in_server("hal", "kqi status")
        assert status == 0 and "auto-stop in" in out and ": idle (" in out, out
        assert "kernels: 0 (0 busy)" in out
        # a watched program keeps it up; once it ended, the status says since when idle counts
        status, out = p.run_in_server(
            "hal",
            'python3 -c "import time; time.sleep(600)" & '
            'until kqi status | grep -q "keeps the server up: pid $!"; do sleep 0.2; done; '
            "kill $! && wait; kqi status",
            timeout=120,
        )
        assert status == 0 and "last watched program: python3, seen " in out, out
    finally:
        p.stop_server("hal")


@pytest.mark.parametrize("argv", [["nonsense"], []])
def test_kqi_bad_usage_exits_2(argv: list[str]) -> None:
    r = subprocess.run([str(BIN / "kqi"), *argv], capture_output=True, text=True)
    assert r.returncode == 2 and "usage: kqi" in r.stderr
