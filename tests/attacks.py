"""Attempts of one user (bob) against the platform, other users and the machine: run inside bob's
sandbox (a terminal, a kernel, a job) by tests/test_isolation.py. Self-contained (standard
library only, nothing of the project): it is copied into bob's home and bob's job code.

    python attacks.py CONFIG.json [NAME ...]      # the named attempts, or all

CONFIG names the targets (paths and host pids of other users, the hub, the kqi service; sha256
of tokens bob must not hold). One JSON line per attempt:
``{"attack": name, "ok": bool, "errno": "EROFS", "error": "...", "detail": ...}``; ``ok`` true
means the attempt SUCCEEDED, i.e. a breach. ``errno`` is the symbolic errno of the refusal;
"none-visible" when there was nothing of another user to try at all (no process, no terminal).
"""

from __future__ import annotations

import ctypes
import errno as E
import hashlib
import json
import os
import re
import signal
import subprocess
import sys

ATTACKS: dict = {}
CFG: dict = {}
PTRACE_ATTACH, PTRACE_DETACH = 16, 17


def attack(fn):
    ATTACKS[fn.__name__.replace("_", "-")] = fn
    return fn


class Refused(Exception):
    """Not an OSError, but refused all the same (a command's exit status and words)."""

    def __init__(self, code: str, message: str, detail=None):
        super().__init__(message)
        self.code, self.detail = code, detail


def name_of(e: OSError) -> str:
    return E.errorcode.get(e.errno or 0, str(e.errno))


def try_write(path: str, create: bool = True) -> str:
    """Open ``path`` for writing; an existing file is opened to append, never changed."""
    flags = os.O_WRONLY | (os.O_CREAT | os.O_EXCL if create else os.O_APPEND)
    fd = os.open(path, flags, 0o644)
    os.close(fd)
    if create:
        os.unlink(path)
    return f"opened {path} for writing"


def try_read(path: str) -> str:
    with open(path, "rb") as f:
        data = f.read(200)
    return f"read {len(data)} bytes of {path}"


def foreign_pids() -> list[int]:
    """Pids in this /proc that are not this account's."""
    me, out = os.getuid(), []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.stat(f"/proc/{d}").st_uid != me:
                    out.append(int(d))
            except OSError:
                continue
    return sorted(out)


# -- writing where no user may --------------------------------------------------------------------
@attack
def write_venv_pth():
    return try_write(os.path.join(CFG["venv_site"], "kqi-attack-x.pth"))


@attack
def write_platform_code():
    return try_write(CFG["platform_code"], create=False)


@attack
def write_etc():
    return try_write("/etc/kqi-x")


@attack
def write_usr_local_bin():
    return try_write("/usr/local/bin/kqi-x")


@attack
def cgroup_escape():
    """Move this process into the root memory cgroup, out of the profile's limit."""
    for path in ("/sys/fs/cgroup/memory/cgroup.procs", "/sys/fs/cgroup/cgroup.procs"):
        if os.path.exists(path):
            with open(path, "w") as f:
                f.write(str(os.getpid()))
            return f"moved into {path}"
    raise OSError(E.ENOENT, "no cgroup.procs", "/sys/fs/cgroup")


# -- reading what is not bob's --------------------------------------------------------------------
def _reader(key: str):
    def run():
        return try_read(CFG[key])

    return run


for _key in (
    "alice_secret",
    "alice_job_output",
    "group_dataset",
    "hub_db",
    "cookie_secret",
    "service_token",
):
    ATTACKS["read-" + _key.replace("_", "-")] = _reader(_key)


@attack
def env_tokens():
    """Any value (or token-like part of one) of this process's environment that is a token of
    another user, the hub or the service (by sha256); names that look like tokens."""
    forbidden = set(CFG["forbidden_sha256"])
    found = []
    for k, v in os.environ.items():
        for part in {v, *re.findall(r"[A-Za-z0-9_-]{16,}", v)}:
            if hashlib.sha256(part.encode()).hexdigest() in forbidden:
                found.append(k)
    names = sorted(k for k in os.environ if re.search("TOKEN|SECRET|PASSW|KEY", k))
    own = {k: hashlib.sha256(os.environ[k].encode()).hexdigest() for k in names}
    if found:
        return f"holds a forbidden token in {sorted(set(found))}", own
    raise Refused("none-visible", f"no forbidden token; token-like names {names}", own)


# -- other processes ------------------------------------------------------------------------------
@attack
def proc_alice_environ():
    return try_read(f"/proc/{CFG['alice_pid']}/environ")


@attack
def proc_alice_init_environ():
    return try_read(f"/proc/{CFG['alice_init_pid']}/environ")


@attack
def proc_alice_bwrap_environ():
    """bubblewrap of alice's server: root, on the host (with PATH and LANG only: her server's
    environment reaches the init inside through a memfd)."""
    return try_read(f"/proc/{CFG['alice_bwrap_pid']}/environ")


@attack
def proc_hub_root():
    return try_read(f"/proc/{CFG['hub_pid']}/root/etc/hostname")


@attack
def proc_service_environ():
    return try_read(f"/proc/{CFG['service_pid']}/environ")


