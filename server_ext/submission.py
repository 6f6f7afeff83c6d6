"""Turn a file of the user's server into a job submission: a spec and a tar.gz of its folder.

Shared by ``POST api/kqi/submit`` and ``kqi submit`` so both make exactly the same job. The
service stays the one authority on the spec's values; this only decides what code is sent and
which command runs it.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import stat
import tarfile
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import Any

from hub_ext.jobspec import JOB_KEYS

MODES = ("script", "notebook-script", "papermill")
#: Folders never sent: editor and tool state, not code.
SKIP_DIRS = frozenset({".ipynb_checkpoints", "__pycache__", ".git"})
#: Job spec fields passed through to the service unchanged: the service's own list, less the
#: command (built here from the mode), so the two cannot drift apart.
SPEC_FIELDS = tuple(k for k in JOB_KEYS if k != "command")
DEFAULT_MAX_BYTES = 200 * 2**20
#: The job's output folder; KQI_ROOT differs from /kqi only where /kqi cannot be mounted.
OUTPUT_DIR = '"${KQI_ROOT:-/kqi}"/output/'
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class SubmissionError(ValueError):
    """The file cannot become a job; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def max_bytes_from_env() -> int:
    """The code size cap: ``KQI_MAX_CODE_BYTES`` or 200 MiB (the service's default)."""
    try:
        return int(os.environ.get("KQI_MAX_CODE_BYTES") or DEFAULT_MAX_BYTES)
    except ValueError:
        return DEFAULT_MAX_BYTES


def resolve_in_root(root_dir: str | Path, path: str) -> Path:
    """The file ``path`` names under ``root_dir``; refused if it leaves the root.

    The check is on the path as written (like jupyter-server's contents API), so links the
    platform puts in home (``~/git``, ``~/jobs``) can be used."""
    if not path or path.startswith("/") or "\\" in path or "\0" in path:
        raise SubmissionError(f"path must be relative to the server's root folder: {path!r}")
    parts = PurePosixPath(path).parts
    if ".." in parts:
        raise SubmissionError(f"path leaves the server's root folder: {path!r}")
    full = Path(os.path.abspath(root_dir)).joinpath(*parts)
    if not full.is_file():
        raise SubmissionError(f"no such file: {path}", status=404)
    return full


def glob_parts(pattern: str) -> list[str]:
    """A relative glob's folder segments; absolute ones and ``..`` are refused."""
    pattern = pattern.strip()
    if not pattern or pattern.startswith("/") or ".." in PurePosixPath(pattern).parts:
        raise SubmissionError(f"include pattern must be relative to the file's folder: {pattern!r}")
    return [s for s in pattern.split("/") if s not in ("", ".")]


