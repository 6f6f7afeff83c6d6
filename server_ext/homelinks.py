"""Home links (~/input, ~/parent, ...) to the /kqi paths that are present.

A link is made, moved or removed only where the name is free or already a link of ours; a real
file or folder of the user's is never touched, and the result says why a link is missing.
Run in the user's server (local and Kubernetes alike): ``python -m server_ext.homelinks``.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

HOME_LINK_NAMES = ("input", "parent", "inference", "git", "jobs")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinkResult:
    name: str
    status: str  # made | kept | moved | removed | refused | absent
    target: str
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def is_ours(link: Path, name: str, roots: Sequence[str]) -> bool:
    """A link of ours points at <root>/<name> for a kqi root: this one, /kqi, or one matching
    a pattern the spawner named (e.g. this user's per-server folders)."""
    target = os.readlink(link)
    return os.path.basename(target) == name and any(
        fnmatch.fnmatchcase(os.path.dirname(target), r) for r in roots
    )


def apply_home_links(
    home: Path, kqi_root: str, wanted: Sequence[str], link_roots: Sequence[str] = ()
) -> list[LinkResult]:
    """Make, move or remove ~/<name> links; ``link_roots`` are glob patterns of earlier kqi
    roots whose links count as ours."""
    roots = [glob.escape(kqi_root), "/kqi", *link_roots]
    results = []
    for name in HOME_LINK_NAMES:
        path = home / name
        target = os.path.join(kqi_root, name)
        want = name in wanted and os.path.exists(target)
        if path.is_symlink():
            if not is_ours(path, name, roots):
                reason = f"~/{name} is your own link to {os.readlink(path)}; left as it is"
                results.append(LinkResult(name, "refused" if want else "absent", target, reason))
            elif want and os.readlink(path) == target:
                results.append(LinkResult(name, "kept", target))
            elif want:
                path.unlink()
                path.symlink_to(target)
                results.append(LinkResult(name, "moved", target))
            else:
                path.unlink()
                results.append(LinkResult(name, "removed", target, f"nothing at {target} now"))
        elif path.exists():
            kind = "folder" if path.is_dir() else "file"
            reason = (
                f"~/{name} is your own {kind}; it is never replaced (rename it to get the link)"
            )
            if want:
                results.append(LinkResult(name, "refused", target, reason))
        elif want:
            path.symlink_to(target)
            results.append(LinkResult(name, "made", target))
    for r in results:
        if r.status == "refused":
            log.warning("kqi: no link ~/%s -> %s: %s", r.name, r.target, r.reason)
    return results


def link_roots() -> list[str]:
    """Patterns of earlier kqi roots, from KQI_LINK_ROOTS (set by the spawner)."""
    return [r for r in os.environ.get("KQI_LINK_ROOTS", "").split(os.pathsep) if r]


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    layout = json.loads(os.environ.get("KQI_LAYOUT", "{}"))
    results = apply_home_links(
        Path(os.environ.get("HOME", "~")).expanduser(),
        os.environ.get("KQI_ROOT", "/kqi"),
        layout.get("home_links", []),
        link_roots(),
    )
    print(json.dumps([r.to_dict() for r in results], indent=1))


if __name__ == "__main__":
    main()
