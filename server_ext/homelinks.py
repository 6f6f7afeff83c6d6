"""Home links (~/input, ~/parent, ...) to the /kqi paths that are present.

A link is made, moved or removed only where the name is free or already a link of ours; a real
file or folder of the user's is never touched, and the result says why a link is missing.
Run in the user's server (local and Kubernetes alike): ``python -m server_ext.homelinks``.
"""

from __future__ import annotations

import json
import logging
import os
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


def is_ours(link: Path, name: str, kqi_root: str) -> bool:
    """A link of ours points at <some kqi root>/<name>: /kqi/input, or a per-server .../kqi/input."""
    target = os.readlink(link)
    return target == os.path.join(kqi_root, name) or (
        os.path.basename(target) == name and os.path.basename(os.path.dirname(target)) == "kqi"
    )


def apply_home_links(home: Path, kqi_root: str, wanted: list[str]) -> list[LinkResult]:
    results = []
    for name in HOME_LINK_NAMES:
        path = home / name
        target = os.path.join(kqi_root, name)
        want = name in wanted and os.path.exists(target)
        if path.is_symlink():
            if not is_ours(path, name, kqi_root):
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


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    layout = json.loads(os.environ.get("KQI_LAYOUT", "{}"))
    results = apply_home_links(
        Path(os.environ.get("HOME", "~")).expanduser(),
        os.environ.get("KQI_ROOT", "/kqi"),
        layout.get("home_links", []),
    )
    print(json.dumps([r.to_dict() for r in results], indent=1))


if __name__ == "__main__":
    main()
