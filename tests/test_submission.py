"""build_submission: which files a job gets, which command runs them, what is refused.

The commands are run for real (python, ipython, papermill) on the unpacked archive, so quoting
and conversion are checked by what the tools do, not by string comparison alone."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import nbformat
import pytest

from server_ext.submission import SubmissionError, build_submission

BIN = Path(sys.executable).parent


def members(archive: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


def unpack_and_run(archive: bytes, command: str, tmp: Path) -> subprocess.CompletedProcess:
    """Run ``command`` as a job would: in the unpacked code folder, with KQI_ROOT."""
    code, kqi = tmp / "kqi" / "code", tmp / "kqi"
    (kqi / "output").mkdir(parents=True)
    code.mkdir()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(code, filter="data")
    env = dict(os.environ, KQI_ROOT=str(kqi), PATH=f"{BIN}:{os.environ['PATH']}")
    return subprocess.run(
        ["sh", "-c", command], cwd=code, env=env, capture_output=True, text=True, timeout=120
    )


def notebook(path: Path, *sources: str, kernel: bool = True, tags: dict | None = None) -> Path:
    nb = nbformat.v4.new_notebook()
    for i, src in enumerate(sources):
        cell = nbformat.v4.new_code_cell(src)
        if tags and i in tags:
            cell.metadata["tags"] = tags[i]
        nb.cells.append(cell)
    if kernel:
        nb.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A home with a project folder holding code, data, and tool clutter."""
    home = tmp_path / "home"
    proj = home / "proj"
    (proj / "lib").mkdir(parents=True)
    (proj / "train.py").write_text("import lib.util\nprint(lib.util.X)\n")
    (proj / "lib" / "__init__.py").write_text("")
    (proj / "lib" / "util.py").write_text("X = 'from lib'\n")
    (proj / "data.csv").write_text("a,b\n1,2\n")
    (proj / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(proj / "run.sh", 0o755)
    for junk in (".ipynb_checkpoints/train-checkpoint.py", "__pycache__/x.pyc", ".git/HEAD"):
        (proj / junk).parent.mkdir(parents=True, exist_ok=True)
        (proj / junk).write_text("junk")
    (proj / "lib" / "__pycache__").mkdir()
    (proj / "lib" / "__pycache__" / "util.cpython-311.pyc").write_text("junk")
    (home / "other.py").write_text("print('not in proj')\n")
    return home


def test_script_sends_its_folder_without_tool_clutter(project: Path, tmp_path: Path) -> None:
    spec, archive = build_submission(
        project, "proj/train.py", "script", spec={"datasets": ["mnist"], "profile": None}
    )
    assert spec == {"name": "train.py", "command": "python train.py", "datasets": ["mnist"]}
    got = members(archive)
    assert sorted(got) == ["data.csv", "lib/__init__.py", "lib/util.py", "run.sh", "train.py"]
    assert all(m.isreg() for m in got.values())
    assert got["run.sh"].mode & 0o111 and not got["data.csv"].mode & 0o111
    # the command runs in the code folder with the file at its top
    done = unpack_and_run(archive, spec["command"], tmp_path / "run")
    assert (done.returncode, done.stdout) == (0, "from lib\n"), done.stderr


def test_mode_defaults_from_suffix_and_spec_fields_pass_through(project: Path) -> None:
    fields = {
        "name": "exp 1",
        "profile": "gpu",
        "datasets": ["a", "b"],
        "parent": [3, 4],
        "purpose": "inference",
        "env": {"SEED": "1"},
        "timeout_seconds": 60,
        "notify_url": "https://example.org/hook",
    }
    spec, _ = build_submission(project, "proj/train.py", spec=fields)
    assert spec == {**fields, "command": "python train.py"}
    spec, _ = build_submission(project, "proj/train.py", command="python train.py --fast")
    assert spec["command"] == "python train.py --fast"


def test_include_globs(project: Path) -> None:
    _, archive = build_submission(project, "proj/train.py", include=["lib"])
    assert sorted(members(archive)) == ["lib/__init__.py", "lib/util.py", "train.py"]
    _, archive = build_submission(project, "proj/train.py", include=["**/*.py", "*.csv"])
    assert sorted(members(archive)) == ["data.csv", "lib/__init__.py", "lib/util.py", "train.py"]
    _, archive = build_submission(project, "proj/train.py", include=["*.sh"])
    assert sorted(members(archive)) == ["run.sh", "train.py"]  # the file itself always goes
    with pytest.raises(SubmissionError, match="'*.txt' matches no file"):
        build_submission(project, "proj/train.py", include=["*.txt"])
    for bad in ("../other.py", "/etc/passwd", "lib/../../other.py"):
        with pytest.raises(SubmissionError, match="relative to the file's folder"):
            build_submission(project, "proj/train.py", include=[bad])


def test_links_to_folders_are_not_followed(project: Path, tmp_path: Path) -> None:
    """Home holds links into /kqi (~/input, ~/jobs): the job has its own /kqi, so they are not
    copied; a link to a file is sent as the file."""
    big = tmp_path / "kqi" / "input" / "ds"
    big.mkdir(parents=True)
    (big / "huge.bin").write_bytes(b"x" * 1000)
    (project / "input").symlink_to(tmp_path / "kqi" / "input")
    (project / "settings.py").symlink_to(project / "proj" / "lib" / "util.py")
    spec, archive = build_submission(project, "other.py")
    got = members(archive)
    assert "settings.py" in got and got["settings.py"].isreg()
    assert not any(n.startswith("input") for n in got)
    assert "proj/train.py" in got and spec["command"] == "python other.py"


def test_path_must_stay_in_root(project: Path, tmp_path: Path) -> None:
    (tmp_path / "outside.py").write_text("print(1)\n")
    for bad in ("../outside.py", str(tmp_path / "outside.py"), "proj/../../outside.py"):
        with pytest.raises(SubmissionError) as e:
            build_submission(project, bad)
        assert e.value.status == 400 and "root folder" in str(e.value)
    with pytest.raises(SubmissionError, match="no such file: proj/nope.py") as e:
        build_submission(project, "proj/nope.py")
    assert e.value.status == 404
    # a link the platform makes in home (~/git -> /kqi/git) is a path inside the root
    (tmp_path / "kqi-git").mkdir()
    (tmp_path / "kqi-git" / "train.py").write_text("print('git')\n")
    (project / "git").symlink_to(tmp_path / "kqi-git")
    spec, archive = build_submission(project, "git/train.py")
    assert list(members(archive)) == ["train.py"] and spec["command"] == "python train.py"


def test_refusals(project: Path) -> None:
    notebook(project / "proj" / "nb.ipynb", "print(1)")
    cases = [
        (dict(path="proj/train.py", mode="papermill"), "runs a .ipynb file"),
        (dict(path="proj/nb.ipynb", mode="script"), "runs a .py file"),
        (dict(path="proj/train.py", mode="batch"), "mode must be one of"),
        (dict(path="proj/train.py", parameters={"a": 1}), "parameters are for mode papermill"),
        (dict(path="proj/train.py", spec={"gpus": 2}), "unknown job field.*gpus"),
        (dict(path="proj/train.py", command="  "), "command must be"),
        (
            dict(path="proj/nb.ipynb", mode="papermill", parameters={"a b": 1}),
            "not a Python identifier",
        ),
    ]
    for kw, message in cases:
        with pytest.raises(SubmissionError, match=message):
            build_submission(project, **kw)


def test_size_cap(project: Path) -> None:
    (project / "proj" / "weights.bin").write_bytes(os.urandom(64 * 1024))
    with pytest.raises(SubmissionError, match="over the 0 MiB limit.*include") as e:
        build_submission(project, "proj/train.py", max_bytes=32 * 1024)
    assert e.value.status == 413
    _, archive = build_submission(project, "proj/train.py", include=["lib"], max_bytes=32 * 1024)
    assert "weights.bin" not in members(archive)


@pytest.mark.parametrize(
    "content",
    [
        "this is not json",
        json.dumps({"cells": [], "nbformat": 4}),  # metadata and nbformat_minor missing
        json.dumps(
            {
                "cells": [{"cell_type": "code", "source": "x"}],  # no outputs, no metadata
                "metadata": {},
                "nbformat": 4,
                "nbformat_minor": 5,
            }
        ),
    ],
)
def test_malformed_notebook_refused(project: Path, content: str) -> None:
    (project / "proj" / "broken.ipynb").write_text(content)
    for mode in ("notebook-script", "papermill"):
        with pytest.raises(SubmissionError, match="broken.ipynb is not a valid notebook") as e:
            build_submission(project, "proj/broken.ipynb", mode)
        assert e.value.status == 400


def test_notebook_script_runs_magics_with_ipython(project: Path, tmp_path: Path) -> None:
    notebook(
        project / "proj" / "analysis.ipynb",
        "%time total = sum(range(1000))",
        "import lib.util\nprint('total', total, lib.util.X)",
    )
    spec, archive = build_submission(project, "proj/analysis.ipynb")
    assert spec["name"] == "analysis.ipynb"
    assert spec["command"] == "ipython --colors=NoColor analysis.py"
    got = members(archive)
    assert {"analysis.ipynb", "analysis.py", "lib/util.py"} <= set(got)
    done = unpack_and_run(archive, spec["command"], tmp_path / "run")
    assert done.returncode == 0, done.stderr
    assert "Wall time" in done.stdout and "total 499500 from lib" in done.stdout


def test_notebook_script_name_clash_refused(project: Path) -> None:
    notebook(project / "proj" / "train.ipynb", "print(1)")
    with pytest.raises(SubmissionError, match="train.py is both a file"):
        build_submission(project, "proj/train.ipynb")
    spec, archive = build_submission(project, "proj/train.ipynb", include=["lib"])
    assert "train.py" in members(archive) and spec["command"].endswith(" train.py")


def test_papermill_parameters_quoted_and_typed(project: Path, tmp_path: Path) -> None:
    notebook(
        project / "proj" / "sweep nb.ipynb",
        "lr = 0.0\nname = ''\nepochs = 0\nflag = False\nlayers = []\nnote = None",
        "import json\nprint(json.dumps(dict(lr=lr, name=name, epochs=epochs, flag=flag,"
        " layers=layers, note=note)))",
        tags={0: ["parameters"]},
    )
    params = {
        "lr": 0.5,
        "name": 'it\'s a $HOME `x` "run"; rm -rf /',
        "epochs": 3,
        "flag": True,
        "layers": [64, 32],
        "note": "42",  # text that looks like a number stays text
    }
    spec, archive = build_submission(project, "proj/sweep nb.ipynb", "papermill", parameters=params)
    cmd = spec["command"]
    assert cmd.startswith(
        "kqi-papermill 'sweep nb.ipynb' \"${KQI_ROOT:-/kqi}\"/output/'sweep nb.ipynb'"
    )
    done = unpack_and_run(archive, cmd, tmp_path / "run")
    assert done.returncode == 0, done.stderr
    out = nbformat.read(str(tmp_path / "run" / "kqi" / "output" / "sweep nb.ipynb"), 4)
    printed = json.loads(out.cells[-1].outputs[0]["text"])
    assert printed == params


def test_papermill_without_kernelspec_uses_python3(project: Path, tmp_path: Path) -> None:
    notebook(project / "proj" / "plain.ipynb", "print('ran')", kernel=False)
    spec, archive = build_submission(project, "proj/plain.ipynb", "papermill")
    assert spec["command"].endswith(" -k python3 -l python")
    done = unpack_and_run(archive, spec["command"], tmp_path / "run")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "kqi" / "output" / "plain.ipynb").exists()