def glob_match(pattern: list[str], parts: list[str]) -> bool:
    """Glob match segment by segment: ``*`` and ``?`` stay in one folder, ``**`` spans any."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(glob_match(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], pattern[0]) and glob_match(pattern[1:], parts[1:])


@dataclass
class _Entry:
    rel: str  # posix path inside the archive
    path: Path  # where it is now


def _walk(folder: Path) -> list[_Entry]:
    """Every regular file under ``folder``, skipping tool folders and links to folders (the
    /kqi links in home: the job has its own /kqi)."""
    found: list[_Entry] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            p = here / name
            try:
                if not stat.S_ISREG(p.stat().st_mode):
                    continue  # broken link, fifo, socket, device
            except OSError:
                continue
            found.append(_Entry(p.relative_to(folder).as_posix(), p))
    return found


def select_files(folder: Path, include: list[str] | None) -> list[_Entry]:
    """The files the archive holds: all of ``folder`` or those ``include`` globs name (a glob
    naming a folder takes all of it). A glob that names nothing is refused: likely a typo."""
    entries = _walk(folder)
    if not include:
        return entries
    chosen: dict[str, _Entry] = {}
    for pattern in include:
        pat = glob_parts(pattern)
        hits = []
        for e in entries:
            parts = e.rel.split("/")
            # the file itself, or a folder it is in
            if any(glob_match(pat, parts[:n]) for n in range(1, len(parts) + 1)):
                hits.append(e)
        if not hits:
            raise SubmissionError(f"include pattern {pattern!r} matches no file in {folder}")
        chosen.update((e.rel, e) for e in hits)
    return [chosen[k] for k in sorted(chosen)]


def read_notebook(path: Path) -> Any:
    """The notebook, validated; a malformed one is refused with what is wrong."""
    import nbformat

    try:
        nb = nbformat.read(str(path), as_version=4)
        nbformat.validate(nb)
    except Exception as e:  # NotJSONError, ValidationError, KeyError on missing fields, ...
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SubmissionError(f"{path.name} is not a valid notebook: {msg[:300]}") from e
    return nb


def notebook_to_script(nb: Any) -> str:
    """Python source of the notebook; magics become ``get_ipython()`` calls, so run it with
    ipython."""
    from nbconvert import PythonExporter

    source, _ = PythonExporter().from_notebook_node(nb)
    return source


def _param_args(parameters: dict[str, Any]) -> list[str]:
    """papermill arguments that give each parameter exactly its JSON type: ``-r`` for text (no
    type guessing), ``-p`` for numbers, booleans and null, ``-y`` for lists and objects."""
    args: list[str] = []
    for name, value in parameters.items():
        if not isinstance(name, str) or not _IDENTIFIER.match(name):
            raise SubmissionError(f"parameter name is not a Python identifier: {name!r}")
        if isinstance(value, str):
            args += ["-r", name, value]
        elif value is None or isinstance(value, (bool, int, float)):
            args += ["-p", name, repr(value)]
        elif isinstance(value, (list, dict)):
            args += ["-y", json.dumps({name: value})]
        else:
            raise SubmissionError(f"parameter {name}: unsupported value {value!r}")
    return args


def default_command(
    mode: str, file_name: str, parameters: dict[str, Any] | None, nb: Any = None
) -> str:
    """The shell command a mode runs in /kqi/code, with every name and value quoted."""
    q = shlex.quote
    if mode == "script":
        return f"python {q(file_name)}"
    if mode == "notebook-script":
        return f"ipython --colors=NoColor {q(script_name(file_name))}"
    args = [q(file_name), OUTPUT_DIR + q(file_name)]
    meta = (nb or {}).get("metadata") or {}
    # papermill needs a kernel and a language; a notebook made outside Jupyter may lack them
    if not meta.get("kernelspec", {}).get("name"):
        args += ["-k", "python3"]
    if not (
        meta.get("kernelspec", {}).get("language") or meta.get("language_info", {}).get("name")
    ):
        args += ["-l", "python"]
    args += [q(a) for a in _param_args(parameters or {})]
    return "kqi-papermill " + " ".join(args)


def script_name(notebook_name: str) -> str:
    return notebook_name[: -len(".ipynb")] + ".py"


def _mode_for(file: Path, mode: str | None) -> str:
    if mode is None:
        mode = "notebook-script" if file.suffix == ".ipynb" else "script"
    if mode not in MODES:
        raise SubmissionError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    want = ".py" if mode == "script" else ".ipynb"
    if file.suffix != want:
        raise SubmissionError(f"mode {mode} runs a {want} file, not {file.name}")
    return mode


def make_archive(entries: list[_Entry], extra: dict[str, bytes], max_bytes: int) -> bytes:
    """tar.gz of the files (and generated ones) at the archive root, regular files only."""
    total = sum(e.path.stat().st_size for e in entries) + sum(len(b) for b in extra.values())
    if total > max_bytes:
        raise SubmissionError(
            f"the code to send is {total / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB"
            " limit; choose the files with include (e.g. --include '*.py')",
            status=413,
        )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for e in entries:
            if e.rel in extra:
                continue
            st = e.path.stat()
            info = tarfile.TarInfo(e.rel)
            info.size, info.mtime = st.st_size, int(st.st_mtime)
            info.mode = 0o755 if st.st_mode & 0o111 else 0o644
            with open(e.path, "rb") as f:
                tar.addfile(info, f)
        for rel, data in extra.items():
            info = tarfile.TarInfo(rel)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    if len(data) > max_bytes:
        raise SubmissionError("the code archive is over the size limit", status=413)
    return data


def build_submission(
    root_dir: str | Path,
    path: str,
    mode: str | None = None,
    *,
    command: str | None = None,
    include: list[str] | None = None,
    parameters: dict[str, Any] | None = None,
    spec: dict[str, Any] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[dict[str, Any], bytes]:
    """(job spec, tar.gz of the file's folder) for the file ``path`` under ``root_dir``.

    ``mode`` defaults from the file's suffix (.py: script, .ipynb: notebook-script). The archive
    root is the file's folder, so the command runs in /kqi/code with the file at top level."""
    file = resolve_in_root(root_dir, path)
    mode = _mode_for(file, mode)
    if parameters and mode != "papermill":
        raise SubmissionError("parameters are for mode papermill")
    if parameters is not None and not isinstance(parameters, dict):
        raise SubmissionError("parameters must be an object of name: value")
    if include is not None and (
        not isinstance(include, list) or not all(isinstance(g, str) for g in include)
    ):
        raise SubmissionError("include must be a list of glob patterns")
    if command is not None and (not isinstance(command, str) or not command.strip()):
        raise SubmissionError("command must be a non-empty shell command")

    spec = {k: v for k, v in (spec or {}).items() if v is not None}
    unknown = sorted(set(spec) - set(SPEC_FIELDS))
    if unknown:
        raise SubmissionError(f"unknown job field(s): {', '.join(unknown)}")

    nb = read_notebook(file) if mode != "script" else None
    entries = select_files(file.parent, include)
    if file.name not in {e.rel for e in entries}:
        entries.append(_Entry(file.name, file))  # the file itself always goes
    extra: dict[str, bytes] = {}
    if mode == "notebook-script":
        name = script_name(file.name)
        if name in {e.rel for e in entries}:
            raise SubmissionError(
                f"{name} is both a file in {file.parent.name or 'the folder'} and the script "
                f"made from {file.name}; rename one or leave it out with include"
            )
        extra[name] = notebook_to_script(nb).encode()

    out: dict[str, Any] = {"name": file.name, **spec}
    out["command"] = command or default_command(mode, file.name, parameters, nb)
    return out, make_archive(entries, extra, max_bytes)
