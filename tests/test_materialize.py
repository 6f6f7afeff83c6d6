"""Materialising a layout plan: bubblewrap arguments (pure) and the fallback tree of links."""

import os
from pathlib import Path

from hub_ext.layout import JobRef, plan_job, plan_notebook
from hub_ext.materialize import build_link_tree, bwrap_args, missing_sources

DATA = Path("/srv/kqi-data")
SCRATCH = Path("/srv/kqi-data/run/alice/default/scratch")
HOME = Path("/srv/kqi-data/users/alice/home")
P1, P2 = JobRef(11, "alice"), JobRef(12, "bob")


def notebook_plan():
    return plan_notebook("alice", datasets=["mnist"], parents=[P1, P2], git=True)


def bind_triples(args):
    """(flag, source, destination) for every bind in the argument list."""
    return [
        (args[i], args[i + 1], args[i + 2])
        for i in range(len(args) - 2)
        if args[i] in ("--bind", "--ro-bind", "--dev-bind")
    ]


def test_bwrap_starts_with_bwrap_and_ends_with_cap_drop():
    args = bwrap_args(notebook_plan(), DATA, SCRATCH, [HOME], bwrap="/usr/bin/bwrap")
    assert args[0] == "/usr/bin/bwrap"
    assert args[-3:] == ["--cap-drop", "ALL", "--"]
    assert all(isinstance(a, str) for a in args)


def test_bwrap_read_only_and_writable_binds():
    args = bwrap_args(notebook_plan(), DATA, SCRATCH, [HOME])
    binds = {dest: (flag, src) for flag, src, dest in bind_triples(args)}
    assert binds["/kqi/input/mnist"] == ("--ro-bind", f"{DATA}/datasets/mnist")
    assert binds["/kqi/parent/11"] == ("--ro-bind", f"{DATA}/users/alice/jobs/11/output")
    assert binds["/kqi/parent/12"] == ("--ro-bind", f"{DATA}/users/bob/jobs/12/output")
    assert binds["/kqi/jobs"] == ("--ro-bind", f"{DATA}/users/alice/jobs")
    # git is a writable scratch folder, not in the data tree of anyone else
    assert binds["/kqi/git"] == ("--bind", f"{SCRATCH}/git")


def test_bwrap_job_code_and_output_writable():
    plan = plan_job("alice", 7, datasets=["mnist"])
    binds = {dest: flag for flag, _, dest in bind_triples(bwrap_args(plan, DATA, SCRATCH, []))}
    assert binds["/kqi/code"] == "--bind"
    assert binds["/kqi/output"] == "--bind"
    assert binds["/kqi/input/mnist"] == "--ro-bind"


def test_bwrap_hides_the_data_root_and_rebinds_the_kept_home():
    args = bwrap_args(notebook_plan(), DATA, SCRATCH, [HOME])
    hide = args.index(str(DATA))
    assert args[hide - 1] == "--tmpfs"
    # the home comes back, writable, after the data root is hidden
    assert ("--bind", str(HOME), str(HOME)) in bind_triples(args)
    assert args.index(str(HOME)) > hide
    # no other user's home, and not the whole data root, comes back
    for _, src, _ in bind_triples(args):
        assert src != str(DATA)
        assert not src.startswith(f"{DATA}/users/bob/home")


def test_bwrap_mounts_at_the_chosen_root_on_a_tmpfs():
    args = bwrap_args(notebook_plan(), DATA, SCRATCH, [], kqi_root="/mnt/k")
    root = args.index("/mnt/k")
    assert args[root - 1] == "--tmpfs"
    dests = [d for _, _, d in bind_triples(args) if d != "/"]
    assert dests and all(d.startswith("/mnt/k/") for d in dests)
    for i in range(len(args)):
        if args[i] in ("--bind", "--ro-bind") and args[i + 2].startswith("/mnt/k/"):
            assert i > root


