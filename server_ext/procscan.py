"""Finding a server's watched processes in one pass over ``/proc`` (Linux).

The activity route runs this on every culler probe and every ``kqi status``, with possibly
thousands of processes present. psutil (the fallback elsewhere) reads each process several
times over (``process_iter``, ``children``, ``parents``, ``status``), so on Linux we read each
``/proc/<pid>/stat`` once (parent, name, state), build the tree from the parent map, and read
``cmdline`` only for this server's descendants and ``environ`` only for other processes, when
the server has a marker. The answers are psutil's: same name, command line and environment
parsing, same rule (culler.rules.watch_match).

The tree's top is the server's init process (``KQI_SERVER_INIT_PID``, a subreaper started by
the local spawner) when there is one: what leaves the server's tree (nohup, setsid, a
daemonising ``mpirun``, even ``env -i``) is adopted by it, so it stays below that top. A parent
that ends during the pass would cut its children off the tree for that pass; they are read
again (by then the kernel has moved them to the subreaper), so none is missed.

In a sandbox the init is pid 1 of the server's own pid namespace (``KQI_PID_NAMESPACE=1``):
then the whole namespace is the server's (nothing can leave it), and no marker is read.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence

import psutil

from culler.rules import WatchedProcess, watch_match

MARKER = "KQI_SERVER_ID"
#: the pid of the server's init process (hub_ext/spawner/serverinit.py), set by it
INIT_PID = "KQI_SERVER_INIT_PID"
#: "1" when that init is pid 1 of the server's own pid namespace (set by it)
PID_NAMESPACE = "KQI_PID_NAMESPACE"
PROC = "/proc"

Matcher = Callable[[str, Sequence[str], Iterable[str]], "str | None"]


# -- pure parsing (psutil's rules) ---------------------------------------------------------------
def parse_stat(data: bytes) -> tuple[bytes, bytes, int]:
    """(name, state, ppid) of a ``/proc/<pid>/stat`` line. The name sits between the first
    ``(`` and the last ``)``: it may hold spaces and parentheses itself."""
    rpar = data.rfind(b")")
    fields = data[rpar + 2 :].split(None, 2)
    return data[data.find(b"(") + 1 : rpar], fields[0], int(fields[1])


def parse_cmdline(data: bytes) -> list[str]:
    """The arguments of a ``/proc/<pid>/cmdline``. NUL-separated, except when a process
    rewrote its title with spaces (setproctitle): then split on spaces, as psutil does."""
    text = os.fsdecode(data)
    if not text:
        return []
    sep = "\x00" if text.endswith("\x00") else " "
    if text.endswith(sep):
        text = text[:-1]
    args = text.split(sep)
    if sep == "\x00" and len(args) == 1 and " " in text:
        args = text.split(" ")
    return args


def environ_value(data: bytes, key: bytes) -> bytes | None:
    """The last value of ``key`` in a ``/proc/<pid>/environ`` block (a NUL at the start or
    two in a row end the block, as in psutil)."""
    value, prefix = None, key + b"="
    for entry in data.split(b"\x00"):
        if not entry:
            break
        if entry.startswith(prefix):
            value = entry[len(prefix) :]
    return value


def full_name(name: str, cmdline: Sequence[str]) -> str:
    """The kernel cuts names at 15 characters; the program's base name when it starts with
    the cut name (psutil's ``name()``: ``gnome-keyring-d`` -> ``gnome-keyring-daemon``)."""
    if len(name) >= 15 and cmdline:
        extended = os.path.basename(cmdline[0])
        if extended.startswith(name):
            return extended
    return name


def could_match(name: str, cmdline: Sequence[str], watch: Sequence[str]) -> bool:
    """False only where watch_match surely finds nothing: every name it tries contains its
    entry and is a part of the name or of one argument. Saves the regular expressions for the
    many processes that are no match."""
    text = "\x00".join((name, *cmdline))
    return any(entry in text for entry in watch)


def descendants(ppids: Mapping[int, int], root: int) -> set[int]:
    """Every process below ``root`` in the parent map."""
    children: dict[int, list[int]] = {}
    for pid, ppid in ppids.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        if pid not in found and pid != root:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def ancestors(ppids: Mapping[int, int], pid: int) -> set[int]:
    """The parents of ``pid`` up to the top (the server's wrappers: never watched)."""
    found: set[int] = set()
    while (pid := ppids.get(pid, 0)) > 0 and pid not in found:
        found.add(pid)
    return found


# -- reading /proc -------------------------------------------------------------------------------
def _read(path: str) -> bytes | None:
    """A whole /proc file; None if the process is gone or not ours to read."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 131072):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_stat(pid: str) -> bytes | None:
    """One read: a stat line is far shorter than 4 KiB."""
    try:
        fd = os.open(f"{PROC}/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)


def _snapshot() -> tuple[dict[int, int], dict[int, tuple[bytes, bytes]]]:
    """pid -> ppid and pid -> (name, state) of every process, one stat read each; where a
    parent ended during the pass, its children are read again (they have been re-parented
    by then), so no chain is cut by a process that ended meanwhile."""
    ppids: dict[int, int] = {}
    stats: dict[int, tuple[bytes, bytes]] = {}

    def read(pid: int) -> None:
        data = _read_stat(str(pid))
        if not data:
            ppids.pop(pid, None)  # ended meanwhile
            stats.pop(pid, None)
            return
        name, state, ppid = parse_stat(data)
        ppids[pid] = ppid
        stats[pid] = (name, state)

    for entry in os.listdir(PROC):
        if entry.isdigit():
            read(int(entry))
    for _ in range(8):  # a chain of parents ending at once needs a round each
        cut = [pid for pid, ppid in ppids.items() if ppid > 0 and ppid not in ppids]
        before = {pid: ppids[pid] for pid in cut}
        for pid in cut:
            read(pid)
        if all(ppids.get(pid) == ppid for pid, ppid in before.items()):
            break
    return ppids, stats


def scan_proc(
    server_pid: int,
    excluded: Iterable[int],
    marker: str,
    watch: Sequence[str],
    root: int = 0,
    match: Matcher = watch_match,
    namespace: bool = False,
) -> list[WatchedProcess]:
    """The watched processes of the server ``server_pid`` from /proc, by pid: below ``root``
    (its init process, when that is an ancestor of the server) or else below the server.
    ``namespace``: this /proc is the server's own pid namespace, ``root`` its pid 1 (the
    machine's init is never a top otherwise)."""
    ppids, stats = _snapshot()
    above = ancestors(ppids, server_pid)
    top = root if _top_ok(root, above, namespace) else server_pid
    mine = descendants(ppids, top)
    if namespace and top == 1:
        marker = ""  # nothing of the server is outside the namespace
    skip = {server_pid, *excluded, *above}
    marker_b = os.fsencode(marker) if marker else b""
    key = os.fsencode(MARKER)
    watch = tuple(watch)
    found = []
    for pid in sorted(stats):
        name_b, state = stats[pid]
        if pid in skip or state == b"Z":  # a zombie has ended
            continue
        if pid not in mine:  # left the tree: ours if it carries our marker
            if not marker_b:
                continue
            env = _read(f"{PROC}/{pid}/environ")  # another account's: unreadable, not ours
            if not env or marker_b not in env or environ_value(env, key) != marker_b:
                continue
        data = _read(f"{PROC}/{pid}/cmdline")
        if data is None:
            continue
        cmdline = parse_cmdline(data)
        name = full_name(os.fsdecode(name_b), cmdline)
        if could_match(name, cmdline, watch) and match(name, cmdline, watch) is not None:
            found.append(WatchedProcess(pid, name, tuple(cmdline)))
    return found


# -- elsewhere: psutil ---------------------------------------------------------------------------
def scan_psutil(
    server_pid: int,
    excluded: Iterable[int],
    marker: str,
    watch: Sequence[str],
    root: int = 0,
    match: Matcher = watch_match,
    namespace: bool = False,
) -> list[WatchedProcess]:
    """The same answer through psutil, where there is no /proc."""
    me = psutil.Process(server_pid)
    above = {p.pid for p in me.parents()}
    skip = {server_pid, *excluded, *above}
    if namespace and root == 1 and 1 in above:
        marker = ""
    try:
        top = psutil.Process(root) if _top_ok(root, above, namespace) else me
        mine = {p.pid for p in top.children(recursive=True)}
    except psutil.Error:
        mine = set()
    found = []
    for p in psutil.process_iter(["name", "cmdline"]):
        if p.pid in skip:
            continue
        name, cmdline = p.info["name"] or "", p.info["cmdline"] or []
        if match(name, cmdline, watch) is None or not _alive(p):
            continue
        if p.pid not in mine:
            try:
                if not marker or p.environ().get(MARKER) != marker:
                    continue
            except psutil.Error:
                continue
        found.append(WatchedProcess(p.pid, name, tuple(cmdline)))
    return found


def _top_ok(root: int, above: set[int], namespace: bool) -> bool:
    """The init may be the scan's top when it is above the server, and pid 1 only as the init
    of the server's own pid namespace."""
    return root in above and (root > 1 or (root == 1 and namespace))


def in_namespace(root: int) -> bool:
    """Whether the server's init says it is pid 1 of the server's own pid namespace."""
    return root == 1 and os.environ.get(PID_NAMESPACE) == "1" and os.getpid() != 1


def _alive(p: psutil.Process) -> bool:
    """Running (a zombie has ended: only its exit status is left for its parent)."""
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def watched(
    server_pid: int, excluded: Iterable[int], marker: str, watch: Sequence[str], root: int = 0
) -> list[WatchedProcess]:
    """/proc where there is one, psutil elsewhere."""
    ns = in_namespace(root)
    if sys.platform.startswith("linux") and os.path.isdir(f"{PROC}/{server_pid}"):
        return scan_proc(server_pid, excluded, marker, watch, root, namespace=ns)
    return scan_psutil(server_pid, excluded, marker, watch, root, namespace=ns)
