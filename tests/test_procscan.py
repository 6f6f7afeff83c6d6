"""The watched-process scan against real processes: which of them the activity route reports
for a server, read from /proc, and the same answer from the psutil fallback."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from culler.rules import DEFAULT_WATCH, watch_match
from server_ext import procscan
from server_ext.activity import MARKER, watched_processes

#: symlinks to sleep (or bash) named after what they should look like in the process table
SLEEPERS = ["python3", "lmp", "papermill", "x) Z 1 (y", "lmp (2)", "python3.1234567890"]

SERVER = """echo "server $$"
"$BIN/lmp" 600 & echo "child $!"
"$BIN/python3" 600 & echo "kernel $!"
"$BIN/python3.1234567890" 600 & echo "longname $!"
sleep 600 & echo "quiet $!"
"$BIN/sh) S 1 (x" "$DIR/inner.sh" & echo "odd $!"
(exec -a lmp "$BIN/x) Z 1 (y" 600) & echo "parens $!"
(exec -a lmp "$BIN/lmp (2)" 600) & echo "spaces $!"
("$BIN/python3" 0.2 & echo "zombie $!"; exec sleep 600) & echo "zmaker $!"
echo ready
wait
"""
#: run by a bash named "sh) S 1 (x": a parser that splits its stat line at the first ")"
#: takes it for a child of pid 1, and loses its child
INNER = """"$BIN/papermill" 600 & echo "grand $!"
wait
"""


@dataclass
class Tree:
    marker: str
    pids: dict[str, int] = field(default_factory=dict)


def _start(args: list[str], env: dict[str, str], procs: list[subprocess.Popen]) -> None:
    procs.append(
        subprocess.Popen(
            args,
            env=env,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # setsid: out of the caller's session, and one killpg
        )
    )


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Tree]:
    """wrapper (a bash named python3) -> server (bash) -> its processes; outside of it,
    setsid'd processes with this server's marker, another server's, or none."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    sleep, bash = shutil.which("sleep"), shutil.which("bash")
    assert sleep and bash
    for name in SLEEPERS:
        (bindir / name).symlink_to(sleep)
    (bindir / "sh) S 1 (x").symlink_to(bash)
    (tmp_path / "wrapper").mkdir()
    (tmp_path / "wrapper" / "python3").symlink_to(bash)
    (tmp_path / "server.sh").write_text(SERVER)
    (tmp_path / "inner.sh").write_text(INNER)
    t = Tree(marker=f"test-{uuid.uuid4().hex}")
    base = {k: v for k, v in os.environ.items() if k != MARKER}
    base.update(BIN=str(bindir), DIR=str(tmp_path))
    procs: list[subprocess.Popen] = []
    try:
        wrapper = [str(tmp_path / "wrapper" / "python3"), "-c", f"bash {tmp_path}/server.sh; :"]
        _start(wrapper, {**base, MARKER: t.marker}, procs)
        t.pids["wrapper"] = procs[0].pid
        assert procs[0].stdout is not None
        kinds = set(re.findall(r'echo "(\w+)', SERVER + INNER))
        while not kinds <= t.pids.keys():  # subshells' lines may come after "ready"
            kind, _, pid = procs[0].stdout.readline().partition(" ")
            assert kind, "the server script ended early"
            t.pids[kind.strip()] = int(pid or 0)
        py = str(bindir / "python3")
        for kind, env in (
            ("setsid-ours", {**base, MARKER: t.marker}),
            ("setsid-other", {**base, MARKER: "another-server"}),
            ("setsid-none", base),
        ):
            _start([py, "600"], env, procs)
            t.pids[kind] = procs[-1].pid
        _start(["sleep", "600"], {**base, MARKER: t.marker}, procs)
        t.pids["setsid-quiet"] = procs[-1].pid
        _wait_zombie(t.pids["zombie"])
        yield t
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)
            if proc.stdout:
                proc.stdout.close()


def _wait_zombie(pid: int) -> None:
    deadline = time.monotonic() + 10
    while psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the zombie maker's child did not end"
        time.sleep(0.05)


def test_a_servers_watched_processes(tree: Tree) -> None:
    p = tree.pids
    found = watched_processes(p["server"], {p["kernel"]}, tree.marker, DEFAULT_WATCH)
    assert {w.pid: w.name for w in found} == {
        p["child"]: "lmp",
        p["longname"]: "python3.1234567890",  # not cut at 15 characters
        p["grand"]: "papermill",  # below a process whose name holds ") S 1 ("
        p["parens"]: "x) Z 1 (y",  # watched by its command line (lmp), not a zombie
        p["spaces"]: "lmp (2)",
        p["setsid-ours"]: "python3",  # left the tree, carries this server's marker
    }
    assert [w.pid for w in found] == sorted(w.pid for w in found)
    parens = next(w for w in found if w.pid == p["parens"])
    assert parens.cmdline == ("lmp", "600")
    # not: the server, its wrapper (a "python3" with the marker), its kernel, the zombie,
    # sleep, another server's or an unmarked process outside the tree
    for kind in ("server", "wrapper", "kernel", "zombie", "quiet", "setsid-other", "setsid-none"):
        assert p[kind] not in {w.pid for w in found}, kind


def test_without_a_marker_only_descendants(tree: Tree) -> None:
    p = tree.pids
    found = {w.pid for w in watched_processes(p["server"], set(), "", DEFAULT_WATCH)}
    assert p["setsid-ours"] not in found
    assert {p["child"], p["kernel"], p["grand"]} <= found


def test_psutil_fallback_gives_the_same_answer(tree: Tree) -> None:
    p = tree.pids
    for marker in (tree.marker, ""):
        args = (p["server"], {p["kernel"]}, marker, DEFAULT_WATCH)
        assert procscan.scan_proc(*args) == procscan.scan_psutil(*args)


@pytest.mark.parametrize(
    ("cmdline", "watched"),
    [
        (["python3.11", "x.py"], True),
        (["/v/bin/python", "-m", "papermill"], True),
        (["env", "python3.11", "x.py"], False),  # env execs python: that process is watched
        (["sh", "-c", "python3 x.py; gzip y"], False),
        (["sleep", "600"], False),
        (["sh", "-c", "sleep 'pythonic'"], False),
    ],
)
def test_prefilter_never_hides_a_match(cmdline: list[str], watched: bool) -> None:
    """could_match is only a shortcut before watch_match: where that matches, so must it;
    a plain non-match is ruled out without the regular expressions."""
    assert (watch_match("sh", cmdline, DEFAULT_WATCH) is not None) is watched
    if watched:
        assert procscan.could_match("sh", cmdline, DEFAULT_WATCH)
    assert procscan.could_match("sh", ["sleep", "600"], DEFAULT_WATCH) is False


def test_retitled_command_line() -> None:
    """setproctitle writes one space-separated string, as psutil reads it."""
    assert procscan.parse_cmdline(b"papermill: nb.ipynb out.ipynb") == [
        "papermill:",
        "nb.ipynb",
        "out.ipynb",
    ]
    assert procscan.parse_cmdline(b"python3\x00-m\x00papermill\x00") == [
        "python3",
        "-m",
        "papermill",
    ]
