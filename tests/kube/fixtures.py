"""Shared pieces of the Kubernetes tests: option sets, profiles, a stand-in for the kqi
service's plan route (the real validation and layout plan, without HTTP), strict validation."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kubernetes_validate

from hub_ext.layout import JobRef, plan_notebook
from hub_ext.options import DEFAULT_PROFILES, Context, Profile, validate_options

#: the chart's minimum Kubernetes and the newest kubernetes-validate bundles
K8S_VERSIONS = ("1.32.0", kubernetes_validate.latest_version())

GPU_PROFILE = {
    "name": "gpu",
    "display_name": "GPU",
    "cpu": 8,
    "memory": "32G",
    "storage": "200G",
    "gpu": 2,
    "extra": {
        "cpu_guarantee": 4,
        "node_selector": {"kqi-hub/node-pool": "gpu"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
}
PROFILES = {p["name"]: Profile.from_config(p) for p in [*DEFAULT_PROFILES, GPU_PROFILE]}
DATASETS = {"mnist", "qm9", "oc20", "md17"}
JOBS = {
    3: JobRef(3, "alice", "training"),
    4: JobRef(4, "alice", "training"),
    9: JobRef(9, "bob", "inference"),
}

#: option sets the manifests are checked with
OPTION_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "datasets-parent-inference": {
        "datasets": ["mnist", "qm9", "oc20"],
        "parent": 3,
        "inference": 9,
    },
    "several-parents": {"datasets": ["md17"], "parent": [3, 4]},
    "gpu": {"profile": "gpu", "datasets": ["qm9"], "env": {"WANDB_MODE": "offline"}},
    "git-startup": {
        "git": {"url": "https://github.com/example/repo.git", "ref": "v1.0"},
        "startup_command": "pip install -e ~/git",
        "lifetime_hours": 4,
    },
}


def context() -> Context:
    return Context(PROFILES, DATASETS, DATASETS, JOBS)


def plan_reply(user: str, options: dict[str, Any]) -> dict[str, Any]:
    """What the kqi service's ``api/internal/plan`` answers (same functions it uses)."""
    valid = validate_options(options, context())
    plan = plan_notebook(
        user, valid.datasets, valid.parents, valid.inferences, valid.git is not None
    )
    return {
        "options": valid.to_dict(),
        "profile": PROFILES[valid.profile].to_dict(),
        "plan": plan.to_dict(),
    }


def validate_strict(manifest: dict[str, Any]) -> None:
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(manifest, version, strict=True)


def user(name: str = "alice") -> SimpleNamespace:
    return SimpleNamespace(name=name, id=7, url=f"/user/{name}/")


@contextlib.asynccontextmanager
async def kube_api(tmp_path: Path) -> AsyncIterator[tuple[Any, str]]:
    """kmock with the shims on a local port, and a kubeconfig pointing at it (kubespawner
    loads one before it applies its k8s_api_host)."""
    import kmock
    from kubernetes_asyncio.config import kube_config

    from .shims import KubeAPI, write_kubeconfig

    old = kube_config.KUBE_CONFIG_DEFAULT_LOCATION  # read from KUBECONFIG at import time
    async with KubeAPI() as api, kmock.Server(api):
        url = str(api.url).rstrip("/")
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(
            write_kubeconfig(tmp_path / "kubeconfig", url)
        )
        try:
            yield api, url
        finally:
            kube_config.KUBE_CONFIG_DEFAULT_LOCATION = old
            if "kubespawner" in sys.modules:  # close kubespawner's watches before the server
                from kubespawner import KubeSpawner

                await KubeSpawner._stop_all_reflectors()
