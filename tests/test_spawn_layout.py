"""Spawning real servers with datasets, jobs and git bound under /kqi, in both isolation modes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .jobs import add_job
from .platform import Platform


@pytest.fixture(params=["platform", "plain_platform"])
def any_platform(request) -> Platform:
    return request.getfixturevalue(request.param)


def test_datasets_mounted_read_only_with_home_link(any_platform: Platform) -> None:
    p = any_platform
    p.add_dataset("mnist", {"train/a.txt": "digits\n", "README": "mnist\n"})
    p.add_dataset("qm9", {"mol.xyz": "H 0 0 0\n"})
    p.add_user("ann")
    r = p.spawn("ann", {"profile": "standard", "datasets": ["mnist", "qm9"]})
    assert r.status_code in (201, 202), r.text
    p.wait_ready("ann")
    try:
        status, out = p.run_in_server("ann", 'cat "$KQI_ROOT/input/mnist/train/a.txt"')
        assert (status, out.strip().splitlines()[-1]) == (0, "digits")
        status, out = p.run_in_server(
            "ann", 'cat ~/input/qm9/mol.xyz; readlink ~/input; echo "$KQI_ROOT"'
        )
        lines = out.strip().splitlines()
        assert status == 0 and lines[-3] == "H 0 0 0"
        assert lines[-2] == lines[-1] + "/input"  # ~/input -> $KQI_ROOT/input
        status, out = p.run_in_server("ann", 'echo "$KQI_DATASETS"')
        assert out.strip().splitlines()[-1] == "mnist,qm9"

        layout = p.server("ann", "api/kqi/layout").json()
        targets = {b["target"]: b for b in layout["bindings"]}
        assert targets["input/mnist"]["read_only"] and targets["input/mnist"]["present"]
        assert {"input", "jobs"} <= {h["name"] for h in layout["home_links"]}

        # writing into a dataset
        status, out = p.run_in_server("ann", 'echo x > "$KQI_ROOT/input/mnist/new.txt"')
        if layout["isolation"] == "bubblewrap":
            assert layout["kqi_root"] == "/kqi" and layout["read_only_enforced"] is True
            assert status != 0 and "Read-only file system" in out
            # the server runs as ann's own account, which owns her home
            assert layout["users_isolated"] is True and layout["isolation_note"] == ""
            account = p.account("ann")
            status, out = p.run_in_server("ann", 'echo "uid=$(id -u) home=$(stat -c %u ~)"')
            assert status == 0 and f"uid={account.pw_uid} home={account.pw_uid}" in out, out
            assert not (p.data_root / "datasets/mnist/new.txt").exists()
        else:
            # no bubblewrap: the per-server folder of links cannot stop a same-uid write;
            # the platform must say so instead of pretending
            assert layout["isolation"] == "none" and layout["read_only_enforced"] is False
            assert layout["users_isolated"] is False
            assert "Users are NOT isolated" in layout["isolation_note"]
            assert layout["kqi_root"].startswith(str(p.data_root / "run" / "ann"))
            (p.data_root / "datasets/mnist/new.txt").unlink(missing_ok=True)
    finally:
        p.stop_server("ann")


def test_user_folder_named_input_is_never_replaced(any_platform: Platform) -> None:
    p = any_platform
    p.add_dataset("mnist", {"a.txt": "digits\n"})
    p.add_user("ben")
    mine = p.home("ben") / "input"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("my own notes\n")
    r = p.spawn("ben", {"datasets": ["mnist"]})
    assert r.status_code in (201, 202), r.text
    p.wait_ready("ben")
    try:
        assert not mine.is_symlink() and (mine / "notes.txt").read_text() == "my own notes\n"
        links = {h["name"]: h for h in p.server("ben", "api/kqi/layout").json()["home_links"]}
        assert links["input"]["status"] == "refused"
        assert "your own folder" in links["input"]["reason"]
        # the data is still reachable at $KQI_ROOT/input
        status, out = p.run_in_server("ben", 'cat "$KQI_ROOT/input/mnist/a.txt"')
        assert status == 0 and "digits" in out
        assert "no link ~/input" in p.log_tail(400)
    finally:
        p.stop_server("ben")


def test_respawn_with_other_options_moves_links(any_platform: Platform) -> None:
    p = any_platform
    p.add_dataset("mnist", {"a.txt": "digits\n"})
    p.add_dataset("qm9", {"mol.xyz": "H\n"})
    p.add_user("cat")
    parent = add_job(p, "cat", files={"model.pt": "weights"})
    infer = add_job(p, "cat", purpose="inference", files={"pred.csv": "1,2"})

    assert p.spawn("cat", {"datasets": ["mnist"], "parent": parent, "inference": infer}).ok
    p.wait_ready("cat")
    status, out = p.run_in_server(
        "cat",
        "cat ~/parent/model.pt ~/inference/pred.csv; echo; echo $KQI_PARENT_ID $KQI_INFERENCE_ID",
    )
    assert status == 0 and "weights1,2" in out and f"{parent} {infer}" in out
    p.stop_server("cat")

    assert p.spawn("cat", {"datasets": ["qm9"]}).ok
    p.wait_ready("cat")
    try:
        status, out = p.run_in_server("cat", "ls ~/input/; ls -d ~/parent ~/inference 2>&1")
        assert "qm9" in out and "mnist" not in out
        assert "No such file" in out
        assert not (p.home("cat") / "parent").is_symlink()
        links = {
            h["name"]: h["status"] for h in p.server("cat", "api/kqi/layout").json()["home_links"]
        }
        assert links["parent"] == "removed" and links["inference"] == "removed"
    finally:
        p.stop_server("cat")


def make_repo(repo: Path) -> None:
    """A repository with train.py at v1 on main and 'exp' on branch exp."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    (repo / "train.py").write_text("print('v1')\n")
    subprocess.run([*git, "-C", str(repo), "add", "."], check=True)
    subprocess.run([*git, "-C", str(repo), "commit", "-qm", "v1"], check=True)
    subprocess.run([*git, "-C", str(repo), "checkout", "-qb", "exp"], check=True)
    (repo / "train.py").write_text("print('exp')\n")
    subprocess.run([*git, "-C", str(repo), "commit", "-qam", "exp"], check=True)


