"""Pure builders of Kubernetes manifests from the /kqi layout plan, a profile and names.

Everything here takes and returns plain data (dicts in the API's JSON form, camelCase), like
kubespawner's objects.py, so it is testable without a cluster and serves both the notebook
pod (KqiKubeSpawner patches kubespawner's pod) and the batch/v1 Job (KubernetesRunner).

The data root is the ReadWriteMany PVC ``kqi-data``; every plan binding with a source becomes a
``subPath`` mount of it (read-only where the plan says so); a binding without a source (the git
clone) is a ``subPath`` of a per-pod emptyDir.

Profile ``extra`` keys used here: ``node_selector`` (dict), ``tolerations`` (list of
tolerations), ``cpu_guarantee`` (CPUs), ``mem_guarantee`` (size), ``gpu_resource`` (extended
resource name, default ``nvidia.com/gpu``).
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..layout import LayoutPlan, job_dir
from ..options import Profile, ValidOptions, parse_bytes

Manifest = dict[str, Any]

LABEL_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]$")
MANAGED_BY = {"app.kubernetes.io/managed-by": "kqi-hub"}
JOB_COMPONENT = "kqi-job"
#: where a job pod sees its own logs folder (outside /kqi: not part of the layout)
JOB_LOGS_PATH = "/var/run/kqi/logs"

#: a job pod's command: the supervisor (which writes output.log and status.json to the data
#: volume), its output mirrored to the pod's log while it runs, SIGTERM passed on to it, and the
#: job's outcome as the container's exit status (0 succeeded, 1 otherwise). Only the supervisor
#: and the job carry KQI_JOB_MARK (the supervisor ends every marked process when the job ends)
JOB_SCRIPT = """KQI_JOB_MARK="$KQI_JOB_NAME" "$@" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null' TERM INT
tail -n +1 -s 0.5 -F "$KQI_JOB_LOGS/output.log" 2>/dev/null &
tailpid=$!
while :; do wait "$pid"; kill -0 "$pid" 2>/dev/null || break; done
sleep 1
kill "$tailpid" 2>/dev/null
exec "$1" -c 'import json, sys
try:
    code = json.load(open(sys.argv[1])).get("exit_code")
except (OSError, ValueError):
    code = 1
sys.exit(0 if code == 0 else 1)' "$KQI_JOB_LOGS/status.json"
"""

#: init container: the git clone into /kqi/git (URL and ref come as variables, never as shell
#: text), then the home links with the server's own code (server_ext.homelinks)
INIT_SCRIPT = """set -eu
if [ -n "${KQI_GIT_URL:-}" ]; then
  git clone --quiet -- "$KQI_GIT_URL" "$KQI_ROOT/git"
  if [ -n "${KQI_GIT_REF:-}" ]; then git -C "$KQI_ROOT/git" checkout --quiet "$KQI_GIT_REF"; fi
fi
exec python -m server_ext.homelinks
"""


@dataclass(frozen=True)
class KubeNames:
    """Names the manifests use (set from the spawner's and runner's traits)."""

    data_claim: str = "kqi-data"
    data_volume: str = "kqi-data"
    scratch_volume: str = "kqi-scratch"
    kqi_root: str = "/kqi"
    gpu_resource: str = "nvidia.com/gpu"


# -- small helpers ---------------------------------------------------------------------------
def cpu_quantity(cpu: float) -> str:
    """2.0 → '2', 0.5 → '500m'."""
    milli = round(cpu * 1000)
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def bytes_quantity(n: int) -> str:
    """Bytes → the largest exact binary unit ('8Gi'), else plain bytes."""
    for unit, size in (("Ti", 1024**4), ("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def label_value(text: str) -> str:
    """A valid label value for any text: itself when valid, else a readable slug plus a hash
    (user names may hold '@' or be longer than 63 characters)."""
    if LABEL_RE.fullmatch(text):
        return text
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-_.")[:48].strip("-_.")
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{slug}-{digest}" if slug else f"x-{digest}"


def env_list(env: Mapping[str, str]) -> list[Manifest]:
    return [{"name": k, "value": str(v)} for k, v in env.items()]


def merge_named(base: Iterable[Manifest], extra: Iterable[Manifest], key: str = "name") -> list:
    """``base`` with each item of ``extra`` replacing the one of the same ``key`` (or added):
    applying the same extras twice gives the same list, so nothing piles up."""
    out = [copy.deepcopy(b) for b in base]
    for item in extra:
        for i, b in enumerate(out):
            if b.get(key) == item.get(key):
                out[i] = copy.deepcopy(item)
                break
        else:
            out.append(copy.deepcopy(item))
    return out


# -- resources and scheduling -----------------------------------------------------------------
def resources(profile: Profile, names: KubeNames = KubeNames()) -> Manifest:
    """Limits from the profile; guarantees from ``extra`` (default: the limits). GPUs are an
    extended resource: request and limit must be equal."""
    extra = profile.extra
    cpu_req = float(extra.get("cpu_guarantee", profile.cpu))
    mem_req = parse_bytes(extra.get("mem_guarantee", profile.memory))
    limits = {"cpu": cpu_quantity(profile.cpu), "memory": bytes_quantity(profile.memory)}
    requests = {"cpu": cpu_quantity(cpu_req), "memory": bytes_quantity(mem_req)}
    if profile.gpu:
        gpu = str(extra.get("gpu_resource", names.gpu_resource))
        limits[gpu] = requests[gpu] = str(profile.gpu)
    return {"limits": limits, "requests": requests}


def scheduling(profile: Profile) -> Manifest:
    """nodeSelector and tolerations from the profile's ``extra``."""
    out: Manifest = {}
    if profile.extra.get("node_selector"):
        out["nodeSelector"] = {str(k): str(v) for k, v in profile.extra["node_selector"].items()}
    if profile.extra.get("tolerations"):
        out["tolerations"] = [dict(t) for t in profile.extra["tolerations"]]
    return out


