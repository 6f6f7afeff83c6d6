"""KubernetesRunner against kmock with a fake kubelet that runs each Job's pod as a local
process (the real supervisor, writing to a local stand-in of the kqi-data PVC): create, watch,
logs, exit codes, timeout, stop, re-attach after a restart, a vanished Job; and the Job
manifests in strict kubernetes-validate."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

pytest.importorskip("kmock")
pytest.importorskip("kubernetes_asyncio")

import kmock  # noqa: E402

from hub_ext.kube.objects import JOB_LOGS_PATH, job_manifest  # noqa: E402
from hub_ext.layout import JobRef, plan_job  # noqa: E402
from hub_ext.runners.base import JobLaunch, RunState  # noqa: E402
from hub_ext.runners.kubernetes import KubernetesRunner  # noqa: E402

from .kube.fixtures import PROFILES, kube_api, validate_strict  # noqa: E402
from .kube.shims import FakeKubelet  # noqa: E402

NS = "kqi"
JOBS = kmock.resource("batch/v1/jobs")
PODS = kmock.resource("v1/pods")


def data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "datasets" / "mnist").mkdir(parents=True)
    (root / "datasets" / "mnist" / "train.csv").write_text("1,2,3\n")
    (root / "users" / "alice" / "jobs" / "3" / "output").mkdir(parents=True)
    (root / "users" / "alice" / "jobs" / "3" / "output" / "model.txt").write_text("weights\n")
    return root


def launch(job_id: int, command: str, timeout: int | None = None, profile: str = "standard"):
    plan = plan_job("alice", job_id, ["mnist"], [JobRef(3, "alice")])
    return JobLaunch(
        id=job_id,
        owner="alice",
        command=command,
        plan=plan,
        env={**plan.env, "GREETING": "hi"},
        profile=PROFILES[profile],
        timeout_seconds=timeout,
        labels={"kqi-job-id": str(job_id), "kqi-user": "alice"},
    )


def runner(url: str, root: Path, **kw) -> KubernetesRunner:
    settings = {
        "namespace": NS,
        "image": "registry.example.org/kqi/singleuser:1",
        "data_root": str(root),
        "k8s_api_host": url,
        "status_wait": 1,
        "stop_grace": 2,
        "extra_env": {"HTTPS_PROXY": "http://kqi-egress-proxy:3128"},
    }
    return KubernetesRunner(**{**settings, **kw})


async def until_done(r: KubernetesRunner, job_id: int, ref, timeout: float = 30) -> RunState:
    for _ in range(int(timeout * 10)):
        state = await r.poll("alice", job_id, ref)
        if state.state != "running":
            return state
        await asyncio.sleep(0.1)
    raise TimeoutError(f"job {job_id} still running")


def outcome(state: RunState) -> tuple:
    return state.state, state.exit_code, state.reason


@pytest.mark.parametrize("profile", ["standard", "gpu"])
@pytest.mark.parametrize("timeout", [None, 600])
def test_job_manifest_validates(profile: str, timeout: int | None) -> None:
    la = launch(5, "python train.py --epochs 3", timeout, profile)
    r = KubernetesRunner(namespace=NS, image="img:1", data_root="/srv/kqi-data")
    m = r.manifest(la)
    validate_strict(m)
    spec, pod = m["spec"], m["spec"]["template"]["spec"]
    assert spec["backoffLimit"] == 0 and pod["restartPolicy"] == "Never"
    assert spec["ttlSecondsAfterFinished"] == 3600
    if timeout:
        assert spec["activeDeadlineSeconds"] == 600 + 10 + 120
    else:
        assert "activeDeadlineSeconds" not in spec
    assert m["metadata"]["labels"]["kqi-job-id"] == "5"
    assert m["metadata"]["labels"]["kqi-user"] == "alice"
    assert pod["automountServiceAccountToken"] is False
    c = pod["containers"][0]
    mounts = {x["mountPath"]: x for x in c["volumeMounts"]}
    assert mounts["/kqi/input/mnist"]["readOnly"] is True
    assert mounts["/kqi/input/mnist"]["subPath"] == "datasets/mnist"
    assert mounts["/kqi/parent"] == {
        "name": "kqi-data",
        "mountPath": "/kqi/parent",
        "subPath": "users/alice/jobs/3/output",
        "readOnly": True,
    }
    assert mounts["/kqi/code"]["subPath"] == "users/alice/jobs/5/code"
    assert mounts["/kqi/output"]["readOnly"] is False
    assert mounts[JOB_LOGS_PATH]["subPath"] == "users/alice/jobs/5/logs"
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["KQI_JOB_ID"] == "5" and env["PYTHONUNBUFFERED"] == "1"
    assert not [k for k in env if "TOKEN" in k or k.startswith("JUPYTERHUB")]
    if profile == "gpu":
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
        assert pod["nodeSelector"] == {"kqi-hub/node-pool": "gpu"}


def test_label_values_for_any_user_name() -> None:
    plan = plan_job("Ann.Lee@example.org", 8)
    m = job_manifest(
        job_id=8,
        owner="Ann.Lee@example.org",
        command="true",
        plan=plan,
        env={},
        profile=PROFILES["standard"],
        image="img",
        namespace=NS,
    )
    validate_strict(m)
    assert m["metadata"]["annotations"]["kqi-hub/owner"] == "Ann.Lee@example.org"


@pytest.mark.asyncio
async def test_create_watch_logs_and_exit_codes(tmp_path: Path) -> None:
    root = data_root(tmp_path)
    async with kube_api(tmp_path) as (api, url):
        async with FakeKubelet(api, NS, root, tmp_path / "pods"):
            r = runner(url, root)
            try:
                cmd = (
                    'cat "$KQI_ROOT/input/mnist/train.csv" "$KQI_ROOT/parent/model.txt"; '
                    'echo "$GREETING $KQI_JOB_ID" > "$KQI_ROOT/output/result.txt"; '
                    "echo started; sleep 4; echo finished"
                )
                ref = await r.start(launch(11, cmd))
                assert ref == {"namespace": NS, "job_name": "kqi-job-11", "uid": ref["uid"]}
                job = api.objects[JOBS, NS, "kqi-job-11"].raw
                validate_strict({k: v for k, v in job.items() if k != "status"})
                assert (await r.poll("alice", 11, ref)).state == "running"
                for _ in range(40):  # the pod's log mirrors output.log while it runs
                    if "started" in "".join(api.pod_logs.values()):
                        break
                    await asyncio.sleep(0.1)
                assert "started" in await r.log_text("alice", 11, ref)
                assert (await r.poll("alice", 11, ref)).state == "running"
                served = [q for q in api._requests if str(q.url.path).endswith("/log")]
                assert served, "the running job's log came from the pod"
                state = await until_done(r, 11, ref)
                assert outcome(state) == ("exited", 0, "exited")
                jdir = root / "users/alice/jobs/11"
                assert (jdir / "output/result.txt").read_text() == "hi 11\n"
                log = (jdir / "logs/output.log").read_text()
                assert "1,2,3" in log and "weights" in log and log.endswith("finished\n")
                assert (await r.log_text("alice", 11, ref)).endswith("finished\n")
                assert json.loads((jdir / "logs/status.json").read_text())["exit_code"] == 0

                ref = await r.start(launch(12, "echo failing; exit 3"))
                assert outcome(await until_done(r, 12, ref)) == ("exited", 3, "exited")
            finally:
                await r.close()


@pytest.mark.asyncio
async def test_timeout_and_stop(tmp_path: Path) -> None:
    root = data_root(tmp_path)
    async with kube_api(tmp_path) as (api, url):
        async with FakeKubelet(api, NS, root, tmp_path / "pods") as kubelet:
            r = runner(url, root)
            try:
                ref = await r.start(launch(21, "sleep 30", timeout=1))
                state = await until_done(r, 21, ref)
                assert (state.state, state.reason) == ("exited", "timeout")

                ref = await r.start(launch(22, "echo working; sleep 60"))
                await kubelet.wait_started("kqi-job-22-")
                await asyncio.sleep(1.0)
                await r.stop("alice", 22, ref)
                await r.stop("alice", 22, ref)  # idempotent
                state = await until_done(r, 22, ref)
                assert (state.state, state.reason) == ("exited", "stopped")
                live = {k for k, o in api.objects.items() if not o.deleted}
                assert (JOBS, NS, "kqi-job-22") not in live
                assert not [k for k in live if k[0] == PODS and k[2].startswith("kqi-job-22-")]
            finally:
                await r.close()


@pytest.mark.asyncio
async def test_reattach_after_restart_and_vanished(tmp_path: Path) -> None:
    root = data_root(tmp_path)
    async with kube_api(tmp_path) as (api, url):
        async with FakeKubelet(api, NS, root, tmp_path / "pods") as kubelet:
            first = runner(url, root)
            ref = await first.start(launch(31, "sleep 2; echo done"))
            await first.close()  # the kqi service stops

            second = runner(url, root)  # ... and starts again: no memory of the job
            try:
                assert (await second.poll("alice", 31, None)).state == "running"
                assert 31 in second._jobs  # found by its labels
                assert outcome(await until_done(second, 31, None)) == ("exited", 0, "exited")

                # a Job deleted behind the runner's back, without a recorded status
                ref = await second.start(launch(32, "sleep 60"))
                await kubelet.wait_started("kqi-job-32-")
                async with kubelet.session.delete(
                    f"{url}/apis/batch/v1/namespaces/{NS}/jobs/kqi-job-32"
                ) as resp:
                    assert resp.status == 200
                for _ in range(50):
                    state = await second.poll("alice", 32, ref)
                    if state.state != "running":
                        break
                    await asyncio.sleep(0.1)
                # the supervisor got SIGTERM from the pod's deletion and recorded it, or
                # the Job is simply gone: never 'running' for ever
                assert state.state in ("vanished", "exited")
            finally:
                await second.close()


@pytest.mark.asyncio
async def test_ended_without_status_file(tmp_path: Path) -> None:
    """Deadline exceeded or a failed pod, with no status.json: reported from the Job."""
    root = data_root(tmp_path)
    async with kube_api(tmp_path) as (_api, url):
        r = runner(url, root, status_wait=0)
        try:
            await r.ensure_watching()
            job = r.manifest(launch(41, "true"))
            job["status"] = {
                "conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]
            }
            r._remember("ADDED", job)
            state = await r.poll("alice", 41, None)
            assert (state.state, state.reason) == ("exited", "timeout")
            job["metadata"]["labels"]["kqi-job-id"] = "42"
            job["metadata"]["name"] = "kqi-job-42"
            job["status"]["conditions"][0]["reason"] = "BackoffLimitExceeded"
            r._remember("ADDED", job)
            state = await r.poll("alice", 42, None)
            assert (state.state, state.exit_code) == ("exited", 1)
            assert (await r.poll("alice", 43, None)).state == "vanished"
        finally:
            await r.close()
