"""The ``kqi`` command in a real JupyterLab terminal of a real server: submit, follow, stop,
continue, list; what a person reads and the exit codes a script sees."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from .jobs import wait_job
from .platform import BIN, Platform

USER, OTHER = "cli-ann", "cli-bob"

TRAIN = """\
import os
root = os.environ["KQI_ROOT"]
numbers = [int(x) for x in open(f"{root}/input/cli-numbers/numbers.txt")]
print("sum is", sum(numbers), flush=True)
with open(f"{root}/output/result.txt", "w") as f:
    f.write(f"sum={sum(numbers)}\\n")
"""


def write_notebook(path: Path, *cells: str, parameters: int | None = None) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    for i, src in enumerate(cells):
        cell = nbformat.v4.new_code_cell(src)
        if i == parameters:
            cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))


class Terminal:
    """Runs ``kqi`` in the user's server; stdout and stderr come back through files in home,
    so they are exactly what the command printed (not the terminal's echo)."""

    def __init__(self, p: Platform, user: str):
        self.p, self.user = p, user

    def kqi(self, args: str, cwd: str = "proj", timeout: float = 60) -> tuple[int, str, str]:
        tag = uuid.uuid4().hex[:8]
        out, err = f".kqi-out-{tag}", f".kqi-err-{tag}"
        status, screen = self.p.run_in_server(
            self.user, f"cd ~/{cwd} && kqi {args} > ~/{out} 2> ~/{err}", timeout=timeout
        )
        home = self.p.home(self.user)
        try:
            return status, (home / out).read_text(), (home / err).read_text()
        except FileNotFoundError:
            raise AssertionError(f"kqi did not run: {screen}") from None
        finally:
            (home / out).unlink(missing_ok=True)
            (home / err).unlink(missing_ok=True)

    def kqi_json(self, args: str, **kw: Any) -> Any:
        status, out, err = self.kqi(args + " --json", **kw)
        assert status == 0, err
        return json.loads(out)


@pytest.fixture(scope="module")
def p(platform: Platform) -> Iterator[Platform]:
    platform.add_dataset("cli-numbers", {"numbers.txt": "1\n2\n3\n"})
    platform.add_user(USER)
    platform.add_user(OTHER)
    proj = platform.home(USER) / "proj"
    proj.mkdir(parents=True, exist_ok=True)
    (proj / "train.py").write_text(TRAIN)
    (proj / "fail.py").write_text("import sys\nprint('giving up', file=sys.stderr)\nsys.exit(7)\n")
    (proj / "sleep.py").write_text("import time\nprint('sleeping', flush=True)\ntime.sleep(300)\n")
    for who in (USER, OTHER):
        assert platform.spawn(who).ok
        platform.wait_ready(who)
    yield platform
    for who in (USER, OTHER):
        platform.stop_server(who)


@pytest.fixture(scope="module")
def term(p: Platform) -> Terminal:
    return Terminal(p, USER)


@pytest.fixture(scope="module")
def trained(p: Platform, term: Terminal) -> dict[str, Any]:
    """A finished job from train.py with the dataset bound."""
    job = term.kqi_json("submit train.py --dataset cli-numbers --name sums")
    return wait_job(p, p.token(USER), job["id"])


def test_submit_script_with_dataset_and_download_output(
    p: Platform, term: Terminal, trained: dict[str, Any]
) -> None:
    assert (trained["status"], trained["exit_code"]) == ("succeeded", 0), trained
    assert trained["name"] == "sums" and trained["command"] == "python train.py"
    status, out, _ = term.kqi(f"logs {trained['id']}")
    assert status == 0 and "sum is 6" in out
    r = p.service(f"api/jobs/{trained['id']}/files/result.txt", p.token(USER))
    assert r.status_code == 200 and r.text == "sum=6\n"


def test_submit_text_and_follow(p: Platform, term: Terminal) -> None:
    status, out, err = term.kqi("submit train.py --dataset cli-numbers")
    assert status == 0, err
    assert "job " in out and "python train.py" in out and "kqi logs -f" in out
    job_id = int(out.split()[1])
    status, out, err = term.kqi(f"logs -f {job_id}", timeout=90)
    assert status == 0 and "sum is 6" in out
    assert f"job {job_id} (train.py): succeeded, exit code 0" in err


def test_command_after_double_dash(p: Platform, term: Terminal) -> None:
    # several words: each stays one argument, whatever it holds
    status, out, err = term.kqi(
        "submit train.py --follow -- python -c 'import sys; print(sys.argv[1:])' 'a b' '$HOME'",
        timeout=90,
    )
    assert status == 0, err
    assert "['a b', '$HOME']" in out
    # one word: a shell string
    status, out, err = term.kqi("submit train.py --follow -- 'echo one && echo two'", timeout=90)
    assert status == 0 and out.split() == ["one", "two"], out + err


def test_failing_script_exit_code(p: Platform, term: Terminal) -> None:
    status, out, err = term.kqi("submit fail.py --follow", timeout=90)
    assert status == 1
    assert "giving up" in out and "failed, exit code 7" in err
    jobs = term.kqi_json("jobs")
    assert (jobs[0]["name"], jobs[0]["status"], jobs[0]["exit_code"]) == ("fail.py", "failed", 7)
    # and the log of a failed job, followed afterwards, still says so through the exit code
    status, _, _ = term.kqi(f"logs -f {jobs[0]['id']}")
    assert status == 1


def test_notebook_with_magic_as_script(p: Platform, term: Terminal) -> None:
    write_notebook(
        p.home(USER) / "nbproj" / "explore.ipynb",
        "%time squares = [i * i for i in range(100)]",
        "print('squares', sum(squares))",
    )
    status, out, err = term.kqi("submit explore.ipynb --follow", cwd="nbproj", timeout=120)
    assert status == 0, out + err
    assert "Wall time" in out and "squares 328350" in out
    job = term.kqi_json("jobs")[0]
    assert job["command"] == "ipython --colors=NoColor explore.py"


def test_papermill_with_parameters(p: Platform, term: Terminal) -> None:
    write_notebook(
        p.home(USER) / "pmproj" / "sweep.ipynb",
        "alpha = 0.0\nlabel = 'default'",
        "print(f'alpha={alpha!r} label={label!r}')\n"
        "open('/kqi/output/seen.txt', 'w').write(f'{alpha} {label}')",
        parameters=0,
    )
    status, out, err = term.kqi(
        "submit sweep.ipynb --mode papermill --param alpha=0.25 --param 'label=two words'"
        " --follow --json",
        cwd="pmproj",
        timeout=180,
    )
    assert status == 0, err
    job = json.loads(out)
    assert job["status"] == "succeeded"
    tok = p.token(USER)
    files = {f["path"] for f in p.service(f"api/jobs/{job['id']}/files", tok).json()}
    assert {"sweep.ipynb", "seen.txt"} <= files
    assert p.service(f"api/jobs/{job['id']}/files/seen.txt", tok).text == "0.25 two words"
    executed = nbformat.reads(
        p.service(f"api/jobs/{job['id']}/files/sweep.ipynb", tok).text, as_version=4
    )
    printed = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert "alpha=0.25 label='two words'" in printed


def test_stop(p: Platform, term: Terminal) -> None:
    job = term.kqi_json("submit sleep.py")
    # stop it once it is under way (it printed)
    deadline = time.monotonic() + 60
    while "sleeping" not in p.service(f"api/jobs/{job['id']}/logs", p.token(USER)).text:
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.3)
    status, out, err = term.kqi(f"stop {job['id']}")
    assert status == 0, err
    assert f"job {job['id']} (sleep.py): " in out
    job = wait_job(p, p.token(USER), job["id"])
    assert job["status"] == "stopped"
    status, out, err = term.kqi(f"logs -f {job['id']}")
    assert status == 1 and "sleeping" in out and "stopped" in err


