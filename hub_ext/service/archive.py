"""Unpack a job's code archive safely: everything is checked before anything is written, and
a refused or failed unpack leaves nothing behind.

Accepted: tar (plain, gz, bz2, xz) and zip. Refused: absolute names, ``..``, links that leave
the folder, hard links, devices and fifos, more than ``max_bytes`` unpacked or ``max_files``.
"""

from __future__ import annotations

import io
import lzma
import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

#: what a truncated or corrupt archive raises while it is read
DAMAGED = (EOFError, zipfile.BadZipFile, tarfile.TarError, zlib.error, lzma.LZMAError, OSError)


class ArchiveError(ValueError):
    """The archive is refused; the message says which member and why."""


@dataclass(frozen=True)
class Member:
    name: str  # normalised relative path
    kind: str  # file | dir | symlink
    size: int
    mode: int
    link: str = ""
    source: object = None  # the TarInfo or zip name to read it from


def _safe_name(name: str) -> str:
    name = name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"{name!r}: absolute path")
    norm = posixpath.normpath(name)
    if "/../" in f"/{name}/":
        raise ArchiveError(f"{name!r}: '..' in path")
    return "" if norm == "." else norm


def _resolve(base: list[str], target: str, links: dict[str, str], depth: int = 0) -> list | None:
    """Where ``target`` (relative to folder ``base``) ends up when the archive's own links are
    followed, as path parts; None when it leaves the folder at any step."""
    if target.startswith("/") or depth > 40:
        return None
    parts = list(base)
    for comp in target.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if not parts:
                return None
            parts.pop()
            continue
        parts.append(comp)
        link = links.get("/".join(parts))
        if link is not None:
            parts = _resolve(parts[:-1], link, links, depth + 1)
            if parts is None:
                return None
    return parts


def _check_layout(members: list[Member]) -> None:
    """Refuse what cannot be unpacked safely as a whole: duplicates, entries inside a file or
    a link (writing through a link could land anywhere), links that resolve outside."""
    kinds: dict[str, str] = {}
    for m in members:
        if not m.name:
            continue
        if m.name in kinds and not (m.kind == "dir" and kinds[m.name] == "dir"):
            raise ArchiveError(f"{m.name!r}: appears twice in the archive")
        kinds[m.name] = m.kind
    links = {m.name: m.link for m in members if m.kind == "symlink"}
    for m in members:
        parts = m.name.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if kinds.get(prefix) == "file":
                raise ArchiveError(f"{m.name!r}: inside {prefix!r}, which is a file")
            if kinds.get(prefix) == "symlink":
                raise ArchiveError(f"{m.name!r}: inside {prefix!r}, which is a link")
        if m.kind == "symlink" and _resolve(parts[:-1], m.link, links) is None:
            raise ArchiveError(f"{m.name!r}: link {m.link!r} leaves the folder")


def _tar_members(tf: tarfile.TarFile) -> list[Member]:
    out = []
    for ti in tf.getmembers():
        name = _safe_name(ti.name)
        if ti.isdir():
            out.append(Member(name, "dir", 0, ti.mode, source=ti))
        elif ti.isreg():
            out.append(Member(name, "file", ti.size, ti.mode, source=ti))
        elif ti.issym():
            out.append(Member(name, "symlink", 0, 0o777, ti.linkname, source=ti))
        elif ti.islnk():
            raise ArchiveError(f"{ti.name!r}: hard links are not accepted")
        else:
            raise ArchiveError(f"{ti.name!r}: devices, fifos and other special files are refused")
    return out


def _zip_members(zf: zipfile.ZipFile) -> list[Member]:
    out = []
    for zi in zf.infolist():
        name = _safe_name(zi.filename)
        mode = (zi.external_attr >> 16) & 0xFFFF
        if stat.S_ISLNK(mode):
            target = zf.read(zi).decode("utf-8", "replace")
            out.append(Member(name, "symlink", 0, 0o777, target))
        elif zi.is_dir():
            out.append(Member(name, "dir", 0, 0o755))
        elif stat.S_IFMT(mode) and not stat.S_ISREG(mode):  # no type bits: a plain file
            raise ArchiveError(f"{zi.filename!r}: special files are refused")
        else:
            out.append(
                Member(name, "file", zi.file_size, stat.S_IMODE(mode) or 0o644, source=zi.filename)
            )
    return out


def _open(data: bytes) -> tuple[str, object, list[Member]]:
    try:
        if zipfile.is_zipfile(io.BytesIO(data)):
            zf = zipfile.ZipFile(io.BytesIO(data))
            members = _zip_members(zf)
            kind, handle = "zip", zf
        else:
            try:
                tf = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
            except tarfile.TarError as e:
                raise ArchiveError(f"not a tar or zip archive ({e})") from e
            members = _tar_members(tf)
            kind, handle = "tar", tf
    except DAMAGED as e:
        raise ArchiveError(f"damaged archive ({e})") from e
    _check_layout(members)
    return kind, handle, members


def check_archive(data: bytes, max_bytes: int, max_files: int = 100_000) -> list[Member]:
    """All members, after every check; raises ArchiveError on the first refused one."""
    _kind, _handle, members = _open(data)
    total = sum(m.size for m in members)
    if total > max_bytes:
        raise ArchiveError(f"unpacks to {total} bytes, more than the limit of {max_bytes}")
    if len(members) > max_files:
        raise ArchiveError(f"{len(members)} entries, more than the limit of {max_files}")
    return members


def unpack(data: bytes, dest: Path, max_bytes: int, max_files: int = 100_000) -> int:
    """Unpack into the new folder ``dest`` (must not exist) via a staging folder beside it;
    returns the number of files. On any error nothing is left behind."""
    kind, handle, members = _open(data)
    check_archive(data, max_bytes, max_files)
    staging = dest.with_name(f".{dest.name}.unpacking-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    written = files = 0
    try:
        for m in members:
            target = staging / m.name if m.name else staging
            if m.kind == "dir":
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if m.kind == "symlink":
                target.symlink_to(m.link)
                continue
            src = handle.extractfile(m.source) if kind == "tar" else handle.open(m.source)
            with src, open(target, "xb") as out:
                while chunk := src.read(1 << 20):
                    written += len(chunk)
                    if written > max_bytes:  # the sizes in the header lied
                        raise ArchiveError(f"unpacks to more than the limit of {max_bytes} bytes")
                    out.write(chunk)
            os.chmod(target, (m.mode & 0o755) | 0o600)
            files += 1
        staging.rename(dest)
    except DAMAGED as e:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(e, OSError) and e.errno is not None:
            raise  # a problem of this machine (disk full, ...), not of the archive
        raise ArchiveError(f"damaged archive ({e})") from e
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return files
