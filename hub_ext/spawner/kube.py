"""KqiKubeSpawner: user servers as Kubernetes pods (jupyterhub-kubespawner 7.x), with /kqi.

The form, the options and their validation are KqiSpawnerMixin's (shared with the local
spawner). At each start the layout plan becomes subPath mounts of the shared ``kqi-data`` PVC
and an init container (git clone, home links); they are built into the pod manifest of that
start (:func:`hub_ext.kube.objects.patch_notebook_pod`), never into the spawner's traits, so a
spawner object reused across restarts does not pile up volumes. The profile sets the CPU and
memory limits and guarantees, GPUs, node selector, tolerations and the home PVC's size. The
pod never gets a service account token.
"""

from __future__ import annotations

import datetime
import os
import uuid
from pathlib import Path
from typing import Any

from kubernetes_asyncio.client import V1ObjectMeta, V1Pod
from kubespawner import KubeSpawner
from kubespawner.utils import get_k8s_model
from tornado import web
from traitlets import Unicode, default

from culler.app import server_rules_json

from ..kube.objects import KubeNames, bytes_quantity, cpu_quantity, patch_notebook_pod
from ..layout import user_dir
from ..materialize import missing_sources
from ..options import Profile, parse_bytes
from .common import KqiSpawnerMixin
from .local import STARTUP_SCRIPT


def to_json(obj: Any) -> Any:
    """A kubernetes client model (or plain data) as the API's JSON (camelCase keys)."""
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, (list, tuple)):
        return [to_json(o) for o in obj]
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    if isinstance(obj, (datetime.date, datetime.datetime)):
        return obj.isoformat()
    return {
        obj.attribute_map[a]: to_json(getattr(obj, a))
        for a in obj.openapi_types
        if getattr(obj, a) is not None
    }


class KqiKubeSpawner(KqiSpawnerMixin, KubeSpawner):
    data_claim = Unicode(
        "kqi-data",
        help="Name of the ReadWriteMany PVC holding the data root (datasets/, users/).",
    ).tag(config=True)
    kqi_root = Unicode("/kqi", help="Where the layout is mounted in user pods (KQI_ROOT).").tag(
        config=True
    )
    data_root = Unicode(
        "",
        help="""Where the hub pod mounts the kqi-data PVC. When set, the spawner creates the
        user's jobs folder before the pod starts and refuses a start whose sources are missing
        (as the local spawner does); empty: leave both to the kubelet.""",
    ).tag(config=True)
    gpu_resource = Unicode(
        "nvidia.com/gpu",
        help="Extended resource name for a profile's GPUs (a profile's extra.gpu_resource wins).",
    ).tag(config=True)
    user_service_url = Unicode(
        "",
        help="""URL of the kqi service as user servers reach it (KQI_SERVICE_URL in the pod),
        e.g. http://hub:10101/services/kqi/; empty: kqi_service_url.""",
    ).tag(config=True)
    home_path = Unicode(
        "/home/jovyan",
        help="The home folder in the user image (the home PVC's mount path): HOME of the init "
        "container that makes the home links.",
    ).tag(config=True)

    limits_note = ""  # Kubernetes enforces the profile's CPU, memory and storage

    @default("automount_service_account_token")
    def _no_token(self) -> bool:
        return False

    @default("default_url")
    def _default_url(self) -> str:
        return "/lab"

    @property
    def kube_names(self) -> KubeNames:
        return KubeNames(
            data_claim=self.data_claim, kqi_root=self.kqi_root, gpu_resource=self.gpu_resource
        )

    async def load_user_options(self) -> None:
        """kubespawner's profile_list is not used: the kqi service validated the options in
        apply_user_options; a start without them (e.g. after a hub restart) asks again."""
        if self.kqi_plan is None:
            await self._apply_options(self, self.user_options or {})

    def apply_profile(self, profile: Profile) -> None:
        """Scalar traits, replaced at every spawn: limits, guarantees, the home PVC's size.
        GPUs, node selector and tolerations go into the manifest of this spawn."""
        super().apply_profile(profile)
        self.cpu_guarantee = float(profile.extra.get("cpu_guarantee", profile.cpu))
        self.mem_guarantee = parse_bytes(profile.extra.get("mem_guarantee", profile.memory))
        self.storage_capacity = bytes_quantity(profile.storage)

    def kqi_pod_env(self) -> dict[str, str]:
        """KQI_* variables of the pod (no token of any kind)."""
        env = self.kqi_env(self.kqi_root)
        env["KQI_ISOLATION"] = "kubernetes"
        env["KQI_SERVICE_URL"] = self.user_service_url or self.kqi_service_url
        env["KQI_SERVER_ID"] = self.kqi_server_id
        env["KQI_CULL_RULES"] = server_rules_json(self.config)
        env["KQI_LINK_ROOTS"] = self.kqi_root
        return env

    def _check_sources(self) -> None:
        if not self.data_root or not os.path.isdir(self.data_root):
            return
        root = Path(self.data_root)
        (root / user_dir(self.user.name) / "jobs").mkdir(parents=True, exist_ok=True)
        missing = missing_sources(self.kqi_plan, root)
        if missing:
            names = ", ".join(f"/kqi/{b.target} ({b.role})" for b in missing)
            raise web.HTTPError(400, f"cannot start: no data for {names} (job without output?)")

    async def get_pod_manifest(self) -> V1Pod:
        """kubespawner's pod for the configured traits, with this spawn's layout, profile and
        environment built in."""
        if self.kqi_plan is None:
            await self.load_user_options()
        assert self.kqi_plan and self.kqi_options and self.kqi_profile
        self._check_sources()
        self.kqi_server_id = uuid.uuid4().hex
        base = to_json(await super().get_pod_manifest())
        env = self.kqi_pod_env()
        init_env = {**self._expand_env(self.environment), **env, "HOME": self.home_path}
        pod = patch_notebook_pod(
            base,
            plan=self.kqi_plan,
            profile=self.kqi_profile,
            options=self.kqi_options,
            env=env,
            init_env=init_env,
            names=self.kube_names,
            startup_script=STARTUP_SCRIPT,
        )
        self.log.info(
            "%s: profile %s (%s CPU, %s memory, %d GPU), %d /kqi mounts",
            self._log_name,
            self.kqi_profile.name,
            cpu_quantity(self.kqi_profile.cpu),
            bytes_quantity(self.kqi_profile.memory),
            self.kqi_profile.gpu,
            len(self.kqi_plan.bindings),
        )
        return V1Pod(
            api_version=pod.get("apiVersion", "v1"),
            kind=pod.get("kind", "Pod"),
            metadata=get_k8s_model(V1ObjectMeta, pod["metadata"]),
            spec=pod["spec"],
        )
