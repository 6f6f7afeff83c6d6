"""Materialise a layout plan on this machine: bubblewrap binds or a per-server folder of links.

``bwrap_args`` and ``resolve`` are pure; ``build_link_tree`` does the file-system work of the
fallback. Both serve notebooks and local jobs alike.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .layout import Binding, LayoutPlan, parent_dirs


def resolve(plan: LayoutPlan, data_root: Path, scratch: Path) -> list[tuple[Binding, Path]]:
    """Each binding with its host source folder (scratch folders live under ``scratch``)."""
    return [
        (b, (data_root / b.source) if b.source is not None else (scratch / b.target))
        for b in plan.bindings
    ]


def bwrap_args(
    plan: LayoutPlan,
    data_root: Path,
    scratch: Path,
    keep: list[Path],
    kqi_root: str = "/kqi",
    bwrap: str = "bwrap",
    extra: list[str] | None = None,
) -> list[str]:
    """bubblewrap command prefix: the host as it is, the data root hidden except ``keep``
    (e.g. the user's home), and the plan mounted at ``kqi_root`` with read-only binds.
    All capabilities are dropped so the server cannot undo the mounts."""
    args = [bwrap, "--dev-bind", "/", "/", "--perms", "0755", "--tmpfs", str(data_root)]
    for path in keep:
        args += ["--bind", str(path), str(path)]
    args += ["--perms", "0755", "--tmpfs", kqi_root]
    for d in parent_dirs(plan):
        args += ["--perms", "0755", "--dir", f"{kqi_root}/{d}"]
    for b, src in resolve(plan, data_root, scratch):
        args += ["--ro-bind" if b.read_only else "--bind", str(src), f"{kqi_root}/{b.target}"]
    args += [*(extra or []), "--cap-drop", "ALL", "--"]
    return args


def missing_sources(plan: LayoutPlan, data_root: Path) -> list[Binding]:
    return [
        b for b in plan.bindings if b.source is not None and not (data_root / b.source).is_dir()
    ]


def build_link_tree(plan: LayoutPlan, data_root: Path, scratch: Path, root: Path) -> None:
    """Fallback without bubblewrap: ``root`` becomes a fresh folder of links to the sources.
    Old contents are removed first (links only; rmtree does not follow them)."""
    if root.is_symlink() or root.is_file():
        root.unlink()
    elif root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for d in parent_dirs(plan):
        (root / d).mkdir(parents=True, exist_ok=True)
    for b, src in resolve(plan, data_root, scratch):
        (root / b.target).symlink_to(src, target_is_directory=True)
