"""``kqi-papermill`` (papermill mode's command): papermill's behaviour, the kernel started early."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import psutil
import pytest

from server_ext.papermill_run import kernel_name

BIN = Path(sys.executable).parent


def notebook(path: Path, kernel: str | None = "python3") -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("lr = 0.1\ntag = 'x'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        params,
        nbformat.v4.new_code_cell("print(f'lr={lr!r} tag={tag!r}')"),
        nbformat.v4.new_code_cell(  # a kernel ended gracefully runs its exit handlers
            "import atexit\natexit.register(lambda: open('bye.txt', 'w').write('bye'))"
        ),
    ]
    if kernel:
        nb.metadata["kernelspec"] = {"name": kernel, "display_name": "k", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_kernel_name_only_when_the_arguments_make_it_plain(tmp_path: Path) -> None:
    nb = str(notebook(tmp_path / "a.ipynb", kernel="python3"))
    bare = str(notebook(tmp_path / "b.ipynb", kernel=None))
    assert kernel_name([nb, "out.ipynb"]) == "python3"
    assert kernel_name([nb, "out.ipynb", "-r", "tag", "-k", "-p", "lr", "1"]) == "python3"
    assert kernel_name([bare, "out.ipynb", "-k", "other", "-l", "python"]) == "other"
    assert kernel_name([bare, "out.ipynb"]) is None  # papermill says what is missing
    assert kernel_name([nb, "out.ipynb", "--cwd", "/tmp"]) is None  # not modelled: plain
    assert kernel_name([nb]) is None and kernel_name(["-", "out.ipynb"]) is None
    assert kernel_name([nb, "out.ipynb", "-p", "lr"]) is None  # incomplete


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "kqi-papermill"), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def outputs(path: Path) -> str:
    nb = json.loads(path.read_text())
    texts = (o.get("text", "") for c in nb["cells"] for o in c.get("outputs", []))
    return "".join("".join(t) if isinstance(t, list) else t for t in texts)


@pytest.mark.parametrize("extra", [[], ["--log-output"]], ids=["early-kernel", "plain"])
def test_runs_the_notebook_with_typed_parameters(tmp_path: Path, extra: list[str]) -> None:
    notebook(tmp_path / "nb.ipynb")
    before = {p.pid for p in psutil.process_iter()}
    done = run(["nb.ipynb", "out.ipynb", "-p", "lr", "0.01", "-r", "tag", "-k", *extra], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "lr=0.01 tag='-k'" in outputs(tmp_path / "out.ipynb")
    assert "Could not destroy" not in done.stderr
    assert (tmp_path / "bye.txt").read_text() == "bye"
    # no kernel left behind
    left = [
        p
        for p in psutil.process_iter(["cmdline"])
        if p.pid not in before and "ipykernel_launcher" in " ".join(p.info["cmdline"] or [])
    ]
    assert not left


def test_a_failing_cell_and_an_unknown_kernel_fail_as_papermill_does(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("raise ValueError('boom')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "k", "language": "python"}
    nbformat.write(nb, tmp_path / "bad.ipynb")
    done = run(["bad.ipynb", "out.ipynb"], tmp_path)
    assert done.returncode == 1 and "boom" in done.stderr
    assert "boom" in (tmp_path / "out.ipynb").read_text()  # the output notebook shows where
    notebook(tmp_path / "nb.ipynb")
    done = run(["nb.ipynb", "out2.ipynb", "-k", "nosuchkernel"], tmp_path)
    assert done.returncode == 1 and "No such kernel named nosuchkernel" in done.stderr
