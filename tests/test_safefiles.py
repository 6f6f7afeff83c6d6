"""safefiles: a user's tree is read without following the user's links, through openat2 and
through the component walk used where openat2 is filtered out (both must refuse the same)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub_ext.service import safefiles
from hub_ext.service.safefiles import copy_tree_fd, list_files, open_beneath, open_root


@pytest.fixture(params=[True, False], ids=["openat2", "walk"])
def use_openat2(request) -> bool:
    if request.param and not safefiles.openat2_available():
        pytest.skip("openat2 is not available on this kernel (or filtered by seccomp)")
    return request.param


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """out/ with a file, a sub-folder, links to a secret outside, a fifo and a socket."""
    secret = tmp_path / "secret"
    secret.write_text("the token")
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "f.txt").write_text("hello")
    (out / "sub" / "g.txt").write_text("nested")
    (out / "to-secret").symlink_to(secret)
    (out / "to-inside").symlink_to("f.txt")
    (out / "dirlink").symlink_to(tmp_path)
    (out / "sub-link").symlink_to("sub")
    os.mkfifo(out / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(out / "sock"))
    fd = open_root(out)
    yield out, fd
    os.close(fd)
    sock.close()


def read(root: int, rel: str, use_openat2: bool) -> bytes:
    fd = open_beneath(root, rel, use_openat2=use_openat2)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def test_regular_files_are_read(tree, use_openat2: bool) -> None:
    _out, root = tree
    assert read(root, "f.txt", use_openat2) == b"hello"
    assert read(root, "sub/g.txt", use_openat2) == b"nested"


@pytest.mark.parametrize(
    "rel",
    [
        "to-secret",  # link at the last component, leading out
        "to-inside",  # even a link that stays inside
        "dirlink/secret",  # link in the middle, leading out
        "sub-link/g.txt",  # link in the middle, staying inside
        "../secret",
        "sub/../../secret",
        "/etc/hostname",
        "sub//g.txt",
        "./f.txt",
        "missing",
        "f.txt/x",  # a file used as a folder
        "fifo",  # never opened in a blocking way, never served
        "sock",
        "sub",  # a folder is not a file
    ],
)
def test_refused_as_missing(tree, use_openat2: bool, rel: str) -> None:
    _out, root = tree
    with pytest.raises(FileNotFoundError):
        open_beneath(root, rel, use_openat2=use_openat2)


def test_a_folder_only_when_asked(tree, use_openat2: bool) -> None:
    _out, root = tree
    fd = open_beneath(root, "sub", allow_dir=True, use_openat2=use_openat2)
    try:
        assert [e["path"] for e in list_files(fd)] == ["g.txt"]
    finally:
        os.close(fd)
    with pytest.raises(FileNotFoundError):
        open_beneath(root, "sub-link", allow_dir=True, use_openat2=use_openat2)


def test_devices_and_other_filesystems_not_served(use_openat2: bool) -> None:
    dev = open_root(Path("/dev"))
    top = open_root(Path("/"))
    try:
        with pytest.raises(FileNotFoundError):
            open_beneath(dev, "null", use_openat2=use_openat2)
        with pytest.raises(FileNotFoundError):  # /proc is a mount: RESOLVE_NO_XDEV / st_dev
            open_beneath(top, "proc/version", use_openat2=use_openat2)
    finally:
        os.close(dev)
        os.close(top)


def test_a_hard_link_is_a_regular_file_and_is_served(tree, use_openat2: bool) -> None:
    """A hard link can only name a file of the same filesystem that its maker could already
    read; it is the file itself, not a pointer, so it is served like any file."""
    out, root = tree
    os.link(out / "f.txt", out / "hard")
    assert read(root, "hard", use_openat2) == b"hello"


def test_root_must_not_be_a_link(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    with pytest.raises(FileNotFoundError):
        open_root(tmp_path / "link")


def test_listing_has_regular_files_only(tree) -> None:
    out, root = tree
    (out / "sub" / "deeper").mkdir()
    (out / "sub" / "deeper" / "h.txt").write_text("hh")
    paths = [e["path"] for e in list_files(root, "")]
    assert paths == ["f.txt", "sub/g.txt", "sub/deeper/h.txt"]
    assert [e["size"] for e in list_files(root, "")] == [5, 6, 2]


def test_too_deep_a_tree_is_refused(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["d"] * (safefiles.MAX_DEPTH + 2))
    deep.mkdir(parents=True)
    fd = open_root(tmp_path)
    try:
        with pytest.raises(ValueError, match="nested more than"):
            list_files(fd)
    finally:
        os.close(fd)


def test_copy_keeps_links_as_links_and_leaves_out_special_files(tree, tmp_path: Path) -> None:
    out, _root = tree
    os.chmod(out / "f.txt", 0o751)
    os.chmod(out, 0o750)
    os.chown(out / "sub" / "g.txt", 12345, 12346)  # the service is root: the copy stays theirs
    os.chown(out / "to-secret", 12345, 12346, follow_symlinks=False)
    os.utime(out / "f.txt", (1_000_000, 1_000_000))
    dest = tmp_path / "copy"
    assert copy_tree_fd(out, dest) == 2
    assert (dest / "f.txt").read_text() == "hello"
    assert dest.stat().st_mode & 0o777 == 0o750
    assert (dest / "f.txt").stat().st_mode & 0o777 == 0o751
    assert (dest / "f.txt").stat().st_mtime == 1_000_000
    assert (dest / "sub" / "g.txt").read_text() == "nested"
    gst = (dest / "sub" / "g.txt").stat()
    assert (gst.st_uid, gst.st_gid) == (12345, 12346)
    assert (dest / "to-secret").lstat().st_uid == 12345
    assert os.readlink(dest / "to-secret") == str(tmp_path / "secret")
    assert os.readlink(dest / "dirlink") == str(tmp_path)
    assert os.readlink(dest / "sub-link") == "sub"
    assert not (dest / "fifo").exists() and not (dest / "sock").exists()
    assert sorted(p.name for p in dest.iterdir()) == [
        "dirlink",
        "f.txt",
        "sub",
        "sub-link",
        "to-inside",
        "to-secret",
    ]
    with pytest.raises(FileExistsError):  # never into an existing folder
        copy_tree_fd(out, dest)
