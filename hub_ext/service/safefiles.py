"""Reading a user's tree as root without following the user's links.

The service runs as root and serves (and copies) folders a job may change while it reads them.
Checking a path and then opening it again races with a job that swaps a file for a link, so
everything here opens relative to a folder's fd and refuses links at every component: with
``openat2`` (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS, one call) where the kernel offers it, else by
opening one component at a time with ``O_NOFOLLOW``. Only regular files are served; a link, a
fifo, a socket or a device answers as missing. A hard link to a file is a regular file of the
same filesystem, so it is served (a job can only hard-link files it could read anyway).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SYS_OPENAT2 = 437  # the same number on every Linux architecture (unified syscall table)
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV

OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC  # O_NONBLOCK: a fifo never blocks us
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: errors that mean "nothing servable there" (a link, a way out, a missing or odd entry)
NOT_THERE = {errno.ENOENT, errno.ELOOP, errno.EXDEV, errno.ENOTDIR, errno.ENXIO, errno.EAGAIN}
#: deepest folder nesting walked; deeper trees are refused rather than half-copied
MAX_DEPTH = 200


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_openat2_works: bool | None = None  # probed on first use


def _openat2(dir_fd: int, rel: str, flags: int) -> int:
    how = _OpenHow(flags, 0, RESOLVE)
    fd = _libc.syscall(
        ctypes.c_long(SYS_OPENAT2),
        ctypes.c_int(dir_fd),
        ctypes.c_char_p(os.fsencode(rel)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), rel)
    return fd


def openat2_available() -> bool:
    """Whether openat2 works here (kernel ≥ 5.6 and not filtered out by seccomp)."""
    global _openat2_works
    if _openat2_works is None:
        root = os.open("/", os.O_PATH | os.O_CLOEXEC)
        try:
            os.close(_openat2(root, ".", os.O_PATH | os.O_CLOEXEC))
            _openat2_works = True
        except OSError as e:
            if e.errno not in (errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.E2BIG):
                raise
            _openat2_works = False
        finally:
            os.close(root)
    return _openat2_works


def split_rel(rel: str) -> list[str]:
    """The components of a path relative to the served folder; FileNotFoundError for an
    absolute path, ``..``, ``.`` or an empty component ("" is the folder itself)."""
    if rel.endswith("/"):
        rel = rel[:-1]
    if not rel:
        return []
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise FileNotFoundError(errno.ENOENT, "not a plain relative path", rel)
    return parts


def _walk_open(root_fd: int, parts: list[str]) -> int:
    """Open one component at a time, never through a link nor onto another filesystem."""
    dev = os.fstat(root_fd).st_dev
    fd = root_fd
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = (
                (os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
                if last
                else (os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            )
            nxt = os.open(part, flags, dir_fd=fd)
            if fd != root_fd:
                os.close(fd)
            fd = nxt
            if os.fstat(fd).st_dev != dev:
                raise OSError(errno.EXDEV, "on another filesystem", part)
        return fd if fd != root_fd else os.open(".", DIR_FLAGS, dir_fd=root_fd)
    except BaseException:
        if fd != root_fd:
            os.close(fd)
        raise


def open_beneath(
    root_fd: int, rel: str, *, allow_dir: bool = False, use_openat2: bool | None = None
) -> int:
    """An fd (O_RDONLY) of the regular file at ``rel`` under ``root_fd`` (or of the folder, with
    ``allow_dir``). FileNotFoundError when it is missing, a link or behind one, outside, or
    not a regular file. ``use_openat2=False`` forces the component walk (tests; auto: None)."""
    parts = split_rel(rel)
    if use_openat2 is None:
        use_openat2 = openat2_available()
    try:
        if use_openat2:
            fd = _openat2(root_fd, "/".join(parts) or ".", OPEN_FLAGS)
        else:
            fd = _walk_open(root_fd, parts)
    except OSError as e:
        if e.errno in NOT_THERE:
            raise FileNotFoundError(errno.ENOENT, "no such regular file", rel) from e
        raise
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode) or (allow_dir and stat.S_ISDIR(mode)):
        return fd
    os.close(fd)
    raise FileNotFoundError(errno.ENOENT, "not a regular file", rel)


def open_root(path: Path) -> int:
    """An fd of the folder ``path`` whose last component must not be a link; FileNotFoundError
    when it is missing, a link or not a folder."""
    try:
        return os.open(path, DIR_FLAGS)
    except OSError as e:
        if e.errno in NOT_THERE:
            raise FileNotFoundError(errno.ENOENT, "no such folder", str(path)) from e
        raise


Entries = list[tuple[str, os.stat_result]]


def walk_fd(dir_fd: int, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, int, Entries]]:
    """Top-down ``(folder path, folder fd, [(name, lstat)])``, names sorted, every folder
    entered through an O_NOFOLLOW|O_DIRECTORY fd on the same filesystem (os.fwalk opens
    sub-folders following links, which for root could open a fifo or a device)."""
    if depth > MAX_DEPTH:
        raise ValueError(f"{prefix!r}: folders nested more than {MAX_DEPTH} deep")
    with os.scandir(dir_fd) as it:
        names = sorted(e.name for e in it)
    entries: Entries = []
    for name in names:
        try:
            entries.append((name, os.stat(name, dir_fd=dir_fd, follow_symlinks=False)))
        except FileNotFoundError:
            continue  # gone meanwhile
    yield prefix, dir_fd, entries
    dev = os.fstat(dir_fd).st_dev
    for name, st in entries:
        if not stat.S_ISDIR(st.st_mode):
            continue
        try:
            sub = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
        except OSError as e:
            if e.errno in NOT_THERE:
                continue  # replaced by a link or removed since the stat
            raise
        try:
            if os.fstat(sub).st_dev == dev:
                yield from walk_fd(sub, f"{prefix}{name}/", depth + 1)
        finally:
            os.close(sub)


def list_files(dir_fd: int, prefix: str = "") -> list[dict[str, Any]]:
    """The regular files under ``dir_fd`` (links and special files left out), paths prefixed
    with ``prefix``: a folder's files first, then its sub-folders, in name order."""
    return [
        {"path": f"{path}{name}", "size": st.st_size, "mtime": st.st_mtime}
        for path, _fd, entries in walk_fd(dir_fd, prefix)
        for name, st in entries
        if stat.S_ISREG(st.st_mode)
    ]


