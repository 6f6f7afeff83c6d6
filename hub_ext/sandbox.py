"""The sandbox of a user's server or job: a read-only view of this machine, built by bubblewrap.

``bwrap_argv`` is pure: the host's root read-only, its own /proc (a pid namespace), /dev, /tmp,
/dev/shm and /var/tmp, the folders in ``HostView.hidden`` replaced by empty ones, the data root
hidden except what is kept (the user's home) and the layout plan at /kqi. The platform's Python
stays readable where it sits under a hidden folder (``expose_ops``). Inside, the venv's
``pyvenv.cfg`` is a copy that turns the user site on (``pip install`` goes to ``~/.local``) and
the base interpreter's site-packages is covered, so its packages do not leak in.

``host_view`` does the I/O: which hidden folders exist, where this interpreter lives, the
sandbox's ``pyvenv.cfg`` written under the data root.
"""

from __future__ import annotations

import json
import os
import re
import select
import sys
import sysconfig
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import psutil

from .layout import LayoutPlan, parent_dirs

#: folders of every sandbox that start empty and private (mode 1777, as on the host)
PRIVATE_TMP = ("/tmp", "/dev/shm", "/var/tmp")
DEFAULT_HIDDEN = ["/root", "/home", "/run", "/mnt", "/media", "/srv"]
#: the sandbox's init (pid 1 of a server's namespace, the env loader of both), run by path
INIT = str(Path(__file__).parent / "spawner" / "serverinit.py")
#: all the environment bubblewrap and setpriv get on the host: none of the user's variables
#: (the init reads those from a memfd, inside, as the user's account: ``--env-fd``)
HOST_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
#: files of the machine whose link targets stay readable even below a hidden folder
MACHINE_FILES = ("/etc/resolv.conf",)


@dataclass(frozen=True)
class HostView:
    """What of this machine a sandbox sees besides the read-only root.

    hidden: host folders replaced by empty ones; exposed: folders shown read-only again (the
    platform's Python) when they sit below a hidden one; masked: folders covered by an empty
    one after that (the base interpreter's site-packages); files: ``(source, destination)``
    read-only file binds (the sandbox's ``pyvenv.cfg``)."""

    hidden: tuple[str, ...] = ()
    exposed: tuple[str, ...] = ()
    masked: tuple[str, ...] = ()
    files: tuple[tuple[str, str], ...] = ()


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def expose_ops(paths: Iterable[str], hidden: Sequence[str]) -> list[str]:
    """bubblewrap operations that show ``paths`` read-only inside hidden folders: each parent
    between the hidden folder and the path made with mode 0755 (bwrap would make it 0700),
    then the read-only bind. Paths outside hidden folders are visible already; a path below
    another exposed one comes with it."""
    ops: list[str] = []
    made: set[str] = set()
    done: list[str] = []
    for path in sorted({os.path.normpath(p) for p in paths}, key=lambda p: (p.count("/"), p)):
        top = next((h for h in hidden if _under(path, h)), None)
        if top is None or any(_under(path, d) for d in done):
            continue
        for parent in reversed(PurePosixPath(path).parents):
            p = str(parent)
            if _under(p, top) and p != top and p not in made:
                made.add(p)
                ops += ["--perms", "0755", "--dir", p]
        ops += ["--ro-bind", path, path]
        done.append(path)
    return ops


def host_args(host: HostView) -> list[str]:
    """The machine's part of the view (without the data root and /kqi)."""
    args = ["--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"]
    for d in PRIVATE_TMP:
        args += ["--perms", "1777", "--tmpfs", d]
    for d in host.hidden:
        args += ["--perms", "0755", "--tmpfs", d]
    args += expose_ops(host.exposed, [*PRIVATE_TMP, *host.hidden])
    for d in host.masked:
        args += ["--tmpfs", d]
    for src, dest in host.files:
        args += ["--ro-bind", src, dest]
    return args


