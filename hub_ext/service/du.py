"""Disk usage of a user's folders, walked as root without following the user's links.

Every folder is entered through an ``O_NOFOLLOW | O_DIRECTORY`` fd relative to its parent's fd
and checked to be the folder that was listed (same device and inode), so a user who swaps a
folder for a link while it is walked gets it skipped, never walked. Sizes are what the files
take on disk (``st_blocks * 512``: sparse files count what they hold), each (device, inode) once
(hard links), on the root's device only (nothing mounted below it).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .safefiles import DIR_FLAGS, NOT_THERE, open_root

#: folder fds kept open along the path being walked; deeper ones are reopened from their parent
KEEP_OPEN = 64
_SKIPPED = NOT_THERE | {errno.EACCES, errno.EPERM}


class Stopped(Exception):
    """The walk was asked to stop (the service is ending)."""


@dataclass
class Tally:
    bytes: int = 0
    files: int = 0
    folders: int = 0
    seen: set[tuple[int, int]] = field(default_factory=set, repr=False)

    def add(self, st: os.stat_result) -> None:
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            if key in self.seen:
                return  # a hard link to a file counted already
            self.seen.add(key)
        self.bytes += st.st_blocks * 512
        if stat.S_ISDIR(st.st_mode):
            self.folders += 1
        else:
            self.files += 1


@dataclass
class _Frame:
    name: str
    ino: int
    fd: int | None
    subdirs: list[tuple[str, int]]


def measure(roots: Iterable[Path], stop: threading.Event | None = None) -> Tally:
    """What the folders ``roots`` (missing ones count 0) take on disk together."""
    tally = Tally()
    for root in roots:
        try:
            fd = open_root(root)
        except FileNotFoundError:
            continue
        try:
            _walk(fd, tally, stop)
        finally:
            os.close(fd)
    return tally


def _scan(fd: int, dev: int, tally: Tally) -> list[tuple[str, int]]:
    """Count a folder's entries; its sub-folders on the same device, to enter next."""
    subdirs = []
    with os.scandir(fd) as it:
        for entry in it:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # removed meanwhile
            if st.st_dev != dev:
                continue  # something mounted here: not this workspace's
            tally.add(st)
            if stat.S_ISDIR(st.st_mode):
                subdirs.append((entry.name, st.st_ino))
    return subdirs


def _open_checked(parent: int, name: str, ino: int, dev: int) -> int | None:
    """The sub-folder ``name`` of ``parent`` if it is still the folder listed, else None."""
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent)
    except OSError as e:
        if e.errno in _SKIPPED:
            return None
        raise
    st = os.fstat(fd)
    if st.st_ino != ino or st.st_dev != dev:
        os.close(fd)
        return None
    return fd


def _walk(root_fd: int, tally: Tally, stop: threading.Event | None) -> None:
    """Depth first, with at most KEEP_OPEN fds: a folder whose fd was closed to keep to that
    is reopened from the nearest open ancestor when its next sub-folder is due."""
    st = os.fstat(root_fd)
    dev = st.st_dev
    tally.add(st)
    stack = [_Frame("", st.st_ino, root_fd, _scan(root_fd, dev, tally))]
    try:
        while len(stack) > 0:
            if stop is not None and stop.is_set():
                raise Stopped()
            top = stack[-1]
            if not top.subdirs:
                stack.pop()
                if stack and top.fd is not None:
                    os.close(top.fd)
                continue
            if top.fd is None and not _reopen(stack, dev):
                continue  # a folder on the path changed meanwhile: the rest of it is skipped
            name, ino = top.subdirs.pop()
            fd = _open_checked(top.fd, name, ino, dev)
            if fd is None:
                continue
            try:
                subdirs = _scan(fd, dev, tally)
            except OSError as e:
                os.close(fd)
                if e.errno in _SKIPPED:
                    continue
                raise
            stack.append(_Frame(name, ino, fd, subdirs))
            _limit_open(stack)
    finally:
        for frame in stack[1:]:
            if frame.fd is not None:
                os.close(frame.fd)


def _limit_open(stack: list[_Frame]) -> None:
    """Keep open only the root's fd and the deepest KEEP_OPEN: close the one that just left."""
    i = len(stack) - 1 - KEEP_OPEN
    if i >= 1 and stack[i].fd is not None:
        os.close(stack[i].fd)
        stack[i].fd = None


def _reopen(stack: list[_Frame], dev: int) -> bool:
    """Open the fds of the frames below the deepest open one (those above the deepest
    KEEP_OPEN closed again as the chain passes); on a folder that is no longer the one walked,
    drop it and its descendants from the stack (False)."""
    j = len(stack) - 1
    while stack[j].fd is None:
        j -= 1
    first_kept = len(stack) - KEEP_OPEN
    for k in range(j + 1, len(stack)):
        parent = stack[k - 1]
        fd = _open_checked(parent.fd, stack[k].name, stack[k].ino, dev)
        if k - 1 >= 1 and k - 1 < first_kept:
            os.close(parent.fd)
            parent.fd = None
        if fd is None:
            del stack[k:]  # their fds are all closed: k was the first one opened again
            return False
        stack[k].fd = fd
    return True


# -- low priority ------------------------------------------------------------------------------
_IOPRIO_SET = {"x86_64": 251, "aarch64": 30}.get(platform.machine())
_IOPRIO_IDLE = 3 << 13  # IOPRIO_CLASS_IDLE, data 0
_IOPRIO_WHO_PROCESS = 1  # with a thread id: that thread alone


def lower_this_thread() -> None:
    """Nice 19 and idle I/O for the calling thread only (Linux: both act on a thread id)."""
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, 19)
    except OSError:
        pass
    if _IOPRIO_SET is not None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall(_IOPRIO_SET, _IOPRIO_WHO_PROCESS, tid, _IOPRIO_IDLE)  # best effort
