"""The workspace walk (pure file-system part) over real folders in a tmp dir: sizes on disk,
links never followed, hard links once, deep trees within a few fds, a swapped folder skipped."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from hub_ext.service import du

MiB = 2**20


def blocks(path: Path) -> int:
    return os.lstat(path).st_blocks * 512


def write(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))  # random: no file system stores it in fewer blocks
    return path


def test_sums_blocks_of_files_and_folders(tmp_path: Path) -> None:
    home = tmp_path / "home"
    a = write(home / "a.bin", 3 * MiB)
    b = write(home / "sub" / "deeper" / "b.bin", 1 * MiB)
    t = du.measure([home])
    folders = [home, home / "sub", home / "sub" / "deeper"]
    assert t.bytes == blocks(a) + blocks(b) + sum(blocks(f) for f in folders)
    assert (t.files, t.folders) == (2, 3)


def test_links_are_not_followed_and_hard_links_count_once(tmp_path: Path) -> None:
    outside = write(tmp_path / "outside" / "big.bin", 8 * MiB)
    home, jobs = tmp_path / "home", tmp_path / "jobs"
    data = write(home / "data.bin", 2 * MiB)
    (home / "to-file").symlink_to(outside)
    (home / "to-folder").symlink_to(outside.parent, target_is_directory=True)
    (home / "loop").symlink_to(home, target_is_directory=True)
    os.link(data, home / "again.bin")
    (jobs / "1").mkdir(parents=True)
    os.link(data, jobs / "1" / "copy.bin")  # across the two roots: still one file
    t = du.measure([home, jobs, tmp_path / "missing"])
    assert 2 * MiB <= t.bytes < 2 * MiB + 256 * 1024, t
    assert t.files == 4  # data.bin once, three links (a link takes no block here)


def test_deep_tree_with_few_fds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deeper than KEEP_OPEN: folders whose fds were closed are reopened, all is counted."""
    monkeypatch.setattr(du, "KEEP_OPEN", 4)
    root = tmp_path / "home"
    fd = os.open(tmp_path, os.O_RDONLY)
    os.mkdir("home", dir_fd=fd)
    depth = 40
    for i in range(depth):  # a chain, with a file and a side folder on every level
        nxt = os.open("home" if i == 0 else "d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nxt
        os.mkdir("d", dir_fd=fd)
        os.mkdir("side", dir_fd=fd)
        with open(os.open("f", os.O_WRONLY | os.O_CREAT, dir_fd=fd), "wb") as f:
            f.write(b"x" * 5000)
    os.close(fd)
    opened = len(os.listdir("/proc/self/fd"))
    seen_max = 0
    real_scan = du._scan

    def scan(fd: int, dev: int, tally: du.Tally):
        nonlocal seen_max
        seen_max = max(seen_max, len(os.listdir("/proc/self/fd")) - opened)
        return real_scan(fd, dev, tally)

    monkeypatch.setattr(du, "_scan", scan)
    t = du.measure([root])
    assert t.files == depth
    assert t.folders == 1 + 2 * depth
    assert seen_max <= du.KEEP_OPEN + 3, seen_max  # root, the new one, the listing's fd


def test_folder_swapped_for_a_link_is_skipped(tmp_path: Path, monkeypatch) -> None:
    """A folder listed, then replaced by a link to elsewhere before it is entered: the walk
    does not go there (the open refuses the link)."""
    home = tmp_path / "home"
    (home / "a").mkdir(parents=True)
    write(tmp_path / "elsewhere" / "secret.bin", 4 * MiB)
    real_open = du._open_checked

    def swap_then_open(parent: int, name: str, ino: int, dev: int):
        if name == "a":
            os.rmdir(home / "a")
            (home / "a").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
        return real_open(parent, name, ino, dev)

    monkeypatch.setattr(du, "_open_checked", swap_then_open)
    assert du.measure([home]).bytes < MiB


def test_stop_ends_the_walk(tmp_path: Path) -> None:
    (tmp_path / "home" / "a").mkdir(parents=True)
    stop = threading.Event()
    stop.set()
    with pytest.raises(du.Stopped):
        du.measure([tmp_path / "home"], stop)


def test_lower_this_thread_only_lowers_that_thread() -> None:
    def work() -> None:
        du.lower_this_thread()
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    seen: list[int] = []
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == [19]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before
