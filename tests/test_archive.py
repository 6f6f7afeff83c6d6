"""Code archive unpacking (issue 3: "unpacked safely ... refused with 400 and nothing is left
behind"): real tar and zip archives built in memory, unpacked into pytest's tmp folder."""

import io
import os
import stat
import tarfile
import warnings
import zipfile

import pytest

from hub_ext.service.archive import ArchiveError, check_archive, unpack

MiB = 1024**2
TAR_TYPES = {
    "dir": tarfile.DIRTYPE,
    "sym": tarfile.SYMTYPE,
    "hard": tarfile.LNKTYPE,
    "chr": tarfile.CHRTYPE,
    "fifo": tarfile.FIFOTYPE,
}
ZIP_TYPES = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "sym": stat.S_IFLNK, "chr": stat.S_IFCHR}


def make_tar(entries, mode="w"):
    """entries: (name, kind, payload, mode); payload is the content of a file, else the target."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, kind, payload, perm in entries:
            ti = tarfile.TarInfo(name)
            ti.mode = perm
            if kind == "file":
                ti.size = len(payload)
                tf.addfile(ti, io.BytesIO(payload))
                continue
            ti.type = TAR_TYPES[kind]
            if kind in ("sym", "hard"):
                ti.linkname = payload
            tf.addfile(ti)
    return buf.getvalue()


def make_zip(entries):
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        warnings.simplefilter("ignore")  # "Duplicate name": some tests want one
        for name, kind, payload, perm in entries:
            zi = zipfile.ZipInfo(name + "/" if kind == "dir" else name)
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.create_system = 3  # unix: the high 16 bits of external_attr are st_mode
            zi.external_attr = (ZIP_TYPES[kind] | perm) << 16
            data = payload.encode() if kind == "sym" else (payload or b"")
            zf.writestr(zi, data)
    return buf.getvalue()


def F(name, data=b"x", perm=0o644):
    return (name, "file", data, perm)


def D(name):
    return (name, "dir", None, 0o755)


def L(name, target):
    return (name, "sym", target, 0o777)


GOOD = [
    D("pkg"),
    F("pkg/__init__.py", b"VERSION = 1\n"),
    D("pkg/sub"),
    F("pkg/sub/data.txt", b"numbers\n"),
    F("run.sh", b"#!/bin/sh\necho hi\n", 0o755),
    F("notes.txt", b"read me\n", 0o644),
    L("latest", "pkg/sub/data.txt"),
    L("pkg/sub/init", "../__init__.py"),
    L("current", "pkg/sub"),
]
BUILDERS = {
    "tar": lambda e: make_tar(e),
    "tar.gz": lambda e: make_tar(e, "w:gz"),
    "tar.bz2": lambda e: make_tar(e, "w:bz2"),
    "tar.xz": lambda e: make_tar(e, "w:xz"),
    "zip": make_zip,
}


def refused(data, tmp_path, *fragments, max_bytes=MiB, max_files=1000):
    """Unpack must raise ArchiveError (message containing each fragment) and leave nothing."""
    with pytest.raises(ArchiveError) as info:
        unpack(data, tmp_path / "code", max_bytes, max_files)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "something was left behind"
    return str(info.value)


@pytest.mark.parametrize("kind", BUILDERS)
def test_a_good_archive_unpacks_with_folders_modes_and_internal_links(tmp_path, kind):
    dest = tmp_path / "code"
    assert unpack(BUILDERS[kind](GOOD), dest, MiB) == 4  # files, not folders or links
    assert (dest / "pkg" / "__init__.py").read_bytes() == b"VERSION = 1\n"
    assert (dest / "pkg" / "sub" / "data.txt").read_bytes() == b"numbers\n"
    assert os.access(dest / "run.sh", os.X_OK)
    assert not os.access(dest / "notes.txt", os.X_OK)
    assert os.readlink(dest / "latest") == "pkg/sub/data.txt"
    assert (dest / "latest").read_bytes() == b"numbers\n"
    assert (dest / "pkg" / "sub" / "init").read_bytes() == b"VERSION = 1\n"
    assert (dest / "current" / "data.txt").read_bytes() == b"numbers\n"
    assert [p.name for p in tmp_path.iterdir()] == ["code"], "no staging folder left"


def test_check_archive_lists_members_without_writing_anything(tmp_path):
    members = check_archive(make_tar(GOOD), MiB)
    kinds = {m.name: m.kind for m in members}
    assert kinds["pkg"] == "dir" and kinds["pkg/sub/data.txt"] == "file"
    assert kinds["latest"] == "symlink"
    assert {m.name: m.link for m in members}["latest"] == "pkg/sub/data.txt"
    assert list(tmp_path.iterdir()) == []


def test_files_without_folder_entries_get_their_folders(tmp_path):
    assert unpack(make_tar([F("a/b/c/deep.txt", b"d"), F("./top.txt")]), tmp_path / "c", MiB) == 2
    assert (tmp_path / "c" / "a" / "b" / "c" / "deep.txt").read_bytes() == b"d"
    assert (tmp_path / "c" / "top.txt").exists()


def test_modes_drop_setuid_and_write_for_others_but_keep_the_owner_able_to_read(tmp_path):
    data = make_tar([F("suid", perm=0o6777), F("locked", perm=0o000), F("tool", perm=0o750)])
    unpack(data, tmp_path / "code", MiB)
    mode = {n: stat.S_IMODE((tmp_path / "code" / n).stat().st_mode) for n in ("suid", "locked")}
    assert mode["suid"] == 0o755
    assert mode["locked"] & 0o600 == 0o600
    assert os.access(tmp_path / "code" / "tool", os.X_OK)


REFUSED = {
    "absolute path": ([F("/etc/cron.d/evil")], ["'/etc/cron.d/evil'", "absolute"]),
    "dot-dot first": ([F("../x")], ["'../x'", ".."]),
    "dot-dot climbing out": ([F("a/../../x")], ["'a/../../x'"]),
    "dot-dot staying inside": ([F("a/../b")], ["'a/../b'"]),
    "dot-dot folder": ([D("a/.."), F("ok")], ["'a/..'"]),
    "link to an absolute path": ([L("etc", "/etc")], ["'etc'", "/etc"]),
    "link climbing out": ([L("a/up", "../../etc")], ["'a/up'", "../../etc"]),
    "link to the parent": ([L("up", "..")], ["'up'"]),
    "hard link": ([F("f"), ("h", "hard", "f", 0o644)], ["'h'", "hard link"]),
    "character device": ([("dev", "chr", None, 0o644)], ["'dev'"]),
    "fifo": ([("pipe", "fifo", None, 0o644)], ["'pipe'"]),
    "duplicate file": ([F("a.txt", b"1"), F("a.txt", b"2")], ["'a.txt'", "twice"]),
    "file over a link": ([F("t"), L("a", "t"), F("a")], ["'a'", "twice"]),
    "link over a file": ([F("a"), L("a", "b")], ["'a'", "twice"]),
    # DESIGN/brief: nothing is written through an archive's own link, even one that stays inside
    "file through an internal link": ([D("real"), L("alias", "real"), F("alias/x")], ["alias/x"]),
}


@pytest.mark.parametrize("entries, fragments", REFUSED.values(), ids=REFUSED.keys())
def test_tar_refusals_name_the_member_and_leave_nothing(tmp_path, entries, fragments):
    refused(make_tar(entries), tmp_path, *fragments)


def test_a_refusal_late_in_the_archive_leaves_no_earlier_file(tmp_path):
    # found only while writing: the files before it were already written to the staging folder
    entries = [D("pkg"), F("pkg/a.py"), F("pkg/b.py"), F("big.bin", b"0" * 9999), F("pkg/b.py")]
    refused(make_tar(entries, "w:gz"), tmp_path, "'pkg/b.py'", "twice")


ZIP_REFUSED = {
    "absolute path": ([F("/etc/passwd")], ["'/etc/passwd'"]),
    "dot-dot": ([F("a/../../x")], ["'a/../../x'"]),
    "link to an absolute path": ([L("pw", "/etc/passwd")], ["'pw'", "/etc/passwd"]),
    "link climbing out": ([L("d/up", "../../home")], ["'d/up'"]),
    "character device": ([("dev", "chr", b"", 0o644)], ["'dev'"]),
    "duplicate": ([F("a"), F("a")], ["'a'"]),
}


@pytest.mark.parametrize("entries, fragments", ZIP_REFUSED.values(), ids=ZIP_REFUSED.keys())
def test_zip_refusals_name_the_member_and_leave_nothing(tmp_path, entries, fragments):
    refused(make_zip(entries), tmp_path, *fragments)


CHAINED = {
    # "a" is the folder itself, so "a/b" -> ".." is (lexically) inside but really its parent
    "link through a link": [L("a", "."), L("a/b", "..")],
    "folder created through it": [L("a", "."), L("a/b", ".."), D("b/escaped")],
    "link planted through it": [L("a", "."), L("a/b", ".."), L("b/planted", "x")],
}


@pytest.mark.parametrize("entries", CHAINED.values(), ids=CHAINED.keys())
def test_chained_links_cannot_reach_outside_the_folder(tmp_path, entries):
    with pytest.raises(ArchiveError):
        unpack(make_tar(entries), tmp_path / "code", MiB)
    assert not (tmp_path / "escaped").exists()
    assert not (tmp_path / "planted").is_symlink()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "entries",
    [[F("a"), F("a/b")], [L("a", "missing"), F("a/x")], [F("a"), D("a/sub")]],
    ids=["file under a file", "file under a dangling link", "folder under a file"],
)
def test_impossible_layouts_are_refused_as_archive_errors(tmp_path, entries):
    # an OSError here would reach the user as a 500, not the 400 of a refused archive
    refused(make_tar(entries), tmp_path, "'a")


def test_declared_size_over_the_limit_is_refused_before_writing(tmp_path):
    data = make_tar([F("a.bin", b"0" * 600), F("b.bin", b"1" * 600)])
    msg = refused(data, tmp_path, "1000", max_bytes=1000)
    assert "1200" in msg
    with pytest.raises(ArchiveError):
        check_archive(data, 1000)


def test_size_exactly_at_the_limit_is_accepted(tmp_path):
    data = make_tar([F("a.bin", b"0" * 600), F("b.bin", b"1" * 400)])
    assert unpack(data, tmp_path / "code", 1000) == 2


def test_compressed_size_does_not_count_the_unpacked_size_does(tmp_path):
    data = make_zip([F("zeros.bin", b"\0" * (2 * MiB))])
    assert len(data) < 100_000
    refused(data, tmp_path, str(MiB), max_bytes=MiB)


def test_more_entries_than_max_files_is_refused(tmp_path):
    entries = [D("d"), F("d/1"), F("d/2")]
    refused(make_tar(entries), tmp_path, "3 entries", "2", max_files=2)
    assert unpack(make_tar(entries), tmp_path / "code", MiB, max_files=3) == 2


@pytest.mark.parametrize(
    "data",
    [os.urandom(4096), b"", b"print('hello')\n" * 20, b"PK\x03\x04 not really a zip"],
    ids=["random bytes", "empty", "a python file", "zip magic only"],
)
def test_not_an_archive(tmp_path, data):
    refused(data, tmp_path, "not a tar or zip archive")


def _truncated_tgz():
    data = make_tar([F("big.bin", os.urandom(200_000))], "w:gz")
    return data[: len(data) // 2]


def _bad_crc_zip():
    data = bytearray(make_zip([F("x.txt", b"hello world " * 50)]))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.getinfo("x.txt")
    data[info.header_offset + 30 + len("x.txt") + 2] ^= 0xFF  # a byte of compressed data
    return bytes(data)


@pytest.mark.parametrize("make", [_truncated_tgz, _bad_crc_zip], ids=["truncated tgz", "bad crc"])
def test_a_damaged_archive_is_refused_and_leaves_nothing(tmp_path, make):
    refused(make(), tmp_path)


def test_zip_made_with_zipfile_writestr_defaults_is_accepted(tmp_path):
    # zipfile.writestr("name", data) stores permission bits (0o600) without a file type
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("main.py", "print(1)\n")
        zf.writestr("lib/util.py", "X = 1\n")
    assert unpack(buf.getvalue(), tmp_path / "code", MiB) == 2
    assert (tmp_path / "code" / "lib" / "util.py").read_text() == "X = 1\n"


def test_zip_from_dos_tools_without_unix_modes_is_accepted(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zi = zipfile.ZipInfo("train.py")
        zi.create_system, zi.external_attr = 0, 0x20  # MS-DOS archive bit only
        zf.writestr(zi, "pass\n")
    assert unpack(buf.getvalue(), tmp_path / "code", MiB) == 1
    assert (tmp_path / "code" / "train.py").read_text() == "pass\n"


# dest semantics: unpack makes a new folder; what happens when it is already there


def test_missing_parents_of_dest_are_created(tmp_path):
    dest = tmp_path / "users" / "alice" / "jobs" / "7" / "code"
    unpack(make_tar([F("a")]), dest, MiB)
    assert (dest / "a").is_file()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["code"]


def test_an_existing_empty_dest_folder_is_replaced(tmp_path):
    (tmp_path / "code").mkdir()
    assert unpack(make_tar([F("a")]), tmp_path / "code", MiB) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["code"]


def test_an_existing_non_empty_dest_is_not_touched_and_nothing_else_is_left(tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "old.txt").write_text("keep")
    with pytest.raises(OSError):
        unpack(make_tar([F("new.txt")]), tmp_path / "code", MiB)
    assert [p.name for p in tmp_path.iterdir()] == ["code"]
    assert [p.name for p in (tmp_path / "code").iterdir()] == ["old.txt"]


def test_a_refused_archive_does_not_touch_an_existing_dest(tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "old.txt").write_text("keep")
    with pytest.raises(ArchiveError):
        unpack(make_tar([F("../x")]), tmp_path / "code", MiB)
    assert [p.name for p in (tmp_path / "code").iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["code"]