# -- the layout as volumes and mounts ---------------------------------------------------------
def layout_volumes(plan: LayoutPlan, names: KubeNames = KubeNames()) -> tuple[list, list]:
    """(volumes, volumeMounts) for the plan: one mount per binding, under ``kqi_root``."""
    volumes: list[Manifest] = []
    mounts: list[Manifest] = []
    if any(b.source is not None for b in plan.bindings):
        volumes.append(
            {"name": names.data_volume, "persistentVolumeClaim": {"claimName": names.data_claim}}
        )
    if any(b.source is None for b in plan.bindings):
        volumes.append({"name": names.scratch_volume, "emptyDir": {}})
    for b in plan.bindings:
        mounts.append(
            {
                "name": names.data_volume if b.source is not None else names.scratch_volume,
                "mountPath": f"{names.kqi_root}/{b.target}",
                "subPath": b.source if b.source is not None else b.target,
                "readOnly": b.read_only,
            }
        )
    return volumes, mounts


def init_container(
    image: str,
    mounts: list[Manifest],
    env: Mapping[str, str],
    options: ValidOptions,
    security_context: Manifest | None = None,
) -> Manifest:
    """The notebook's init container (same image): git clone, then the home links."""
    env = dict(env)
    if options.git:
        env.update(
            KQI_GIT_URL=options.git.url,
            KQI_GIT_REF=options.git.ref,
            GIT_TERMINAL_PROMPT="0",
            GIT_ALLOW_PROTOCOL=options.git.url.split(":", 1)[0],
        )
    c: Manifest = {
        "name": "kqi-init",
        "image": image,
        "command": ["/bin/sh", "-c", INIT_SCRIPT],
        "env": env_list(env),
        "volumeMounts": copy.deepcopy(mounts),
    }
    if security_context:
        c["securityContext"] = copy.deepcopy(security_context)
    return c


def patch_notebook_pod(
    pod: Manifest,
    *,
    plan: LayoutPlan,
    profile: Profile,
    options: ValidOptions,
    env: Mapping[str, str],
    init_env: Mapping[str, str] | None = None,
    names: KubeNames = KubeNames(),
    startup_script: str = "",
    container: str = "notebook",
) -> Manifest:
    """kubespawner's pod (as JSON) with the layout, profile and environment of this spawn.

    Returns a new manifest; the layout's volumes and mounts replace ones of the same name or
    path, so building from a fresh kubespawner manifest at every start never piles them up.
    ``init_env`` is the init container's environment (default ``env``): it gets none of the
    hub's tokens. The service account token is never mounted."""
    pod = copy.deepcopy(pod)
    spec = pod.setdefault("spec", {})
    volumes, mounts = layout_volumes(plan, names)
    spec["volumes"] = merge_named(spec.get("volumes") or [], volumes)
    spec["automountServiceAccountToken"] = False
    spec.update(scheduling_merged(spec, profile))

    nb = next(c for c in spec["containers"] if c["name"] == container)
    nb["volumeMounts"] = merge_named(nb.get("volumeMounts") or [], mounts, key="mountPath")
    nb["env"] = merge_named(nb.get("env") or [], env_list(env))
    res = resources(profile, names)
    nb_res = nb.setdefault("resources", {})
    for kind in ("limits", "requests"):
        nb_res[kind] = {**(nb_res.get(kind) or {}), **res[kind]}
    if options.startup_command and startup_script:
        nb["args"] = [
            "/bin/sh",
            "-c",
            startup_script,
            "kqi-startup",
            options.startup_command,
            *(nb.get("args") or []),
        ]

    init_env = env if init_env is None else init_env
    init = init_container(
        nb["image"], nb["volumeMounts"], init_env, options, nb.get("securityContext")
    )
    spec["initContainers"] = merge_named(spec.get("initContainers") or [], [init])
    return pod