@attack
def proc_foreign():
    """Every pid visible here is this account's (a root-owned pid 1 is reported as such: the
    test expects none, servers and jobs alike run their init as the user)."""
    others = foreign_pids()
    pid1_root = others == [1] and os.stat("/proc/1").st_uid == 0
    if others and not pid1_root:
        return f"processes of other uids visible: {others}", others
    visible = len([d for d in os.listdir("/proc") if d.isdigit()])
    detail = {"pid1_root": pid1_root, "visible": visible}
    raise Refused("none-visible", f"only this account's processes ({detail})", detail)


@attack
def kill_alice_server():
    os.kill(CFG["alice_pid"], signal.SIGTERM)
    return f"SIGTERM sent to {CFG['alice_pid']}"


@attack
def kill_hub():
    os.kill(CFG["hub_pid"], 0)
    return f"may signal the hub ({CFG['hub_pid']})"


@attack
def kill_foreign():
    """Signal 0 (the permission check) to every visible process of another uid."""
    others = foreign_pids()
    if not others:
        raise Refused("none-visible", "no process of another uid visible")
    errs = []
    for pid in others:
        try:
            os.kill(pid, 0)
            return f"may signal pid {pid}"
        except OSError as e:
            errs.append(e)
    raise errs[0]


def _ptrace(pid: int) -> str:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    if libc.ptrace(PTRACE_ATTACH, pid, None, None) != 0:
        n = ctypes.get_errno()
        raise OSError(n, os.strerror(n), f"ptrace {pid}")
    try:
        os.waitpid(pid, 0x40000000)  # __WALL: the tracee stops; then let it go
    finally:
        libc.ptrace(PTRACE_DETACH, pid, None, None)
    return f"attached to {pid}"


@attack
def ptrace_alice_server():
    return _ptrace(CFG["alice_pid"])


@attack
def ptrace_foreign():
    others = foreign_pids()
    if not others:
        raise Refused("none-visible", "no process of another uid visible")
    return _ptrace(others[0])


@attack
def pts_alice():
    """alice's open terminal, by its path through her server's /proc entry."""
    fd = os.open(CFG["alice_pts"], os.O_WRONLY | os.O_NOCTTY)
    os.close(fd)
    return f"opened {CFG['alice_pts']}"


@attack
def pts_foreign():
    """Every terminal in this /dev/pts that is not this account's."""
    me, tried = os.getuid(), []
    for n in sorted(os.listdir("/dev/pts")):
        path = f"/dev/pts/{n}"
        if n == "ptmx" or os.stat(path).st_uid == me:
            continue
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NOCTTY))
            return f"opened {path}"
        except OSError as e:
            tried.append(e)
    if tried:
        raise tried[0]
    entries = sorted(os.listdir("/dev/pts"))
    raise Refused("none-visible", f"no terminal of another uid in /dev/pts: {entries}")


@attack
def mknod_pts():
    """A device node of terminal 136:0 in the home (another sandbox's pts has that number)."""
    path = os.path.join(CFG["home"], "kqi-pts-node")
    os.mknod(path, 0o600 | 0o020000, os.makedev(136, 0))
    os.unlink(path)
    return f"made {path}"


# -- privileges -----------------------------------------------------------------------------------
@attack
def setuid_0():
    os.setuid(0)
    return "became uid 0"


def _shell(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["unshare", "-Urm", "sh", "-c", script], capture_output=True, text=True, timeout=30
    )


def _words(text: str) -> str:
    low = text.lower()
    for code, words in (
        ("ENOENT", "no such file"),
        ("EACCES", "permission denied"),
        ("EPERM", "operation not permitted"),
        ("EINVAL", "not mounted"),
        ("EINVAL", "invalid argument"),
        ("EROFS", "read-only file system"),
    ):
        if words in low:
            return code
    return "refused"


@attack
def userns_umount():
    """A user namespace of its own (root there, no rights over the host's files): unmount the
    empty data root over the real one, then read alice's secret."""
    dr, secret = CFG["data_root"], CFG["alice_secret"]
    r = _shell(f"umount {dr} 2>&1; echo umount=$?; cat {secret} 2>&1; echo cat=$?")
    out = r.stdout + r.stderr
    if r.returncode == 0 and "cat=0" in out:
        return f"read alice's secret: {out[-300:]}"
    um, _, rest = out.partition("umount=")
    cat = rest.split("\n", 1)[1] if "\n" in rest else rest
    raise Refused(_words(cat), f"umount: {um.strip() or '?'} / {out.strip()[-300:]}")


@attack
def userns_remount():
    """In a user namespace: remount / read-write, then write /etc."""
    r = _shell("mount -o remount,rw / 2>&1 && : > /etc/kqi-x && echo WROTE")
    out = (r.stdout + r.stderr).strip()
    if "WROTE" in out:
        return "remounted / and wrote /etc/kqi-x"
    raise Refused(_words(out), out[-300:])


def run(name: str) -> dict:
    res = {"attack": name, "ok": False, "errno": "", "error": ""}
    try:
        got = ATTACKS[name]()
        if isinstance(got, tuple):
            got, res["detail"] = got
        res.update(ok=True, error=str(got))
    except OSError as e:
        res.update(errno=name_of(e), error=str(e))
    except Refused as e:
        res.update(errno=e.code, error=str(e))
        if e.detail is not None:
            res["detail"] = e.detail
    except Exception as e:  # a bug of the attempt itself: not a breach, but visible
        res.update(errno=type(e).__name__, error=repr(e))
    return res


def main(argv: list[str]) -> None:
    CFG.update(json.loads(open(argv[0]).read()))
    for name in argv[1:] or list(ATTACKS):
        print(json.dumps(run(name)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
