"""Small shims that make kmock (an in-process Kubernetes API emulator) serve what kubespawner
and KubernetesRunner use, and a fake kubelet + Job controller that moves pod and Job status.

kmock 0.8's KubernetesEmulator stores objects and streams watch events, but leaves to its user:
``watch=True`` as kubernetes_asyncio spells it,
metadata the API server fills in (namespace, uid, resourceVersion, creationTimestamp), label
selectors on list and watch, the ``log`` subresource, and everything controllers do. Those are
added here, and nothing more; the objects themselves are kmock's.

The fake kubelet runs a Job's container command for real, as a local process: the data-volume
mounts become links into a local data root and ``/kqi`` is rewritten to a per-pod folder, so
the real supervisor writes ``output.log`` and ``status.json`` where the service reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import re
import shutil
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web
import attrs
import kmock

RESOURCES = ("v1/pods", "v1/events", "v1/persistentvolumeclaims", "v1/secrets", "batch/v1/jobs")


def selector_matches(obj: dict[str, Any], selector: str | None) -> bool:
    """Equality label selectors (``a=b,c=d``), as kubespawner and the runner use them."""
    if not selector:
        return True
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for part in selector.split(","):
        key, _, value = part.partition("=")
        if labels.get(key.strip()) != value.strip():
            return False
    return True


@attrs.define(kw_only=True)
class KubeAPI(kmock.KubernetesEmulator):
    """kmock's emulator plus server-filled metadata, label selectors and pod logs."""

    pod_logs: dict[tuple[str, str], str] = attrs.field(factory=dict)
    _version: int = 0

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for res in RESOURCES:
            self.resources[res] = {}

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> Any:
        # kubernetes_asyncio sends watch=True (Go's ParseBool takes it); kmock knows only 'true'
        if raw_request.query.get("watch") == "True":
            query = {**raw_request.query, "watch": "true"}
            raw_request = raw_request.clone(rel_url=raw_request.rel_url.with_query(query))
        return await super().__call__(raw_request)

    async def _handle(self, request: kmock.Request) -> Any:
        if request.resource is not None and isinstance(request.data, dict):
            if request.action == kmock.action.CREATE:
                meta = request.data.setdefault("metadata", {})
                meta.setdefault("namespace", request.namespace)
                meta["uid"] = str(uuid.uuid4())
                meta["resourceVersion"] = self._next_version()
                meta["creationTimestamp"] = datetime.datetime.now(datetime.UTC).strftime(
                    "%Y-%m-%dT%H:%M:%SZ"
                )
                status = request.data.setdefault("status", {})
                if request.resource.plural == "pods":
                    status.setdefault("phase", "Pending")
            elif request.action == kmock.action.UPDATE:
                request.data.setdefault("metadata", {})["resourceVersion"] = self._next_version()
        return await super()._handle(request)

    async def _serve_list(self, request: kmock.Request) -> Any:
        result = await super()._serve_list(request)
        sel = request.params.get("labelSelector")
        result["items"] = [o for o in result["items"] if selector_matches(o, sel)]
        result["metadata"]["resourceVersion"] = str(self._version)
        return result

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        sel = request.params.get("labelSelector")
        async for event in super()._serve_watch(request):
            if isinstance(event, dict) and not selector_matches(event.get("object", {}), sel):
                continue
            yield event

    async def _serve_fetch(self, request: kmock.Request) -> Any:
        if request.subresource == "log":
            await super()._serve_fetch(request)  # 404 for an unknown pod
            return self.pod_logs.get((request.namespace, request.name), "").encode()
        return await super()._serve_fetch(request)


