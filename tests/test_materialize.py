"""Materialising a layout plan: the sandbox's bubblewrap arguments (pure) and the fallback
tree of links."""

import os
import sys
from pathlib import Path

import pytest

from hub_ext.layout import JobRef, plan_job, plan_notebook
from hub_ext.materialize import build_link_tree, bwrap_args, missing_sources
from hub_ext.sandbox import HostView, expose_ops, host_view, sandbox_pyvenv

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


# -- the sandbox's view of the machine (hub_ext/sandbox.py) ---------------------------------------
HOST = HostView(
    hidden=("/root", "/home"),
    exposed=("/root/.pyenv/versions/3.11.7", "/root/.pyenv/versions/3.11.7/bin", "/opt/venv"),
    masked=("/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages",),
    files=(("/srv/kqi-data/run/pyvenv-sandbox.cfg", "/opt/venv/pyvenv.cfg"),),
)


def ops(args, flag):
    """The operands of every ``flag`` in order (two for binds, one for the others)."""
    width = 2 if flag in ("--bind", "--ro-bind") else 1
    return [tuple(args[i + 1 : i + 1 + width]) for i, a in enumerate(args) if a == flag]


def test_sandbox_root_read_only_with_its_own_proc_dev_and_tmp():
    args = bwrap_args(notebook_plan(), DATA, SCRATCH, [HOME], host=HOST)
    assert args[1:4] == ["--ro-bind", "/", "/"]
    assert "--dev-bind" not in args
    assert ("/proc",) in ops(args, "--proc") and ("/dev",) in ops(args, "--dev")
    for d in ("/tmp", "/dev/shm", "/var/tmp"):
        i = args.index(d)
        assert args[i - 3 : i] == ["--perms", "1777", "--tmpfs"]
    for d in ("/root", "/home"):
        assert args[args.index(d) - 1] == "--tmpfs"


def test_sandbox_exposes_the_interpreter_below_a_hidden_folder():
    args = bwrap_args(notebook_plan(), DATA, SCRATCH, [], host=HOST)
    # each parent below /root made 0755, in order, then the bind
    dirs = [d for (d,) in ops(args, "--dir") if d.startswith("/root")]
    assert dirs == ["/root/.pyenv", "/root/.pyenv/versions"]
    for d in dirs:
        assert args[args.index(d) - 3 : args.index(d) - 1] == ["--perms", "0755"]
    py = "/root/.pyenv/versions/3.11.7"
    assert (py, py) in ops(args, "--ro-bind")
    order = [args.index(x) for x in ("/root", "/root/.pyenv", "/root/.pyenv/versions", py)]
    assert order == sorted(order)  # hidden, then the parents, then the bind
    # below an exposed folder: comes with it; outside hidden folders: visible already
    assert (f"{py}/bin", f"{py}/bin") not in ops(args, "--ro-bind")
    assert ("/opt/venv", "/opt/venv") not in ops(args, "--ro-bind")
    # the base site-packages covered after the bind; the sandbox's pyvenv.cfg over the venv's
    site = f"{py}/lib/python3.11/site-packages"
    assert args.index(site) > args.index(py) and args[args.index(site) - 1] == "--tmpfs"
    assert ("/srv/kqi-data/run/pyvenv-sandbox.cfg", "/opt/venv/pyvenv.cfg") in ops(
        args, "--ro-bind"
    )


def test_expose_ops_a_path_that_is_itself_hidden_comes_back_whole():
    assert expose_ops(["/home/kqi/venv", "/home"], ["/home"]) == ["--ro-bind", "/home", "/home"]
    assert expose_ops(["/usr/lib/python3"], ["/home"]) == []


def test_expose_ops_a_file_below_a_hidden_folder():
    """/etc/resolv.conf linked to /run/systemd/resolve/stub-resolv.conf: names still resolve."""
    f = "/run/systemd/resolve/stub-resolv.conf"
    assert expose_ops([f], ["/run"]) == [
        *("--perms", "0755", "--dir", "/run/systemd"),
        *("--perms", "0755", "--dir", "/run/systemd/resolve"),
        *("--ro-bind", f, f),
    ]


def test_sandbox_hides_the_data_root_after_the_machine_and_keeps_the_home():
    args = bwrap_args(notebook_plan(), DATA, SCRATCH, [HOME], host=HOST)
    hide = args.index(str(DATA))
    assert args[hide - 1] == "--tmpfs" and hide > args.index("/root/.pyenv/versions/3.11.7")
    assert args.index(str(HOME)) > hide


def test_sandbox_namespaces_and_the_init_as_pid_1():
    args = bwrap_args(notebook_plan(), DATA, SCRATCH, [HOME], host=HOST, as_pid_1=True, info_fd=7)
    tail = args[args.index("--unshare-pid") :]
    for flag in ("--unshare-ipc", "--unshare-uts", "--new-session", "--as-pid-1"):
        assert flag in tail
    assert tail[tail.index("--info-fd") + 1] == "7"
    assert args[-3:] == ["--cap-drop", "ALL", "--"] and "--die-with-parent" not in args
    job = bwrap_args(plan_job("alice", 7), DATA, SCRATCH, [], host=HOST, die_with_parent=True)
    assert "--die-with-parent" in job and "--as-pid-1" not in job and "--info-fd" not in job


def test_sandbox_job_sees_the_owners_home_read_only():
    args = bwrap_args(plan_job("alice", 7), DATA, SCRATCH, [], keep_read_only=[HOME], host=HOST)
    assert (str(HOME), str(HOME)) in ops(args, "--ro-bind")
    assert (str(HOME), str(HOME)) not in ops(args, "--bind")
    assert args.index(str(HOME)) > args.index(str(DATA))


def test_sandbox_pyvenv_turns_the_system_site_on():
    cfg = "home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11.7\n"
    assert sandbox_pyvenv(cfg) == cfg.replace("= false", "= true")
    assert sandbox_pyvenv("home = /usr/bin\n").endswith("include-system-site-packages = true\n")


def test_host_view_refuses_relative_or_root_hidden_paths(tmp_path):
    for bad in (["root"], ["/"], ["/tmp/../"]):
        with pytest.raises(ValueError, match="hidden paths must be absolute"):
            host_view(bad, tmp_path)


def test_host_view_of_this_machine(tmp_path):
    view = host_view(["/root", str(tmp_path / "missing")], tmp_path / "run")
    assert view.hidden == ("/root",)  # a folder that does not exist is not hidden
    assert sys.prefix in view.exposed and str(Path(__file__).resolve().parents[1]) in view.exposed
    if sys.prefix != sys.base_prefix:  # a venv: its sandbox copy of pyvenv.cfg
        [(src, dest)] = view.files
        assert dest == f"{sys.prefix}/pyvenv.cfg"
        assert "include-system-site-packages = true" in Path(src).read_text()
