"""Unix accounts of hub users: names (pure), creation with the machine's real useradd, a uid
never given twice, a stranger's account never shared, and homes handed over without following
links."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from pathlib import Path

import pytest

from hub_ext.accounts import AccountError, KqiAccounts, comment, prepare_tree, unix_name
from hub_ext.isolation import Decision, IsolationUnavailable, decide

from .platform import remove_accounts

PREFIX = f"ka{os.getpid() % 10000:04d}-"
ALL = {"bwrap": True, "setpriv": True, "useradd": True, "groupadd": True}


@pytest.mark.parametrize(
    ("hub", "unix"),
    [("alice", "kqi-alice"), ("bob_2", "kqi-bob_2"), ("a-b", "kqi-a-b")],
)
def test_plain_names_keep_their_spelling(hub: str, unix: str) -> None:
    assert unix_name(hub) == unix


@pytest.mark.parametrize("hub", ["Alice", "alice@example.org", "Zoë", "x" * 40, "a.b", "日本"])
def test_other_names_are_mapped_valid_and_unique(hub: str) -> None:
    name = unix_name(hub)
    assert len(name) <= 32 and name.startswith("kqi-")
    assert name.replace("-", "").replace("_", "").isalnum() and name == name.lower()
    # the hash keeps names apart that would read the same
    assert name != unix_name(hub.lower() + "x") and name != unix_name(hub + "1")


def test_lossy_names_never_collide() -> None:
    names = ["Alice", "alice.", "alice!", "ALICE", "alice"]
    assert len({unix_name(n) for n in names}) == len(names)


@pytest.fixture
def accounts(tmp_path: Path):
    a = KqiAccounts(prefix=PREFIX, uid_min=230000, uid_max=239999, data_root=str(tmp_path))
    yield a
    remove_accounts(PREFIX)


def test_account_made_once_with_its_own_uid(accounts: KqiAccounts) -> None:
    a = accounts.ensure("ann")
    assert a.name == f"{PREFIX}ann" and a.uid == a.gid and 230000 <= a.uid <= 239999
    pw = pwd.getpwnam(a.name)
    assert pw.pw_shell == "/usr/sbin/nologin" and pw.pw_gecos == comment("ann")
    assert accounts.ensure("ann") == a  # the same account again
    b = accounts.ensure("Ben")
    assert b.uid != a.uid and b.name != a.name
    assert accounts.find("ann") == a


def test_a_uid_is_never_given_to_another_hub_user(accounts: KqiAccounts) -> None:
    a = accounts.ensure("ann")
    subprocess.run(["userdel", a.name], check=True)  # removed by hand, uid free on the machine
    subprocess.run(["groupdel", a.name], check=False)
    c = accounts.ensure("cid")
    assert c.uid > a.uid
    assert accounts.ensure("ann").uid == a.uid  # ann comes back with her own uid


def test_a_strangers_account_is_not_shared(accounts: KqiAccounts) -> None:
    name = f"{PREFIX}eve"
    subprocess.run(["useradd", "--no-create-home", "--uid", "239990", name], check=True)
    try:
        with pytest.raises(AccountError, match="not kqi-hub's account"):
            accounts.ensure("eve")
    finally:
        subprocess.run(["userdel", name], check=True)
        subprocess.run(["groupdel", name], check=False)


def test_prefix_must_make_valid_names(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="prefix"):
        KqiAccounts(prefix="Bad Prefix", data_root=str(tmp_path))


def test_home_handed_over_without_following_links(accounts: KqiAccounts, tmp_path: Path) -> None:
    a = accounts.ensure("ann")
    home, outside = tmp_path / "home", tmp_path / "outside"
    (home / "sub").mkdir(parents=True)
    (home / "sub" / "f").write_text("x")
    outside.write_text("platform's")
    (home / "link").symlink_to(outside)
    (home / "hard").hardlink_to(outside)  # another tree's file: left alone
    prepare_tree(home, a)
    assert os.stat(home).st_uid == a.uid and os.stat(home).st_mode & 0o777 == 0o700
    assert os.stat(home / "sub" / "f").st_uid == a.uid
    assert os.lstat(home / "link").st_uid == a.uid
    assert os.stat(outside).st_uid == 0  # neither through the link nor the hard link


def test_isolated_only_as_root_with_every_tool() -> None:
    assert decide("auto", 0, ALL) == Decision("bubblewrap", True, False)
    assert decide("bubblewrap", 0, ALL).isolated


@pytest.mark.parametrize(
    ("euid", "missing", "mode", "why"),
    [
        (1000, None, "bubblewrap", "does not run as root"),
        (0, "bwrap", "none", "bwrap not installed"),
        (0, "setpriv", "bubblewrap", "setpriv not installed"),
    ],
)
def test_auto_without_isolation_lets_only_admins_in(euid, missing, mode, why) -> None:
    have = {**ALL, **({missing: False} if missing else {})}
    d = decide("auto", euid, have)
    assert (d.mode, d.isolated, d.admins_only) == (mode, False, True)
    assert why in d.note() and "only admins" in d.note() and "'none'" in d.note()
    assert d.refusal("bob").startswith("bob may not start servers or jobs here")
    with pytest.raises(IsolationUnavailable, match=why):
        decide("bubblewrap", euid, have)


def test_explicit_none_lets_everyone_in_and_says_so() -> None:
    d = decide("none", 0, ALL)
    assert (d.mode, d.isolated, d.admins_only) == ("none", False, False)
    assert "NOT isolated" in d.note()


def test_a_deleted_hub_users_account_is_locked_and_keeps_its_uid(platform) -> None:
    p = platform
    p.add_user("leaver")
    r = p.spawn("leaver")
    assert r.status_code in (201, 202), r.text
    p.wait_ready("leaver")
    p.stop_server("leaver")
    account = p.account("leaver")
    assert account is not None
    r = p.api("DELETE", "users/leaver")
    assert r.status_code == 204, r.text
    status = subprocess.run(["passwd", "-S", account.pw_name], capture_output=True, text=True)
    assert status.stdout.split()[1] == "L", status.stdout  # locked, still there
    assert pwd.getpwnam(account.pw_name).pw_uid == account.pw_uid
    registry = (p.data_root / "hub/accounts.json").read_text()
    assert account.pw_uid in json.loads(registry)["ever"]