def bwrap_argv(
    plan: LayoutPlan,
    binds: Sequence[tuple[bool, Path, str]],
    data_root: Path,
    host: HostView,
    *,
    keep: Sequence[Path] = (),
    keep_read_only: Sequence[Path] = (),
    kqi_root: str = "/kqi",
    bwrap: str = "bwrap",
    as_pid_1: bool = False,
    die_with_parent: bool = False,
    info_fd: int | None = None,
    chdir: str | None = None,
    user: Sequence[str] = (),
) -> list[str]:
    """The whole bubblewrap command prefix, ending in ``--``. ``binds``: the plan's
    ``(read_only, source, target)``; ``keep``: folders of the hidden data root shown again,
    writable (the user's home), ``keep_read_only`` the same read-only. Own pid, IPC and UTS
    namespaces and a new session (no TIOCSTI into the hub's terminal); ``as_pid_1``: the
    command is the namespace's init, its exit ends everything in it; ``info_fd`` gets
    bubblewrap's JSON with the host pid of that init. No capabilities: nothing inside can
    undo the mounts. ``user``: the command that becomes the user's account (accounts.setpriv_argv)
    runs first and drops them all; without it bubblewrap drops them and the command stays
    the hub's account."""
    args = [bwrap, *host_args(host), "--perms", "0755", "--tmpfs", str(data_root)]
    made: set[str] = set()
    for path, how in [*((p, "--bind") for p in keep), *((p, "--ro-bind") for p in keep_read_only)]:
        # the folders between the data root and a kept one: bubblewrap would make them 0700
        # root, which the user's account could not pass
        for parent in reversed(PurePosixPath(path).parents):
            p = str(parent)
            if _under(p, str(data_root)) and p != str(data_root) and p not in made:
                made.add(p)
                args += ["--perms", "0755", "--dir", p]
        args += [how, str(path), str(path)]
    args += ["--perms", "0755", "--tmpfs", kqi_root]
    for d in parent_dirs(plan):
        args += ["--perms", "0755", "--dir", f"{kqi_root}/{d}"]
    for read_only, src, target in binds:
        args += ["--ro-bind" if read_only else "--bind", str(src), f"{kqi_root}/{target}"]
    args += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--new-session"]
    if as_pid_1:
        args.append("--as-pid-1")
    if die_with_parent:
        args.append("--die-with-parent")
    if info_fd is not None:
        args += ["--info-fd", str(info_fd)]
    if chdir:
        args += ["--chdir", chdir]
    if user:
        return [*args, "--", *user]
    return [*args, "--cap-drop", "ALL", "--"]


def sandbox_pyvenv(text: str) -> str:
    """A venv's ``pyvenv.cfg`` with the system site on: that also turns the user site on
    (a venv without it refuses ``pip install --user``); the system site itself is masked."""
    line = "include-system-site-packages = true"
    new, n = re.subn(r"(?im)^\s*include-system-site-packages\s*=.*$", line, text)
    return new if n else f"{text.rstrip()}\n{line}\n"


# -- I/O: this machine and this interpreter -------------------------------------------------------
def platform_paths() -> list[str]:
    """Folders the platform's Python needs inside a sandbox: the venv, the base interpreter,
    the folder the platform's packages are imported from (an editable install) and the
    JupyterLab extensions' link targets."""
    here = Path(__file__).resolve().parent.parent  # holds hub_ext, server_ext, culler
    paths = {sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    paths.add(str(here))
    labext = Path(sys.prefix, "share", "jupyter", "labextensions")
    if labext.is_dir():
        paths.update(str(p.resolve()) for p in labext.iterdir())
    return sorted(p for p in paths if os.path.isdir(p))


def base_site_dirs() -> list[str]:
    """The base interpreter's site-packages when this is a venv (covered in the sandbox)."""
    if sys.prefix == sys.base_prefix:
        return []
    paths = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_prefix})
    return sorted({p for p in (paths["purelib"], paths["platlib"]) if os.path.isdir(p)})


def host_view(hidden: Sequence[str], run_dir: Path) -> HostView:
    """The view for this machine: the hidden folders that exist, the platform's Python, and
    the sandbox's ``pyvenv.cfg`` written (atomically) into ``run_dir`` when this is a venv."""
    bad = [h for h in hidden if not os.path.isabs(h) or os.path.normpath(h) == "/"]
    if bad:
        raise ValueError(f"hidden paths must be absolute folders other than /: {bad}")
    existing = tuple(h for h in (os.path.normpath(p) for p in hidden) if os.path.isdir(h))
    files: tuple[tuple[str, str], ...] = ()
    cfg = Path(sys.prefix, "pyvenv.cfg")
    if sys.prefix != sys.base_prefix and cfg.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        copy = run_dir / "pyvenv-sandbox.cfg"
        tmp = copy.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(sandbox_pyvenv(cfg.read_text()))
        os.chmod(tmp, 0o644)
        os.replace(tmp, copy)
        files = ((str(copy), str(cfg)),)
    # a resolv.conf that links below /run (systemd-resolved, NetworkManager): names resolve
    links = [os.path.realpath(f) for f in MACHINE_FILES if os.path.islink(f)]
    exposed = (*platform_paths(), *(f for f in links if os.path.isfile(f)))
    return HostView(existing, exposed, tuple(base_site_dirs()), files)


def read_init_pid(fd: int, timeout: float = 30) -> tuple[int, float]:
    """Host pid and start time of the sandbox's init, from bubblewrap's ``--info-fd`` JSON
    (closes ``fd``); (0, 0) if bubblewrap ended without saying."""
    data, deadline = b"", time.monotonic() + timeout
    try:
        while b"}" not in data and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(fd, 4096) if ready else b""
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    try:
        pid = int(json.loads(data)["child-pid"])
        return pid, psutil.Process(pid).create_time()
    except (ValueError, KeyError, TypeError, psutil.Error):
        return 0, 0.0