def scheduling_merged(spec: Manifest, profile: Profile) -> Manifest:
    """The profile's node selector and tolerations added to what the spec already has."""
    out: Manifest = {}
    sched = scheduling(profile)
    if "nodeSelector" in sched:
        out["nodeSelector"] = {**(spec.get("nodeSelector") or {}), **sched["nodeSelector"]}
    if "tolerations" in sched:
        tol = list(spec.get("tolerations") or [])
        out["tolerations"] = tol + [t for t in sched["tolerations"] if t not in tol]
    return out


def pvc_size(profile: Profile) -> str:
    """The home PVC's size from the profile ('standard': 100Gi)."""
    return bytes_quantity(profile.storage)


# -- jobs ---------------------------------------------------------------------------------------
def job_name(job_id: int) -> str:
    return f"kqi-job-{job_id}"


def job_labels(job_id: int, owner: str, extra: Mapping[str, str] | None = None) -> dict:
    labels = {
        **MANAGED_BY,
        "app.kubernetes.io/component": JOB_COMPONENT,
        "kqi-job-id": str(job_id),
        "kqi-user": label_value(owner),
    }
    for k, v in (extra or {}).items():
        labels.setdefault(k, label_value(str(v)))
    return labels


def job_manifest(
    *,
    job_id: int,
    owner: str,
    command: str,
    plan: LayoutPlan,
    env: Mapping[str, str],
    profile: Profile,
    image: str,
    namespace: str,
    timeout_seconds: int | None = None,
    names: KubeNames = KubeNames(),
    stop_grace: float = 10,
    deadline_margin: int = 120,
    ttl_seconds: int | None = 3600,
    labels: Mapping[str, str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    uid: int = 1000,
    gid: int = 100,
    image_pull_policy: str | None = None,
    service_account: str | None = None,
    python: str = "python",
) -> Manifest:
    """A batch/v1 Job running ``command`` under the kqi supervisor in ``/kqi/code``.

    The supervisor writes ``output.log`` and ``status.json`` to the job's logs folder on the
    data volume and enforces ``timeout_seconds`` itself (reason 'timeout'); the Job's
    ``activeDeadlineSeconds`` is a backstop a little later (``stop_grace`` + ``deadline_margin``)
    that also covers a pod stuck before the supervisor ran."""
    volumes, mounts = layout_volumes(plan, names)
    mounts.append(
        {
            "name": names.data_volume,
            "mountPath": JOB_LOGS_PATH,
            "subPath": f"{job_dir(owner, job_id)}/logs",
            "readOnly": False,
        }
    )
    root = names.kqi_root
    job_env = {
        **(extra_env or {}),
        **env,
        "KQI_ROOT": root,
        "KQI_ISOLATION": "kubernetes",
        "KQI_JOB_NAME": job_name(job_id),
        "KQI_JOB_LOGS": JOB_LOGS_PATH,
        "HOME": f"{root}/code",
        "PYTHONUNBUFFERED": "1",
    }
    timeout = int(timeout_seconds or 0)
    args = [
        "/bin/sh",
        "-c",
        JOB_SCRIPT,
        "kqi-job",
        python,
        "-m",
        "hub_ext.runners.supervise",
        "--logs",
        JOB_LOGS_PATH,
        "--cwd",
        f"{root}/code",
        "--timeout",
        str(timeout),
        "--grace",
        f"{stop_grace:g}",
        "--",
        "/bin/sh",
        "-c",
        command,
    ]
    all_labels = job_labels(job_id, owner, labels)
    container: Manifest = {
        "name": "job",
        "image": image,
        "command": args,
        "workingDir": f"{root}/code",
        "env": env_list(job_env),
        "resources": resources(profile, names),
        "volumeMounts": mounts,
        "securityContext": {
            "runAsUser": uid,
            "runAsGroup": gid,
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if image_pull_policy:
        container["imagePullPolicy"] = image_pull_policy
    pod_spec: Manifest = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # the supervisor gets SIGTERM on stop and needs the grace to stop the job and record it
        "terminationGracePeriodSeconds": int(stop_grace) + 10,
        "securityContext": {"fsGroup": gid, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": volumes,
        **scheduling(profile),
    }
    if service_account:
        pod_spec["serviceAccountName"] = service_account
    spec: Manifest = {
        "backoffLimit": 0,
        "template": {
            "metadata": {"labels": dict(all_labels)},
            "spec": pod_spec,
        },
    }
    if timeout:
        spec["activeDeadlineSeconds"] = timeout + int(stop_grace) + deadline_margin
    if ttl_seconds is not None:
        spec["ttlSecondsAfterFinished"] = ttl_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(job_id),
            "namespace": namespace,
            "labels": dict(all_labels),
            "annotations": {"kqi-hub/owner": owner},
        },
        "spec": spec,
    }
