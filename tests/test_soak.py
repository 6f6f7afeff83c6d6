"""scripts/soak.sh: real runs against a tiny throwaway test folder (a few seconds in all)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[1] / "scripts" / "soak.sh"
MARKER = b"kqi-soak-load"  # in the command line of the --load busy loop

TINY = """
from pathlib import Path

import pytest


def test_always():
    pass


def test_second_run_fails():
    counter = Path(__file__).with_name("count.txt")
    n = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(n))
    assert n != 2, "fails on the 2nd run only"


def test_skipped():
    pytest.skip("never runs")
"""

# records the --load busy loops it sees (pid:niceness), and its own niceness, then waits for
# a file to appear when told to (SOAK_PROBE_WAIT), so the test can interrupt the soak
PROBE = """
import os
import time
from pathlib import Path


def test_probe():
    here = Path(__file__).parent
    seen = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"kqi-soak-load" in (proc / "cmdline").read_bytes():
                stat = (proc / "stat").read_text()
                seen.append(f"{proc.name}:{stat.rsplit(')', 1)[1].split()[16]}")
        except OSError:
            continue
    (here / "seen.txt").write_text(f"{os.nice(0)} {' '.join(seen)}")
    if os.environ.get("SOAK_PROBE_WAIT"):
        time.sleep(30)
"""


def tiny_folder(tmp_path: Path, source: str) -> Path:
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "test_tiny.py").write_text(source)
    return folder


def isolated(folder: Path) -> list[str]:
    """pytest args that run only the tiny tests (no repo config, conftest or plugins)."""
    return ["-q", "-c", "/dev/null", f"--rootdir={folder}", f"--confcutdir={folder}", str(folder)]


def soak_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    (tmp_path / "tmpdir").mkdir(exist_ok=True)
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "TMPDIR": str(tmp_path / "tmpdir")}
    env.pop("KQI_SOAK_KEEP", None)
    return {**env, **extra}


def soak(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SOAK), *args],
        cwd=tmp_path,  # not the repo root: the script finds its way
        env=soak_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def count_line(out: str, test: str) -> str:
    (line,) = [line.split()[0] for line in out.splitlines() if line.endswith(f"  {test}")]
    return line


def gone(pid: int) -> bool:
    """Whether the busy loop `pid` is gone (killed here if not, not to leave it spinning)."""
    try:
        left = MARKER in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    if left:
        os.kill(pid, signal.SIGKILL)
    return not left


def test_counts_a_flaky_test(tmp_path: Path) -> None:
    r = soak(tmp_path, "3", *isolated(tiny_folder(tmp_path, TINY)))
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout
    assert "fails on the 2nd run only" in out  # the failing run's own traceback is shown
    assert count_line(out, "test_tiny.py::test_second_run_fails") == "2/3"
    assert count_line(out, "test_tiny.py::test_always") == "3/3"
    assert count_line(out, "test_tiny.py::test_skipped") == "skipped"
    report = out[out.index("=== soak: 3 runs") :]
    assert report.index("::test_second_run_fails") < report.index("::test_always")  # failing first
    assert "total: 3 tests over 3 runs: 1 passed every run, 1 failed at least once" in out
    assert re.search(r"^run 2: \d+\.\ds, pytest exit code 1 \(tests failed\)$", out, re.M)
    assert re.search(r"^run 3: \d+\.\ds, pytest exit code 0$", out, re.M)
    assert out.rstrip().endswith("soak: FAILED")
    assert not list((tmp_path / "tmpdir").iterdir())  # the junit XML folder is removed


def test_all_passing_exits_0_and_keeps_the_xml_on_request(tmp_path: Path) -> None:
    args = isolated(tiny_folder(tmp_path, TINY))
    r = soak(tmp_path, "2", *args, "-k", "not second_run", KQI_SOAK_KEEP="1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert count_line(r.stdout, "test_tiny.py::test_always") == "2/2"
    assert "soak: PASSED" in r.stdout
    (kept,) = (tmp_path / "tmpdir").iterdir()
    assert sorted(p.name for p in kept.iterdir()) == ["run1.xml", "run2.xml", "runs.tsv"]


def test_no_tests_collected_is_a_failure(tmp_path: Path) -> None:
    r = soak(tmp_path, "1", *isolated(tiny_folder(tmp_path, TINY)), "-k", "no_such_test")
    assert r.returncode == 1
    assert "pytest exit code 5 (no tests collected)" in r.stdout


@pytest.mark.parametrize("args", [[], ["0"], ["abc"], ["-2"], ["1.5"], ["--load", "3"]])
def test_bad_n_is_a_usage_error(tmp_path: Path, args: list[str]) -> None:
    r = soak(tmp_path, *args)
    assert r.returncode == 2
    assert "N must be a positive integer" in r.stderr
    assert "Usage: scripts/soak.sh N [--load]" in r.stderr


def test_help(tmp_path: Path) -> None:
    r = soak(tmp_path, "--help")
    assert r.returncode == 0
    assert r.stdout.startswith("Usage: scripts/soak.sh N [--load] [pytest args...]")


def test_load_runs_a_busy_loop_during_the_soak_only(tmp_path: Path) -> None:
    folder = tiny_folder(tmp_path, PROBE)
    r = soak(tmp_path, "1", "--load", *isolated(folder))
    assert r.returncode == 0, r.stdout + r.stderr
    pid = re.search(r"--load is on: a busy loop \(pid (\d+)\)", r.stdout).group(1)
    niceness, *seen = (folder / "seen.txt").read_text().split()
    assert f"{pid}:{niceness}" in seen  # it ran, at the tests' own priority
    assert gone(int(pid))
    assert "soak: load stopped" in r.stdout


def test_ctrl_c_stops_the_load(tmp_path: Path) -> None:
    folder = tiny_folder(tmp_path, PROBE)
    proc = subprocess.Popen(
        [str(SOAK), "2", "--load", *isolated(folder)],
        cwd=tmp_path,
        env=soak_env(tmp_path, SOAK_PROBE_WAIT="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
        # as from a terminal: a shell cannot trap a SIGINT ignored when it started (this
        # test may itself run in the background, where SIGINT is ignored)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 60
        while not (folder / "seen.txt").exists():
            assert time.monotonic() < deadline and proc.poll() is None, "no test started"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, out
    pid = re.search(r"busy loop \(pid (\d+)\)", out).group(1)
    assert pid in (folder / "seen.txt").read_text()
    assert gone(int(pid))
    assert "=== soak: run 2 of 2" not in out
