"""KubernetesRunner: each kqi job a batch/v1 Job, with kubernetes_asyncio (kubespawner's client).

- The Job's pod runs the same supervisor as the local runner (``hub_ext.runners.supervise``),
  which writes ``logs/output.log`` and ``logs/status.json`` to the job's folder on the shared
  data volume; that file is the job's outcome, as in local mode.
- Status comes from a watch: one list+watch of this runner's Jobs (by label) keeps a cache;
  ``poll`` reads the cache and the data volume, it makes no API call. After a restart of the
  kqi service the first list finds the running Jobs again by their labels (re-attach).
- A Job that ended without a status file (killed by ``activeDeadlineSeconds``, image missing,
  evicted) is reported from its conditions and its pod's exit code.
- ``stop`` deletes the Job with its pods (propagationPolicy Foreground); the pod's SIGTERM lets
  the supervisor stop the command and record 'stopped'. A marker on the data volume
  (``logs/stop-requested``) keeps the reason should the pod be killed before it wrote it.
- ``log_text``: the pod's log while it runs, the data volume's ``output.log`` afterwards.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from traitlets import Bool, Dict, Integer, Unicode, default

from ..kube.objects import JOB_COMPONENT, MANAGED_BY, KubeNames, job_manifest, job_name
from .base import JobLaunch, JobRunner, RunState

SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
SELECTOR = ",".join(
    f"{k}={v}" for k, v in {**MANAGED_BY, "app.kubernetes.io/component": JOB_COMPONENT}.items()
)


def _ours(obj: dict[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return (
        all(labels.get(k) == v for k, v in MANAGED_BY.items())
        and labels.get("app.kubernetes.io/component") == JOB_COMPONENT
        and str(labels.get("kqi-job-id", "")).isdigit()
    )


def _condition(job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind and c.get("status") == "True":
            return c
    return None


class KubernetesRunner(JobRunner):
    namespace = Unicode(
        help="Namespace of the job pods (default: env POD_NAMESPACE, then the service "
        "account's namespace, then 'default').",
    ).tag(config=True)

    @default("namespace")
    def _namespace(self) -> str:
        if os.environ.get("POD_NAMESPACE"):
            return os.environ["POD_NAMESPACE"]
        try:
            return Path(SA_NAMESPACE).read_text().strip()
        except OSError:
            return "default"

    image = Unicode(
        help="Image of job pods: the user image with kqi-hub installed (its supervisor runs "
        "the job). Required.",
    ).tag(config=True)
    image_pull_policy = Unicode("", help="imagePullPolicy of job pods; empty: the default.").tag(
        config=True
    )
    data_claim = Unicode("kqi-data", help="The ReadWriteMany PVC holding the data root.").tag(
        config=True
    )
    kqi_root = Unicode("/kqi", help="Where the layout is mounted in job pods (KQI_ROOT).").tag(
        config=True
    )
    gpu_resource = Unicode(
        "nvidia.com/gpu", help="Extended resource name for a profile's GPUs."
    ).tag(config=True)
    extra_env = Dict(
        {},
        help="Variables set in every job pod, e.g. HTTP_PROXY, HTTPS_PROXY, NO_PROXY of the "
        "egress proxy. The job's own variables win.",
    ).tag(config=True)
    uid = Integer(1000, help="User id job commands run as.").tag(config=True)
    gid = Integer(100, help="Group id (and fsGroup) of job pods.").tag(config=True)
    service_account = Unicode(
        "", help="serviceAccountName of job pods (its token is never mounted)."
    ).tag(config=True)
    ttl_seconds_after_finished = Integer(
        3600,
        allow_none=True,
        help="Seconds a finished Job stays before Kubernetes deletes it (None: kept). The "
        "outcome and log stay on the data volume either way.",
    ).tag(config=True)
    deadline_margin = Integer(
        120,
        help="activeDeadlineSeconds = timeout_seconds + stop_grace + this: the supervisor "
        "enforces the timeout itself; the deadline is the backstop.",
    ).tag(config=True)
    status_wait = Integer(
        15,
        help="Seconds to wait for a finished Job's status file to show on the data volume "
        "(shared file systems cache) before reporting from the Job's conditions.",
    ).tag(config=True)
    watch_timeout = Integer(300, help="Seconds one watch request lasts before it is renewed.").tag(
        config=True
    )
    log_tail_lines = Integer(50, help="Lines of the pod log put in the message of a failure.").tag(
        config=True
    )
    k8s_api_host = Unicode(
        "",
        help="Kubernetes API URL; empty: the in-cluster configuration, else ~/.kube/config.",
    ).tag(config=True)
    k8s_api_verify_ssl = Bool(True, help="Verify the API server's certificate.").tag(config=True)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._api_client: Any = None
        self._jobs: dict[int, dict[str, Any]] = {}
        self._finished_seen: dict[int, float] = {}
        self._watch_task: asyncio.Task | None = None
        self._loaded: asyncio.Event | None = None

    @property
    def names(self) -> KubeNames:
        return KubeNames(
            data_claim=self.data_claim, kqi_root=self.kqi_root, gpu_resource=self.gpu_resource
        )

    # -- client and watch -----------------------------------------------------------------------
    async def api_client(self) -> Any:
        if self._api_client is None:
            from kubernetes_asyncio import client, config

            conf = client.Configuration()
            if self.k8s_api_host:
                conf.host = self.k8s_api_host
            else:
                try:
                    config.load_incluster_config(client_configuration=conf)
                except config.ConfigException:
                    await config.load_kube_config(client_configuration=conf)
            conf.verify_ssl = self.k8s_api_verify_ssl
            self._api_client = client.ApiClient(configuration=conf)
        return self._api_client

    async def _batch(self) -> Any:
        from kubernetes_asyncio import client

        return client.BatchV1Api(await self.api_client())

    async def _core(self) -> Any:
        from kubernetes_asyncio import client

        return client.CoreV1Api(await self.api_client())

    async def ensure_watching(self) -> None:
        """Start the list+watch of our Jobs (once) and wait for its first list."""
        if self._watch_task is None or self._watch_task.done():
            self._loaded = asyncio.Event()
            self._watch_task = asyncio.ensure_future(self._watch_loop())
        assert self._loaded is not None
        waiter = asyncio.ensure_future(self._loaded.wait())
        await asyncio.wait([waiter, self._watch_task], return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            waiter.cancel()
            self._watch_task.result()  # raises what stopped it

    def _remember(self, kind: str, job: dict[str, Any]) -> None:
        if not _ours(job):
            return
        jid = int(job["metadata"]["labels"]["kqi-job-id"])
        if kind == "DELETED":
            self._jobs.pop(jid, None)
        else:
            self._jobs[jid] = job

    async def _watch_loop(self) -> None:
        from kubernetes_asyncio import watch
        from kubernetes_asyncio.client.exceptions import ApiException

        batch = await self._batch()
        failures = 0
        while True:
            try:
                listing = await batch.list_namespaced_job(
                    self.namespace, label_selector=SELECTOR, _preload_content=False
                )
                data = await listing.json()
                self._jobs = {}
                for job in data.get("items") or []:
                    self._remember("ADDED", job)
                assert self._loaded is not None
                self._loaded.set()
                version = (data.get("metadata") or {}).get("resourceVersion")
                w = watch.Watch()
                async with w.stream(
                    batch.list_namespaced_job,
                    self.namespace,
                    label_selector=SELECTOR,
                    resource_version=version,
                    timeout_seconds=self.watch_timeout,
                ) as stream:
                    async for event in stream:
                        if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                            self._remember(event["type"], event["raw_object"])
                failures = 0
            except asyncio.CancelledError:
                raise
            except ApiException as e:
                if e.status in (401, 403) and not (self._loaded and self._loaded.is_set()):
                    raise  # no rights: say so to the caller of the first poll
                failures += 1
                self.log.warning("job watch: %s %s (retrying)", e.status, e.reason)
            except Exception as e:
                failures += 1
                self.log.warning("job watch failed: %s (retrying)", e)
            await asyncio.sleep(min(30, 0.5 * 2 ** min(failures, 6)) if failures else 0)

    # -- the runner interface -------------------------------------------------------------------
    def manifest(self, launch: JobLaunch) -> dict[str, Any]:
        if not self.image:
            raise RuntimeError("KubernetesRunner.image is not set")
        return job_manifest(
            job_id=launch.id,
            owner=launch.owner,
            command=launch.command,
            plan=launch.plan,
            env=launch.env,
            profile=launch.profile,
            image=self.image,
            namespace=self.namespace,
            timeout_seconds=launch.timeout_seconds,
            names=self.names,
            stop_grace=self.stop_grace,
            deadline_margin=self.deadline_margin,
            ttl_seconds=self.ttl_seconds_after_finished,
            labels=launch.labels,
            extra_env=self.extra_env,
            uid=self.uid,
            gid=self.gid,
            image_pull_policy=self.image_pull_policy or None,
            service_account=self.service_account or None,
        )

    async def start(self, launch: JobLaunch) -> dict[str, Any]:
        from kubernetes_asyncio.client.exceptions import ApiException

        jdir = self.job_path(launch.owner, launch.id)
        if Path(self.data_root).is_dir():  # the service mounts the data volume
            for sub in ("logs", "output", "code"):
                (jdir / sub).mkdir(parents=True, exist_ok=True)
        body = self.manifest(launch)
        await self.ensure_watching()
        batch = await self._batch()
        try:
            resp = await batch.create_namespaced_job(self.namespace, body, _preload_content=False)
            job = await resp.json()
        except ApiException as e:
            if e.status != 409:
                raise RuntimeError(f"Kubernetes refused the Job: {e.status} {e.reason}") from e
            # created before a restart of the service: it is ours, attach to it
            resp = await batch.read_namespaced_job(
                body["metadata"]["name"], self.namespace, _preload_content=False
            )
            job = await resp.json()
        self._remember("ADDED", job)
        self.log.info("job %s of %s: Job %s created", launch.id, launch.owner, job_name(launch.id))
        meta = job.get("metadata") or {}
        return {"namespace": self.namespace, "job_name": meta.get("name"), "uid": meta.get("uid")}

    async def poll(self, owner: str, job_id: int, ref: dict[str, Any] | None) -> RunState:
        status = self.recorded_status(owner, job_id)
        if status is not None:
            self._finished_seen.pop(job_id, None)
            return status
        await self.ensure_watching()
        job = self._jobs.get(job_id)
        stop_asked = (self.job_path(owner, job_id) / "logs" / "stop-requested").exists()
        if job is None:
            if stop_asked:
                return RunState("exited", None, "stopped", "stopped on request")
            return RunState("vanished", message="its Job is gone and recorded no exit status")
        failed, complete = _condition(job, "Failed"), _condition(job, "Complete")
        if not (failed or complete):
            return RunState("running")
        # ended without a status file yet: give the shared file system a moment
        first = self._finished_seen.setdefault(job_id, time.monotonic())
        if time.monotonic() - first < self.status_wait:
            return RunState("running")
        self._finished_seen.pop(job_id, None)
        if failed and failed.get("reason") == "DeadlineExceeded":
            return RunState(
                "exited", None, "timeout", "stopped: over its time limit (Job deadline)"
            )
        if stop_asked:
            return RunState("exited", None, "stopped", "stopped on request")
        code, detail = await self._pod_outcome(job)
        if complete and code in (None, 0):
            return RunState("exited", 0, "exited", "exit code 0 (no status file)")
        reason = (failed or {}).get("message") or (failed or {}).get("reason") or "pod failed"
        return RunState(
            "exited", code if code is not None else 1, "exited", f"{reason}{detail}".strip()
        )

    async def stop(self, owner: str, job_id: int, ref: dict[str, Any] | None) -> None:
        from kubernetes_asyncio.client import V1DeleteOptions
        from kubernetes_asyncio.client.exceptions import ApiException

        logs = self.job_path(owner, job_id) / "logs"
        if logs.is_dir():
            (logs / "stop-requested").touch()
        name = (ref or {}).get("job_name") or job_name(job_id)
        namespace = (ref or {}).get("namespace") or self.namespace
        batch = await self._batch()
        try:
            await batch.delete_namespaced_job(
                name,
                namespace,
                body=V1DeleteOptions(propagation_policy="Foreground"),
                _preload_content=False,
            )
            self.log.info("job %s of %s: Job %s deleted (stop)", job_id, owner, name)
        except ApiException as e:
            if e.status != 404:
                raise

    # -- pods and logs --------------------------------------------------------------------------
    async def job_pods(self, name: str) -> list[dict[str, Any]]:
        core = await self._core()
        resp = await core.list_namespaced_pod(
            self.namespace, label_selector=f"job-name={name}", _preload_content=False
        )
        items = (await resp.json()).get("items") or []
        return [p for p in items if (p["metadata"].get("labels") or {}).get("job-name") == name]

    async def _pod_outcome(self, job: dict[str, Any]) -> tuple[int | None, str]:
        """The job container's exit code and a tail of its log, as far as they are known."""
        try:
            pods = await self.job_pods(job["metadata"]["name"])
        except Exception as e:
            return None, f" (pod unknown: {e})"
        for pod in pods:
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                term = (cs.get("state") or {}).get("terminated")
                if cs.get("name") == "job" and term:
                    tail = await self._pod_log(pod["metadata"]["name"], self.log_tail_lines)
                    more = f"; log: {tail.strip()[-500:]}" if tail.strip() else ""
                    why = term.get("reason") or ""
                    return term.get("exitCode"), f" ({why}){more}" if why else more
        return None, ""

    async def _pod_log(self, pod: str, tail: int | None = None) -> str:
        core = await self._core()
        try:
            return await core.read_namespaced_pod_log(
                pod, self.namespace, container="job", tail_lines=tail
            )
        except Exception as e:
            self.log.debug("no log of pod %s: %s", pod, e)
            return ""

    async def log_text(self, owner: str, job_id: int, ref: dict[str, Any] | None = None) -> str:
        """The job's log: from its pod while the job runs, else from the data volume (where
        the supervisor has written all of it once the status file is there)."""
        name = (ref or {}).get("job_name") or job_name(job_id)
        pods: list[dict[str, Any]] = []
        if self.recorded_status(owner, job_id) is None:
            try:
                pods = await self.job_pods(name)
            except Exception as e:
                self.log.debug("job %s: no pods listed: %s", job_id, e)
        for pod in pods:
            if (pod.get("status") or {}).get("phase") == "Running":
                text = await self._pod_log(pod["metadata"]["name"])
                if text:
                    return text
        path = self.job_path(owner, job_id) / "logs" / "output.log"
        try:
            return path.read_text(errors="replace")
        except OSError:
            return ""

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            try:
                await self._watch_task
            except (asyncio.CancelledError, Exception):
                pass
            self._watch_task = None
        if self._api_client is not None:
            await self._api_client.close()
            self._api_client = None