def test_git_repository_cloned_at_ref(platform: Platform) -> None:
    p = platform
    # a file:// repository the user's account can read in its sandbox: in its own home
    repo = p.home("dan") / "repo"
    make_repo(repo)
    p.add_user("dan")
    r = p.spawn("dan", {"git": {"url": f"file://{repo}", "ref": "main"}})
    assert r.status_code in (201, 202), r.text
    p.wait_ready("dan")
    try:
        status, out = p.run_in_server(
            "dan", "cat ~/git/train.py && touch /kqi/git/scratch && echo ok"
        )
        assert status == 0 and "v1" in out and "ok" in out
    finally:
        p.stop_server("dan")


def test_git_clone_at_spawn_ignores_the_users_git_config(any_platform: Platform, tmp_path) -> None:
    """The clone runs before the server: a hook named in the user's own ~/.gitconfig must not
    run (it would run as the platform's account, or before the user's limits apply)."""
    p = any_platform
    repo = p.home("gitcfg") / "repo"
    make_repo(repo)
    p.add_user("gitcfg")
    hooks, pwned = p.home("gitcfg") / "hooks", p.home("gitcfg") / "pwned"
    hooks.mkdir(parents=True)
    (hooks / "post-checkout").write_text(f"#!/bin/sh\nid -u > {pwned}\n")
    (hooks / "post-checkout").chmod(0o755)
    (p.home("gitcfg") / ".gitconfig").write_text(f"[core]\n\thooksPath = {hooks}\n")
    # the same config does run the hook for a git that reads it (the attempt is a real one)
    probe = tmp_path / "probe"
    env = {"HOME": str(p.home("gitcfg")), "PATH": os.environ["PATH"]}
    subprocess.run(["git", "clone", "-q", f"file://{repo}", str(probe)], env=env, check=True)
    assert pwned.exists()
    pwned.unlink()

    r = p.spawn("gitcfg", {"git": {"url": f"file://{repo}"}})
    assert r.status_code in (201, 202), r.text
    p.wait_ready("gitcfg")
    try:
        status, out = p.run_in_server("gitcfg", "cat ~/git/train.py")
        assert status == 0 and "exp" in out
        assert not pwned.exists()
    finally:
        p.stop_server("gitcfg")


def test_git_clone_failure_is_reported(platform: Platform) -> None:
    p = platform
    p.add_user("eve")
    r = p.spawn("eve", {"git": {"url": "file:///nonexistent/repo.git"}})
    assert r.status_code == 400, r.text
    assert "git clone of file:///nonexistent/repo.git failed" in r.json()["message"]
    assert "" not in p.api("GET", "users/eve").json()["servers"]


def test_environment_and_startup_command(platform: Platform) -> None:
    p = platform
    p.add_user("fay")
    opts = {"env": {"MY_SEED": "42"}, "startup_command": "echo started > ~/started.txt"}
    assert p.spawn("fay", opts).ok
    p.wait_ready("fay")
    try:
        status, out = p.run_in_server("fay", 'echo "seed=$MY_SEED"; cat ~/started.txt; env')
        assert "seed=42" in out and "started" in out
        assert "KQI_ROOT=/kqi" in out
        # the kqi service's own token never reaches a user server
        token = (p.data_root / "hub" / "kqi-service-token").read_text().strip()
        assert token not in out
    finally:
        p.stop_server("fay")
