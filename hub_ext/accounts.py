"""A Unix account per hub user on one machine: servers, terminals, kernels and jobs run as it.

``unix_name`` is pure: a hub name mapped to a valid, unique and stable Unix name (the TLJH rule:
``jupyter-<name>``, a long or lossy name shortened with a hash). ``KqiAccounts`` creates the
account on first use with ``groupadd``/``useradd`` (no home of its own: the platform's home is
bound into the sandbox; no login shell), records it in ``<data root>/hub/accounts.json`` under a
lock shared by the hub and the kqi service, and never gives a uid to another hub user: a uid
once handed out stays taken, also after its hub user was deleted (the account is then locked,
never removed, so files it left keep an owner nobody else gets).
"""

from __future__ import annotations

import fcntl
import grp
import hashlib
import json
import os
import pwd
import re
import subprocess
import unicodedata
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitlets import Integer, Unicode, validate
from traitlets.config import Config, Configurable

#: what useradd accepts (Debian's default NAME_REGEX, without the trailing $)
UNIX_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
MAX_NAME = 32
COMMENT = "kqi-hub user"


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int


def _hash(hub_name: str, n: int) -> str:
    return hashlib.sha256(hub_name.encode()).hexdigest()[:n]


def unix_name(hub_name: str, prefix: str = "kqi-", maxlen: int = MAX_NAME) -> str:
    """``prefix`` + the hub name in lower-case ASCII letters, digits, ``_`` and ``-``. A name
    that had to be changed (other characters, upper case) or is too long ends in ``-`` and six
    hex digits of its hash, so two hub names never map to one account."""
    ascii_ = unicodedata.normalize("NFKD", hub_name).encode("ascii", "ignore").decode()
    base = re.sub(r"[^a-z0-9_-]", "-", ascii_.lower())
    name = prefix + base
    if base != hub_name or len(name) > maxlen or not base:
        name = f"{name[: maxlen - 7].rstrip('-')}-{_hash(hub_name, 6)}"
    if not UNIX_NAME.fullmatch(name):
        raise ValueError(f"no valid Unix name for {hub_name!r} with prefix {prefix!r}")
    return name


def comment(hub_name: str) -> str:
    """The GECOS field that marks an account as this platform's, for this hub user."""
    return f"{COMMENT} {_hash(hub_name, 16)}"


class AccountError(RuntimeError):
    """The account cannot be had (taken by someone else, no uid left, useradd failed)."""


class KqiAccounts(Configurable):
    """Creates and finds the Unix accounts of hub users (needs root)."""

    prefix = Unicode(
        "kqi-",
        help="""Start of every account's name: hub user 'alice' runs as 'kqi-alice'. Letters,
        digits, '_' and '-', starting with a letter; keep it short (names have 32 characters).""",
    ).tag(config=True)
    uid_min = Integer(
        20000,
        help="""Lowest uid (and gid) given to an account. Keep the range apart from the
        machine's own users (Debian gives 1000-59999 to people; 20000 up leaves room).""",
    ).tag(config=True)
    uid_max = Integer(59999, help="Highest uid (and gid) given to an account.").tag(config=True)
    data_root = Unicode(help="The data root: the registry is <data root>/hub/accounts.json.").tag(
        config=True
    )

    @validate("prefix")
    def _check_prefix(self, proposal):
        value = proposal["value"]
        if not re.fullmatch(r"[a-z][a-z0-9_-]{0,15}", value):
            raise ValueError(f"KqiAccounts.prefix {value!r}: lower-case letters, digits, _ and -")
        return value

    @property
    def registry(self) -> Path:
        return Path(self.data_root, "hub", "accounts.json")

    @contextmanager
    def _locked(self) -> Iterator[dict]:
        """The registry, read and written under an exclusive lock (hub and service both)."""
        self.registry.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.registry.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = json.loads(self.registry.read_text())
            except FileNotFoundError:
                data = {}
            data.setdefault("users", {})
            data.setdefault("ever", [])
            before = json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before:
                tmp = self.registry.with_suffix(".tmp")
                tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
                os.chmod(tmp, 0o600)
                os.replace(tmp, self.registry)

    def find(self, hub_name: str) -> Account | None:
        """The account of ``hub_name`` if it was made (no change to the machine)."""
        with self._locked() as data:
            entry = data["users"].get(hub_name)
        if not entry:
            return None
        try:
            pw = pwd.getpwnam(entry["name"])
        except KeyError:
            return None
        return Account(pw.pw_name, pw.pw_uid, pw.pw_gid) if pw.pw_uid == entry["uid"] else None

    def ensure(self, hub_name: str) -> Account:
        """The account of ``hub_name``, made now if it does not exist yet."""
        with self._locked() as data:
            entry = data["users"].get(hub_name)
            name = entry["name"] if entry else unix_name(hub_name, self.prefix)
            try:
                pw = pwd.getpwnam(name)
            except KeyError:
                pw = None
            if pw is not None:
                if entry and pw.pw_uid != entry["uid"]:
                    raise AccountError(
                        f"account {name} has uid {pw.pw_uid}, not {entry['uid']} as recorded"
                    )
                if not entry and pw.pw_gecos != comment(hub_name):
                    raise AccountError(
                        f"a Unix account {name} exists that is not kqi-hub's account of "
                        f"{hub_name!r}: not sharing it"
                    )
            elif entry:
                self._create(name, entry["uid"], hub_name)  # removed by hand: same uid again
                pw = pwd.getpwnam(name)
            else:
                pw = self._create_new(name, hub_name, data["ever"])
            if not entry:
                data["users"][hub_name] = {"name": name, "uid": pw.pw_uid}
                data["ever"] = sorted({*data["ever"], pw.pw_uid})
            if pw.pw_uid == 0 or pw.pw_gid == 0:
                raise AccountError(f"account {name} is root's uid or gid: refused")
            return Account(pw.pw_name, pw.pw_uid, pw.pw_gid)

    def _create_new(self, name: str, hub_name: str, ever: list[int]) -> pwd.struct_passwd:
        """A new account with a free uid; another platform on this machine may take the same
        uid at the same moment (groupadd/useradd then refuse it): the next one is tried."""
        tried: list[int] = []
        for _ in range(5):
            uid = self._free_id([*ever, *tried])
            try:
                self._create(name, uid, hub_name)
                return pwd.getpwnam(name)
            except AccountError:
                if _group_named(name, uid):  # our half-made account: nothing stays behind
                    subprocess.run(["groupdel", name], capture_output=True)
                if not _id_taken(uid):  # it failed for another reason than a taken uid
                    raise
                tried.append(uid)
        raise AccountError(f"no free uid for {name} after {tried}")

    def _free_id(self, ever: list[int]) -> int:
        """The lowest uid above every one this platform ever handed out that is neither a
        uid nor a gid on this machine now (other platforms may share the range)."""
        mine = [u for u in ever if self.uid_min <= u <= self.uid_max]
        used = {p.pw_uid for p in pwd.getpwall()} | {g.gr_gid for g in grp.getgrall()}
        uid = max(mine, default=self.uid_min - 1) + 1
        while uid in used:
            uid += 1
        if uid > self.uid_max:
            raise AccountError(f"no uid left in {self.uid_min}-{self.uid_max}")
        return uid

    def _create(self, name: str, uid: int, hub_name: str) -> None:
        steps = [
            ["groupadd", "--gid", str(uid), name],
            [
                "useradd",
                "--uid",
                str(uid),
                "--gid",
                str(uid),
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                "--no-user-group",
                "--no-log-init",
                "--comment",
                comment(hub_name),
                name,
            ],
        ]
        for argv in steps:
            if argv[0] == "groupadd" and _group_named(name, uid):
                continue
            r = subprocess.run(argv, capture_output=True, text=True)
            if r.returncode:
                raise AccountError(f"{argv[0]} {name} failed: {r.stderr.strip() or r.returncode}")

    def lock(self, hub_name: str) -> bool:
        """The hub user was deleted: lock the account (kept, so its uid stays taken)."""
        account = self.find(hub_name)
        if account is None:
            return False
        r = subprocess.run(
            ["usermod", "--lock", "--expiredate", "1", account.name], capture_output=True
        )
        return r.returncode == 0


