"""Datasets catalog: each folder under ``<data root>/datasets/`` is a dataset.

Optional metadata lives beside the folder in ``datasets/<name>.toml`` (not inside it, so it does
not show up under /kqi/input)::

    description = "MNIST digits, 70k images"
    groups = ["vision", "staff"]    # JupyterHub groups that may read it; absent = everyone
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import tomllib

from ..options import NAME_RE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    groups: tuple[str, ...] | None  # None: every user may read it
    size: int
    files: int
    error: str = ""  # unreadable metadata: nobody may bind it until an admin fixes it

    def readable_by(self, groups: Iterable[str], admin: bool = False) -> bool:
        if self.error:
            return False
        return admin or self.groups is None or bool(set(self.groups) & set(groups))

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "size": self.size,
            "files": self.files,
            "groups": list(self.groups) if self.groups is not None else None,
            **({"error": self.error} if self.error else {}),
        }


def _measure(path: Path) -> tuple[int, int]:
    size = files = 0
    for dirpath, _dirs, names in os.walk(path):
        for n in names:
            try:
                st = os.lstat(os.path.join(dirpath, n))
            except OSError:
                continue
            size += st.st_size
            files += 1
    return size, files


def _metadata(path: Path) -> tuple[str, tuple[str, ...] | None, str]:
    """(description, groups, error) from the sidecar file."""
    if not path.exists():
        return "", None, ""
    try:
        meta = tomllib.loads(path.read_text())
        groups = meta.get("groups")
        if groups is not None and not isinstance(groups, list):
            raise ValueError("'groups' must be a list of group names")
    except (OSError, ValueError) as e:  # TOMLDecodeError is a ValueError
        # A broken metadata file must not open a restricted dataset to everyone.
        log.error("dataset metadata %s unreadable (%s): dataset hidden until fixed", path, e)
        return "", (), f"{path.name}: {e}"
    if groups is not None:
        groups = tuple(str(g) for g in groups)
    return str(meta.get("description", "")), groups, ""


class Catalog:
    """Scans the datasets folder; sizes are cached for ``ttl`` seconds (walking is slow: a
    dataset of a million files takes seconds)."""

    def __init__(self, root: Path, ttl: float = 30.0):
        self.root = Path(root)
        self.ttl = ttl
        self._cache: dict[str, tuple[float, tuple[int, int]]] = {}

    def scan(self, measure: bool = True) -> dict[str, Dataset]:
        """Every valid dataset. ``measure=False``: names, descriptions and groups, with the
        sizes as last measured (0 if never): what a spawn or a job submission needs, without
        walking the files before each (listings and the form measure)."""
        out: dict[str, Dataset] = {}
        if not self.root.is_dir():
            return out
        now = time.monotonic()
        for entry in sorted(self.root.iterdir()):
            if not entry.is_dir() or entry.is_symlink():
                continue
            if not NAME_RE.fullmatch(entry.name) or ".." in entry.name:
                log.warning("skipping dataset folder %r: not a valid dataset name", entry.name)
                continue
            cached = self._cache.get(entry.name)
            if not measure:
                cached = cached or (now - self.ttl - 1, (0, 0))
            elif cached is None or now - cached[0] > self.ttl:
                cached = (now, _measure(entry))
                self._cache[entry.name] = cached
            description, groups, error = _metadata(self.root / f"{entry.name}.toml")
            size, files = cached[1]
            out[entry.name] = Dataset(entry.name, description, groups, size, files, error)
        return out