def _copy_file(src_dir: int, dst_dir: int, name: str) -> bool:
    try:
        src = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=src_dir
        )
    except OSError as e:
        if e.errno in NOT_THERE:
            return False
        raise
    try:
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode):
            return False
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        dst = os.open(name, flags, 0o600, dir_fd=dst_dir)
        try:
            while os.sendfile(dst, src, None, 1 << 24):
                pass
            _same_meta(dst, st)
        finally:
            os.close(dst)
        return True
    finally:
        os.close(src)


def _same_meta(fd: int, st: os.stat_result) -> None:
    if os.geteuid() == 0:
        os.fchown(fd, st.st_uid, st.st_gid)  # the copy stays the user's
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def copy_tree_fd(src: Path, dest: Path) -> int:
    """Copy the folder ``src`` into the new folder ``dest`` without following any link in it:
    files are read through O_NOFOLLOW fds, links are recreated as links, fifos, sockets and
    devices are left out. Owner, mode and times are kept. Returns the number of files."""
    src_fd = open_root(src)
    os.mkdir(dest, 0o700)
    dest_fd = open_root(dest)
    files = 0
    try:
        _same_meta(dest_fd, os.fstat(src_fd))
        for path, dir_fd, entries in walk_fd(src_fd):
            out = open_beneath(dest_fd, path, allow_dir=True)
            try:
                for name, st in entries:
                    if stat.S_ISDIR(st.st_mode):
                        os.mkdir(name, 0o700, dir_fd=out)
                        sub = os.open(name, DIR_FLAGS, dir_fd=out)
                        try:
                            _same_meta(sub, st)
                        finally:
                            os.close(sub)
                    elif stat.S_ISLNK(st.st_mode):
                        try:
                            target = os.readlink(name, dir_fd=dir_fd)
                        except OSError as e:
                            if e.errno in NOT_THERE | {errno.EINVAL}:
                                continue  # no longer a link
                            raise
                        os.symlink(target, name, dir_fd=out)
                        if os.geteuid() == 0:
                            os.chown(name, st.st_uid, st.st_gid, dir_fd=out, follow_symlinks=False)
                    elif stat.S_ISREG(st.st_mode):
                        files += _copy_file(dir_fd, out, name)
            finally:
                os.close(out)
    finally:
        os.close(src_fd)
        os.close(dest_fd)
    return files
