"""Materialise a layout plan on this machine: a bubblewrap sandbox or a per-server folder of links.

``bwrap_args`` and ``resolve`` are pure (the sandbox itself: hub_ext/sandbox.py);
``build_link_tree`` does the file-system work of the fallback (isolation "none"). Both serve
notebooks and local jobs alike.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from .layout import Binding, LayoutPlan, parent_dirs
from .sandbox import HostView, bwrap_argv


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
    host: HostView | None = None,
    **flags: Any,
) -> list[str]:
    """bubblewrap command prefix for ``plan`` (see sandbox.bwrap_argv; ``flags`` go there):
    the machine read-only as ``host`` shows it, the data root hidden except ``keep`` (e.g.
    the user's home), the plan at ``kqi_root``; ``extra``: more bubblewrap options."""
    binds = [(b.read_only, src, b.target) for b, src in resolve(plan, data_root, scratch)]
    args = bwrap_argv(
        plan,
        binds,
        data_root,
        host or HostView(),
        keep=keep,
        kqi_root=kqi_root,
        bwrap=bwrap,
        **flags,
    )
    end = args.index("--")
    args[end:end] = extra or []
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