def _id_taken(uid: int) -> bool:
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
            return True
        except KeyError:
            continue
    return False


def _group_named(name: str, gid: int) -> bool:
    try:
        return grp.getgrnam(name).gr_gid == gid
    except KeyError:
        return False


def prepare_tree(path: Path, account: Account, mode: int = 0o700) -> None:
    """Make ``path`` the account's folder: created if missing, then owned by it with ``mode``.
    A tree the platform made as root (an old home, extracted code) is handed over entry by
    entry without following links; a regular file with several links is left alone (it may
    be another tree's file)."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        top = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as e:
        raise AccountError(f"{path} is not a folder: {e.strerror}") from e
    try:
        st = os.fstat(top)
        if st.st_uid != account.uid or st.st_gid != account.gid:
            for _root, dirs, files, dfd in os.fwalk(dir_fd=top, follow_symlinks=False):
                for entry in (*dirs, *files):
                    est = os.stat(entry, dir_fd=dfd, follow_symlinks=False)
                    if est.st_mode & 0o170000 == 0o100000 and est.st_nlink > 1:
                        continue
                    if est.st_uid == 0:
                        os.chown(entry, account.uid, account.gid, dir_fd=dfd, follow_symlinks=False)
            os.fchown(top, account.uid, account.gid)
        os.fchmod(top, mode)
    finally:
        os.close(top)


def setpriv_argv(account: Account, setpriv: str = "setpriv") -> list[str]:
    """Become the account for good: its uid and gid, no other groups, no capabilities left in
    any set, and no way to gain any (``no_new_privs``: setuid programs do not elevate)."""
    return [
        setpriv,
        f"--reuid={account.uid}",
        f"--regid={account.gid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        "--",
    ]


#: the hub's KqiAccounts settings as JSON, for the kqi service (it makes the accounts of users
#: who submit jobs before they ever started a server)
SETTINGS_ENV = "KQI_ACCOUNTS"


def hub_settings(config: Any) -> str:
    """``c.KqiAccounts.*`` of the hub's whole config (kqi_hub_config.py and command line)."""
    section = config.KqiAccounts if "KqiAccounts" in config else {}
    return json.dumps({k: section[k] for k in ("prefix", "uid_min", "uid_max") if k in section})


def accounts_from_hub(data_root: str, environ: Mapping[str, str] = os.environ) -> KqiAccounts:
    """The same accounts as the hub's: its settings from ``KQI_ACCOUNTS``."""
    settings = json.loads(environ.get(SETTINGS_ENV) or "{}")
    return KqiAccounts(config=Config({"KqiAccounts": settings}), data_root=data_root)