class FakeKubelet:
    """Moves notebook pods to Running, runs Job pods as local processes, and acts as the Job
    controller (one pod per Job; Job conditions from the pod; children deleted with the Job).

    ``data_root``: the local folder standing in for the kqi-data PVC."""

    def __init__(self, api: KubeAPI, namespace: str, data_root: Path, work: Path):
        self.api, self.ns, self.data_root, self.work = api, namespace, data_root, work
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.tasks: list[asyncio.Task] = []
        self.started: list[str] = []
        self.seen: set[str] = set()
        self.hold_notebooks = False  # True: notebook pods stay Pending

    @property
    def url(self) -> str:
        return str(self.api.url).rstrip("/")

    async def __aenter__(self) -> FakeKubelet:
        self.session = aiohttp.ClientSession()
        self.tasks = [
            asyncio.ensure_future(self._watch("/api/v1/pods", self._on_pod)),
            asyncio.ensure_future(self._watch("/apis/batch/v1/jobs", self._on_job)),
        ]
        await asyncio.sleep(0.1)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for p in self.procs.values():  # the node goes away: its processes end in this loop
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            await p.wait()
        await asyncio.sleep(0.05)
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.session.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        task.add_done_callback(self._report)
        self.tasks.append(task)

    @staticmethod
    def _report(task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            print(f"fake kubelet: {task.exception()!r}", file=sys.stderr)

    async def _watch(self, path: str, handler: Any) -> None:
        async with self.session.get(f"{self.url}{path}", params={"watch": "true"}) as resp:
            async for line in resp.content:
                if line.strip():
                    event = __import__("json").loads(line)
                    try:
                        await handler(event["type"], event["object"])
                    except Exception as e:  # a broken fake must show in the test's output
                        print(f"fake kubelet: {e!r}", file=sys.stderr)
                        raise

    def _path(self, kind: str, obj: dict[str, Any], sub: str = "") -> str:
        ns, name = obj["metadata"].get("namespace") or self.ns, obj["metadata"]["name"]
        group = "/api/v1" if kind == "pods" else "/apis/batch/v1"
        return f"{self.url}{group}/namespaces/{ns}/{kind}/{name}{sub}"

    async def patch_status(self, kind: str, obj: dict[str, Any], status: dict) -> None:
        async with self.session.patch(
            self._path(kind, obj, "/status"),
            json={"status": status},
            headers={"Content-Type": "application/merge-patch+json"},
        ) as resp:
            resp.raise_for_status()

    # -- pods ----------------------------------------------------------------------------------
    async def _on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        if kind == "DELETED":
            proc = self.procs.get(name)
            if proc is not None and proc.returncode is None:
                os.killpg(proc.pid, signal.SIGTERM)  # the kubelet's SIGTERM on deletion
            return
        uid = pod["metadata"]["uid"]
        if kind != "ADDED" or uid in self.seen:  # watches replay ADDED on reconnect
            return
        self.seen.add(uid)
        self.started.append(name)
        if (pod["metadata"].get("labels") or {}).get("job-name"):
            self._spawn(self._run_job_pod(pod))
        elif not self.hold_notebooks:
            await self.patch_status("pods", pod, running_status(pod))

    async def _run_job_pod(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        c = pod["spec"]["containers"][0]
        root = self.work / name
        argv, env, cwd = self._localize(pod, c, root)
        await self.patch_status("pods", pod, running_status(pod, container=c["name"]))
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            cwd=cwd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name] = proc
        key = (pod["metadata"].get("namespace") or self.ns, name)
        self.api.pod_logs[key] = ""
        assert proc.stdout is not None
        async for line in proc.stdout:
            self.api.pod_logs[key] += line.decode(errors="replace")
        code = await proc.wait()
        if code < 0:  # killed by a signal, as a container runtime reports it
            code = 128 - code
        term = {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}
        status = {
            "phase": "Succeeded" if code == 0 else "Failed",
            "containerStatuses": [
                {
                    "name": c["name"],
                    "ready": False,
                    "restartCount": 0,
                    "image": c["image"],
                    "imageID": "",
                    "state": {"terminated": term},
                }
            ],
        }
        with contextlib.suppress(aiohttp.ClientResponseError):  # deleted meanwhile
            await self.patch_status("pods", pod, status)

    def _localize(
        self, pod: dict[str, Any], c: dict[str, Any], root: Path
    ) -> tuple[list[str], dict[str, str], str]:
        """The container's mounts as links under ``root``; '/kqi' and the logs path mapped."""
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        mapping: dict[str, str] = {}
        for m in c.get("volumeMounts", []):
            local = root / m["mountPath"].lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            vol = volumes[m["name"]]
            if "persistentVolumeClaim" in vol:
                src = self.data_root / m.get("subPath", "")
                src.mkdir(parents=True, exist_ok=True)  # the kubelet creates a missing subPath
                local.symlink_to(src, target_is_directory=True)
            else:
                local.mkdir(parents=True, exist_ok=True)
            mapping[m["mountPath"]] = str(local)
        kqi_root = next(e["value"] for e in c["env"] if e["name"] == "KQI_ROOT")
        mapping.setdefault(kqi_root, str(root / kqi_root.lstrip("/")))

        paths = "|".join(re.escape(m) for m in sorted(mapping, key=len, reverse=True))
        pattern = re.compile(rf"(?<![\w/.-])({paths})(?=/|\b|$)")

        def local(text: str) -> str:  # one pass, whole paths only
            return pattern.sub(lambda m: mapping[m.group(1)], text)

        env = {e["name"]: local(e["value"]) for e in c["env"]}
        env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.defpath])
        argv = [local(a) for a in c["command"] + c.get("args", [])]
        return argv, env, local(c.get("workingDir", str(root)))

    # -- the Job controller --------------------------------------------------------------------
    async def _on_job(self, kind: str, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        if kind == "DELETED":  # the garbage collector: the Job's pods go with it
            for pod_name in [n for n in self.started if n.startswith(f"{name}-")]:
                with contextlib.suppress(aiohttp.ClientResponseError):
                    async with self.session.delete(
                        f"{self.url}/api/v1/namespaces/{self.ns}/pods/{pod_name}"
                    ) as resp:
                        resp.raise_for_status()
            return
        if kind == "ADDED" and not (job.get("status") or {}).get("startTime"):
            await self.patch_status("jobs", job, {"startTime": now(), "active": 1})
            tmpl = job["spec"]["template"]
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"{name}-{uuid.uuid4().hex[:5]}",
                    "namespace": self.ns,
                    "labels": {**tmpl["metadata"].get("labels", {}), "job-name": name},
                },
                "spec": tmpl["spec"],
            }
            async with self.session.post(
                f"{self.url}/api/v1/namespaces/{self.ns}/pods", json=pod
            ) as resp:
                resp.raise_for_status()
            self._spawn(self._follow(job, pod["metadata"]["name"]))

    async def _follow(self, job: dict[str, Any], pod_name: str) -> None:
        """Set the Job's conditions once its pod ended (backoffLimit 0: no retry)."""
        while True:
            await asyncio.sleep(0.1)
            async with self.session.get(
                f"{self.url}/api/v1/namespaces/{self.ns}/pods/{pod_name}"
            ) as resp:
                if resp.status == 404:
                    return
                phase = ((await resp.json()).get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                break
        done = phase == "Succeeded"
        cond = {
            "type": "Complete" if done else "Failed",
            "status": "True",
            "reason": "Completed" if done else "BackoffLimitExceeded",
            "message": "" if done else "Job has reached the specified backoff limit",
        }
        status = {"active": 0, "conditions": [cond], "completionTime" if done else "x": now()}
        status.pop("x", None)
        status["succeeded" if done else "failed"] = 1
        with contextlib.suppress(aiohttp.ClientResponseError):
            await self.patch_status("jobs", job, status)

    async def wait_started(self, prefix: str, timeout: float = 10) -> str:
        for _ in range(int(timeout * 20)):
            for n in self.started:
                if n.startswith(prefix):
                    return n
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no pod {prefix}* started")


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def running_status(pod: dict[str, Any], container: str = "notebook") -> dict[str, Any]:
    names = [c["name"] for c in pod["spec"]["containers"]] or [container]
    return {
        "phase": "Running",
        "podIP": "10.0.0.7",
        "startTime": now(),
        "containerStatuses": [
            {
                "name": n,
                "ready": True,
                "restartCount": 0,
                "image": "x",
                "imageID": "",
                "state": {"running": {"startedAt": now()}},
            }
            for n in names
        ],
    }


def write_kubeconfig(path: Path, server: str) -> Path:
    """A kubeconfig pointing at the emulator (kubespawner loads one before its host override)."""
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: kmock, cluster: {{server: "{server}"}}}}]
users: [{{name: kmock, user: {{token: kmock}}}}]
contexts: [{{name: kmock, context: {{cluster: kmock, user: kmock, namespace: kqi}}}}]
current-context: kmock
"""
    )
    return path


def clean(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