def test_continue_with_copied_output(p: Platform, term: Terminal, trained: dict[str, Any]) -> None:
    command = (
        "cat /kqi/parent/result.txt; cat /kqi/output/result.txt; echo more > /kqi/output/more.txt"
    )
    status, out, err = term.kqi(
        f"continue {trained['id']} --copy-output --json --follow -- {shlex.quote(command)}",
        timeout=90,
    )
    assert status == 0, err
    job = json.loads(out)
    assert job["continued_from"] == trained["id"] and job["status"] == "succeeded"
    assert err.count("sum=6") == 2  # the log (on stderr with --json): parent and copied output
    tok = p.token(USER)
    files = {f["path"] for f in p.service(f"api/jobs/{job['id']}/files", tok).json()}
    assert files == {"result.txt", "more.txt"}
    earlier = p.service(f"api/jobs/{trained['id']}/files", tok).json()
    assert [f["path"] for f in earlier] == ["result.txt"]  # the previous job is untouched


def test_jobs_table_and_show(p: Platform, term: Terminal, trained: dict[str, Any]) -> None:
    status, out, _ = term.kqi("jobs")
    assert status == 0
    head, *rows = out.splitlines()
    assert head.split() == ["ID", "NAME", "STATUS", "EXIT", "PURPOSE", "CREATED", "TIME"]
    row = next(r for r in rows if r.split()[0] == str(trained["id"]))
    assert row.split()[1:4] == ["sums", "succeeded", "0"]
    status, out, _ = term.kqi(f"show {trained['id']}")
    assert status == 0 and "command:        python train.py" in out
    assert "datasets:       cli-numbers" in out


