"""kqi server extension: loaded in every user server (enabled by a jupyter_server_config.d file)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__version__ = "0.1.0"


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "server_ext"}]


def layout_state(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The answer of api/kqi/layout, from the environment the spawner set."""
    root = os.environ.get("KQI_ROOT", "")
    layout = json.loads(os.environ.get("KQI_LAYOUT") or "{}")
    bindings = []
    for b in layout.get("bindings", []):
        path = os.path.join(root, b["target"])
        bindings.append({**b, "path": path, "present": os.path.isdir(path)})
    return {
        "kqi_root": root,
        "isolation": os.environ.get("KQI_ISOLATION", "none"),
        "read_only_enforced": os.environ.get("KQI_ISOLATION") in ("bubblewrap", "kubernetes"),
        # an account (or pod) of the user's own: set by the spawner ("" where users are not
        # isolated, with the platform's reason in isolation_note)
        "users_isolated": os.environ.get("KQI_ISOLATION") == "kubernetes"
        or os.environ.get("KQI_USERS_ISOLATED") == "1",
        "isolation_note": os.environ.get("KQI_ISOLATION_NOTE", ""),
        "datasets": [d for d in os.environ.get("KQI_DATASETS", "").split(",") if d],
        "parent": os.environ.get("KQI_PARENT_ID", ""),
        "inference": os.environ.get("KQI_INFERENCE_ID", ""),
        "bindings": bindings,
        "home_links": results,
    }


def _load_jupyter_server_extension(serverapp: Any) -> None:
    # imported here, not at the top: ``kqi`` and ``kqi-papermill`` (commands of this package)
    # must not pay for jupyter_server's import on every call
    from . import activity
    from .handlers import LayoutHandler
    from .homelinks import apply_home_links, link_roots
    from .jobs_handlers import job_routes

    results: list[dict[str, Any]] = []
    if os.environ.get("KQI_ROOT"):
        layout = json.loads(os.environ.get("KQI_LAYOUT") or "{}")
        home = Path(os.environ.get("HOME") or serverapp.root_dir)
        try:
            results = [
                r.to_dict()
                for r in apply_home_links(
                    home, os.environ["KQI_ROOT"], layout.get("home_links", []), link_roots()
                )
            ]
        except OSError as e:
            serverapp.log.error("kqi: could not make home links: %s", e)
        for r in results:
            if r["status"] == "refused":
                serverapp.log.warning("kqi: no link ~/%s: %s", r["name"], r["reason"])
    base = serverapp.web_app.settings["base_url"]
    serverapp.web_app.settings["kqi_layout_state"] = lambda: layout_state(results)
    serverapp.web_app.add_handlers(".*$", [(base.rstrip("/") + "/api/kqi/layout", LayoutHandler)])
    serverapp.web_app.add_handlers(".*$", activity.setup(serverapp, base))
    serverapp.web_app.add_handlers(".*$", job_routes(base))
    serverapp.log.info("kqi server extension loaded (KQI_ROOT=%s)", os.environ.get("KQI_ROOT", "-"))
