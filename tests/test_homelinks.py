"""Home links ~/input, ~/parent, ... (DESIGN: "The /kqi layout"): never touch the user's own."""

import os

import pytest

from server_ext.homelinks import apply_home_links

ALL = ["input", "parent", "inference", "git", "jobs"]


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "home"
    h.mkdir()
    return h


def make_root(base, names, root_name="kqi"):
    root = base / root_name
    for name in names:
        (root / name).mkdir(parents=True)
    return root


def by_name(results):
    return {r.name: r for r in results}


def test_links_made_for_present_targets_only(tmp_path, home):
    root = make_root(tmp_path / "srv", ["input", "jobs"])
    results = by_name(apply_home_links(home, str(root), ALL))
    assert results["input"].status == "made"
    assert results["jobs"].status == "made"
    assert os.readlink(home / "input") == str(root / "input")
    assert os.readlink(home / "jobs") == str(root / "jobs")
    # wanted but missing under the root, or present but not wanted: no link
    for name in ("parent", "inference", "git"):
        assert not os.path.lexists(home / name)
    assert set(results) == {"input", "jobs"}


def test_present_but_not_wanted_is_not_linked(tmp_path, home):
    root = make_root(tmp_path / "srv", ["input", "git"])
    results = by_name(apply_home_links(home, str(root), ["input"]))
    assert results["input"].status == "made"
    assert not os.path.lexists(home / "git")


def test_links_reach_the_files(tmp_path, home):
    root = make_root(tmp_path / "srv", ["input"])
    (root / "input" / "data.csv").write_text("a,b\n")
    apply_home_links(home, str(root), ["input"])
    assert (home / "input" / "data.csv").read_text() == "a,b\n"


def test_second_run_keeps_links(tmp_path, home):
    root = make_root(tmp_path / "srv", ["input", "jobs"])
    apply_home_links(home, str(root), ALL)
    results = by_name(apply_home_links(home, str(root), ALL))
    assert results["input"].status == "kept" and results["jobs"].status == "kept"


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_users_real_input_is_never_touched(tmp_path, home, kind):
    root = make_root(tmp_path / "srv", ["input", "jobs"])
    mine = home / "input"
    if kind == "folder":
        mine.mkdir()
        (mine / "notes.txt").write_text("mine")
    else:
        mine.write_text("mine")
    results = by_name(apply_home_links(home, str(root), ALL))
    r = results["input"]
    assert r.status == "refused"
    assert kind in r.reason and "input" in r.reason
    assert not mine.is_symlink()
    if kind == "folder":
        assert (mine / "notes.txt").read_text() == "mine"
    else:
        assert mine.read_text() == "mine"
    # the other links are still made
    assert results["jobs"].status == "made"


def test_users_real_folder_is_left_alone_when_not_wanted(tmp_path, home):
    root = make_root(tmp_path / "srv", [])
    (home / "git").mkdir()
    (home / "git" / "x").write_text("x")
    apply_home_links(home, str(root), ALL)
    assert (home / "git" / "x").read_text() == "x"


@pytest.mark.parametrize("present", [True, False])
def test_users_own_symlink_elsewhere_is_left_alone(tmp_path, home, present):
    root = make_root(tmp_path / "srv", ["input"] if present else [])
    elsewhere = tmp_path / "mydata"
    elsewhere.mkdir()
    (home / "input").symlink_to(elsewhere)
    results = by_name(apply_home_links(home, str(root), ALL))
    assert os.readlink(home / "input") == str(elsewhere)
    assert results["input"].status == ("refused" if present else "absent")
    assert str(elsewhere) in results["input"].reason


def test_users_own_dangling_symlink_is_left_alone(tmp_path, home):
    root = make_root(tmp_path / "srv", ["parent"])
    (home / "parent").symlink_to(tmp_path / "gone")
    results = by_name(apply_home_links(home, str(root), ALL))
    assert results["parent"].status == "refused"
    assert os.readlink(home / "parent") == str(tmp_path / "gone")


def test_users_link_into_their_own_kqi_folder_is_left_alone(tmp_path, home):
    # A user's project folder that happens to be called 'kqi' is not a kqi root.
    project = home / "projects" / "kqi" / "input"
    project.mkdir(parents=True)
    (home / "input").symlink_to(project)
    root = make_root(tmp_path / "srv", ["input"])
    results = by_name(apply_home_links(home, str(root), ALL))
    assert os.readlink(home / "input") == str(project)
    assert results["input"].status == "refused"


def test_stale_link_of_ours_is_removed(tmp_path, home):
    root = make_root(tmp_path / "srv", ["input", "parent"])
    apply_home_links(home, str(root), ALL)
    (root / "parent").rmdir()  # next start: no parent chosen
    results = by_name(apply_home_links(home, str(root), ["input", "jobs"]))
    assert results["parent"].status == "removed"
    assert not os.path.lexists(home / "parent")
    assert results["input"].status == "kept"


def test_link_of_ours_not_wanted_any_more_is_removed(tmp_path, home):
    root = make_root(tmp_path / "srv", ["input", "git"])
    apply_home_links(home, str(root), ["input", "git"])
    results = by_name(apply_home_links(home, str(root), ["input"]))
    assert results["git"].status == "removed"
    assert not os.path.lexists(home / "git")
    assert (root / "git").is_dir()  # only the link goes


def test_link_to_old_kqi_root_is_moved_to_the_new_one(tmp_path, home):
    old = make_root(tmp_path / "run" / "alice" / "old", ["input"])
    apply_home_links(home, str(old), ["input"])
    new = make_root(tmp_path / "run" / "alice" / "default", ["input"])
    earlier = [str(tmp_path / "run" / "alice" / "*" / "kqi")]
    results = by_name(apply_home_links(home, str(new), ["input"], earlier))
    assert results["input"].status == "moved"
    assert os.readlink(home / "input") == str(new / "input")
    assert (old / "input").is_dir()  # the old target itself is not touched


def test_link_to_old_root_removed_when_new_root_lacks_it(tmp_path, home):
    old = make_root(tmp_path / "a", ["inference"])
    apply_home_links(home, str(old), ["inference"])
    new = make_root(tmp_path / "b", [])
    results = by_name(apply_home_links(home, str(new), ALL, [str(tmp_path / "a" / "kqi")]))
    assert results["inference"].status == "removed"
    assert not os.path.lexists(home / "inference")


def test_results_serialise(tmp_path, home):
    root = make_root(tmp_path / "srv", ["input"])
    (r,) = apply_home_links(home, str(root), ["input"])
    assert r.to_dict() == {
        "name": "input",
        "status": "made",
        "target": str(root / "input"),
        "reason": "",
    }