def test_bwrap_parent_dirs_created_before_the_binds():
    args = bwrap_args(notebook_plan(), DATA, SCRATCH, [])
    first_plan_bind = min(
        i for i, a in enumerate(args) if a in ("--bind", "--ro-bind") and "/kqi/" in args[i + 2]
    )
    for d in ("/kqi/input", "/kqi/parent"):
        i = args.index(d)
        assert args[i - 1] == "--dir"
        assert i < first_plan_bind


def test_missing_sources(tmp_path):
    plan = plan_notebook("alice", datasets=["mnist", "qm9"], parents=[P1], git=True)
    (tmp_path / "datasets" / "mnist").mkdir(parents=True)
    (tmp_path / "users" / "alice" / "jobs").mkdir(parents=True)
    missing = {b.target for b in missing_sources(plan, tmp_path)}
    # git has no source (a fresh scratch folder) and is never "missing"
    assert missing == {"input/qm9", "parent"}
    (tmp_path / "datasets" / "qm9").mkdir()
    (tmp_path / "users" / "alice" / "jobs" / "11" / "output").mkdir(parents=True)
    assert missing_sources(plan, tmp_path) == []


def test_missing_source_that_is_a_file(tmp_path):
    plan = plan_notebook("alice", datasets=["mnist"])
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "mnist").write_text("not a folder")
    (tmp_path / "users" / "alice" / "jobs").mkdir(parents=True)
    assert [b.target for b in missing_sources(plan, tmp_path)] == ["input/mnist"]


def make_sources(data):
    for rel in (
        "datasets/mnist",
        "datasets/qm9",
        "users/alice/jobs/11/output",
        "users/bob/jobs/12/output",
    ):
        (data / rel).mkdir(parents=True)
        (data / rel / "file.txt").write_text(rel)


def test_link_tree_points_at_the_data_root_sources(tmp_path):
    data, scratch, root = tmp_path / "data", tmp_path / "scratch", tmp_path / "srv" / "kqi"
    make_sources(data)
    (scratch / "git").mkdir(parents=True)
    build_link_tree(notebook_plan(), data, scratch, root)
    assert os.readlink(root / "input" / "mnist") == str(data / "datasets/mnist")
    assert os.readlink(root / "parent" / "12") == str(data / "users/bob/jobs/12/output")
    assert os.readlink(root / "jobs") == str(data / "users/alice/jobs")
    assert os.readlink(root / "git") == str(scratch / "git")
    assert (root / "input" / "mnist" / "file.txt").read_text() == "datasets/mnist"
    assert (root / "parent" / "11" / "file.txt").read_text() == "users/alice/jobs/11/output"
    assert (root / "input").is_dir() and not (root / "input").is_symlink()


def test_rebuilding_the_tree_removes_old_links_but_not_their_data(tmp_path):
    data, scratch, root = tmp_path / "data", tmp_path / "scratch", tmp_path / "srv" / "kqi"
    make_sources(data)
    scratch.mkdir()
    build_link_tree(notebook_plan(), data, scratch, root)
    (root / "stray.txt").write_text("left over")

    second = plan_notebook("alice", datasets=["qm9"], parents=[P1])
    build_link_tree(second, data, scratch, root)
    assert sorted(p.name for p in root.iterdir()) == ["input", "jobs", "parent"]
    assert sorted(p.name for p in (root / "input").iterdir()) == ["qm9"]
    assert os.readlink(root / "parent") == str(data / "users/alice/jobs/11/output")
    # everything the old links pointed at is still there
    for rel in ("datasets/mnist", "users/alice/jobs/11/output", "users/bob/jobs/12/output"):
        assert (data / rel / "file.txt").read_text() == rel


def test_link_tree_replaces_a_link_or_file_at_the_root(tmp_path):
    data, scratch = tmp_path / "data", tmp_path / "scratch"
    make_sources(data)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("keep")
    root = tmp_path / "kqi"
    root.symlink_to(precious)
    build_link_tree(plan_job("alice", 11), data, scratch, root)
    assert root.is_dir() and not root.is_symlink()
    assert (precious / "keep.txt").read_text() == "keep"
    assert os.readlink(root / "output") == str(data / "users/alice/jobs/11/output")