def test_datasets(p: Platform, term: Terminal) -> None:
    status, out, _ = term.kqi("datasets")
    assert status == 0
    assert out.splitlines()[0].split() == ["NAME", "SIZE", "FILES", "DESCRIPTION"]
    row = next(line for line in out.splitlines() if line.startswith("cli-numbers "))
    assert row.split()[1:4] == ["6", "B", "1"]
    listed = {d["name"]: d for d in term.kqi_json("datasets")}
    assert listed["cli-numbers"]["files"] == 1


def test_refusals_exit_1_with_the_reason(p: Platform, term: Terminal) -> None:
    (p.home(USER) / "proj" / "broken.ipynb").write_text('{"cells": [')
    status, out, err = term.kqi("submit broken.ipynb")
    assert (status, out) == (1, "") and "broken.ipynb is not a valid notebook" in err
    status, _, err = term.kqi("submit train.py --dataset no-such-set")
    assert status == 1 and "no-such-set" in err
    status, _, err = term.kqi("submit missing.py")
    assert status == 1 and "no such file: missing.py" in err


def test_another_users_job_is_not_reachable(
    p: Platform, term: Terminal, trained: dict[str, Any]
) -> None:
    other = Terminal(p, OTHER)
    (p.home(OTHER) / "proj").mkdir(parents=True, exist_ok=True)
    for args in ("show", "logs", "logs -f", "stop", "continue"):
        status, out, err = other.kqi(f"{args} {trained['id']}")
        assert status == 1 and out == "", (args, out, err)
        assert str(trained["id"]) in err or "not found" in err.lower(), err
    assert trained["id"] not in [j["id"] for j in other.kqi_json("jobs")]
    assert wait_job(p, p.token(USER), trained["id"])["status"] == "succeeded"


def run_kqi(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "kqi"), *args], capture_output=True, text=True, timeout=30)


def test_help_and_usage_errors() -> None:
    for cmd in ("submit", "jobs", "logs", "stop", "continue", "datasets", "show"):
        done = run_kqi(cmd, "--help")
        assert done.returncode == 0 and "exit codes:" in done.stdout, cmd
    assert "-- COMMAND" in run_kqi("submit", "--help").stdout
    for args in (["submit"], ["logs", "abc"], ["stop"], ["jobs", "--", "x"], ["frobnicate"]):
        done = run_kqi(*args)
        assert done.returncode == 2 and "usage:" in done.stderr, args
