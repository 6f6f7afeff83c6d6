"""KqiKubeSpawner: its pod and PVC manifests (strict kubernetes-validate, mounts, resources,
no token), no pile-up across spawns, and kubespawner's real start/poll/stop against kmock."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("kmock")
pytest.importorskip("kubespawner")

from tornado import web  # noqa: E402

from hub_ext.kube.objects import INIT_SCRIPT  # noqa: E402
from hub_ext.spawner.kube import KqiKubeSpawner, to_json  # noqa: E402

from .kube.fixtures import OPTION_SETS, kube_api, plan_reply, user, validate_strict  # noqa: E402
from .kube.shims import FakeKubelet  # noqa: E402

NS = "kqi"
HOME_VOLUME = {"name": "home", "persistentVolumeClaim": {"claimName": "{pvc_name}"}}
HOME_MOUNT = {"name": "home", "mountPath": "/home/jovyan"}


def make_spawner(url: str, **kw: Any) -> KqiKubeSpawner:
    """A spawner configured as the chart configures one (home PVC, proxy variables)."""
    sp = KqiKubeSpawner(
        _mock=True,
        user=user(kw.pop("user_name", "alice")),
        namespace=NS,
        k8s_api_host=url,
        image="registry.example.org/kqi/singleuser:1",
        cmd=["jupyterhub-singleuser"],
        storage_pvc_ensure=True,
        volumes=[HOME_VOLUME],
        volume_mounts=[HOME_MOUNT],
        environment={"HTTPS_PROXY": "http://kqi-egress-proxy:3128"},
        start_timeout=15,
        events_enabled=False,
        **kw,
    )
    calls: list[dict] = []

    async def kqi_call(method: str, path: str, body: Any = None) -> dict:
        calls.append(body)
        try:
            return plan_reply(body["user"], body["options"])
        except ValueError as e:  # the service answers 400 with the reasons
            raise web.HTTPError(400, str(e)) from e

    sp._kqi_call = kqi_call  # type: ignore[method-assign]
    sp.kqi_calls = calls  # type: ignore[attr-defined]
    return sp


async def manifest_for(sp: KqiKubeSpawner, options: dict[str, Any]) -> dict[str, Any]:
    sp.user_options = options
    await sp._apply_options(sp, options)
    return to_json(await sp.get_pod_manifest())


def container(pod: dict[str, Any], name: str = "notebook") -> dict[str, Any]:
    spec = pod["spec"]
    return next(c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name)


def mounts_at(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in c["volumeMounts"]}


def env_of(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in c.get("env", [])}


@pytest.mark.asyncio
@pytest.mark.parametrize("name", sorted(OPTION_SETS))
async def test_pod_and_pvc_manifests_validate(tmp_path: Path, name: str) -> None:
    async with kube_api(tmp_path) as (_api, url):
        sp = make_spawner(url)
        pod = await manifest_for(sp, OPTION_SETS[name])
        validate_strict(pod)
        validate_strict(to_json(sp.get_pvc_manifest()))
        for c in pod["spec"]["containers"] + pod["spec"]["initContainers"]:
            paths = [m["mountPath"] for m in c["volumeMounts"]]
            assert len(paths) == len(set(paths)), f"duplicate mounts in {c['name']}"
        vols = [v["name"] for v in pod["spec"]["volumes"]]
        assert len(vols) == len(set(vols))
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert not any("serviceaccount" in m["mountPath"] for m in container(pod)["volumeMounts"])


@pytest.mark.asyncio
async def test_layout_mounts_resources_and_env(tmp_path: Path) -> None:
    async with kube_api(tmp_path) as (_api, url):
        sp = make_spawner(url)
        pod = await manifest_for(sp, OPTION_SETS["datasets-parent-inference"])
        nb = container(pod)
        m = mounts_at(nb)
        for ds in ("mnist", "qm9", "oc20"):
            assert m[f"/kqi/input/{ds}"] == {
                "name": "kqi-data",
                "mountPath": f"/kqi/input/{ds}",
                "subPath": f"datasets/{ds}",
                "readOnly": True,
            }
        assert m["/kqi/parent"]["subPath"] == "users/alice/jobs/3/output"
        assert m["/kqi/parent"]["readOnly"] is True
        assert m["/kqi/inference"]["subPath"] == "users/bob/jobs/9/output"
        assert m["/kqi/inference"]["readOnly"] is True
        assert m["/kqi/jobs"] == {
            "name": "kqi-data",
            "mountPath": "/kqi/jobs",
            "subPath": "users/alice/jobs",
            "readOnly": True,
        }
        assert m["/home/jovyan"]["name"] == "home"  # the chart's home PVC stays
        data = next(v for v in pod["spec"]["volumes"] if v["name"] == "kqi-data")
        assert data["persistentVolumeClaim"] == {"claimName": "kqi-data"}
        # standard profile: 2 CPU, 8 GiB, guarantees = limits, no GPU; home PVC 100 GiB
        assert nb["resources"]["limits"] == {"cpu": "2", "memory": "8Gi"}
        assert nb["resources"]["requests"] == {"cpu": "2", "memory": "8Gi"}
        assert to_json(sp.get_pvc_manifest())["spec"]["resources"]["requests"] == {
            "storage": "100Gi"
        }
        env = env_of(nb)
        assert env["KQI_ROOT"] == "/kqi" and env["KQI_ISOLATION"] == "kubernetes"
        assert env["KQI_DATASETS"] == "mnist,qm9,oc20"
        assert env["KQI_PARENT_ID"] == "3" and env["KQI_INFERENCE_ID"] == "9"
        # the init container: same image, same mounts, no hub token, makes the home links
        init = container(pod, "kqi-init")
        assert init["image"] == nb["image"]
        assert mounts_at(init) == m
        assert init["command"] == ["/bin/sh", "-c", INIT_SCRIPT]
        ienv = env_of(init)
        assert ienv["HOME"] == "/home/jovyan" and ienv["HTTPS_PROXY"]
        assert not [k for k in ienv if "TOKEN" in k or k.startswith("JUPYTERHUB_")]
        assert "KQI_GIT_URL" not in ienv


@pytest.mark.asyncio
async def test_gpu_profile_and_git(tmp_path: Path) -> None:
    async with kube_api(tmp_path) as (_api, url):
        sp = make_spawner(url)
        pod = await manifest_for(sp, OPTION_SETS["gpu"])
        nb = container(pod)
        assert nb["resources"]["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"}
        assert nb["resources"]["requests"]["nvidia.com/gpu"] == "2"
        assert nb["resources"]["requests"]["cpu"] == "4"
        assert pod["spec"]["nodeSelector"] == {"kqi-hub/node-pool": "gpu"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
            "spec"
        ]["tolerations"]
        assert to_json(sp.get_pvc_manifest())["spec"]["resources"]["requests"] == {
            "storage": "200Gi"
        }
        assert env_of(nb)["WANDB_MODE"] == "offline"

        pod = await manifest_for(sp, OPTION_SETS["git-startup"])
        nb, init = container(pod), container(pod, "kqi-init")
        assert mounts_at(nb)["/kqi/git"] == {
            "name": "kqi-scratch",
            "mountPath": "/kqi/git",
            "subPath": "git",
            "readOnly": False,
        }
        assert {"name": "kqi-scratch", "emptyDir": {}} in pod["spec"]["volumes"]
        ienv = env_of(init)
        assert ienv["KQI_GIT_URL"] == "https://github.com/example/repo.git"
        assert ienv["KQI_GIT_REF"] == "v1.0" and ienv["GIT_ALLOW_PROTOCOL"] == "https"
        assert nb["args"][:2] == ["/bin/sh", "-c"] and "pip install -e ~/git" in nb["args"]
        assert nb["args"][-1] == "jupyterhub-singleuser"
        assert env_of(nb)["KQI_LIFETIME_HOURS"] == "4"
        # back to standard: no GPU limit, no node selector left over from the GPU spawn
        pod = await manifest_for(sp, {})
        assert "nvidia.com/gpu" not in container(pod)["resources"]["limits"]
        assert "nodeSelector" not in pod["spec"] or not pod["spec"]["nodeSelector"]


@pytest.mark.asyncio
async def test_no_pile_up_across_spawns(tmp_path: Path) -> None:
    async with kube_api(tmp_path) as (_api, url):
        sp = make_spawner(url)
        first = await manifest_for(sp, {"datasets": ["mnist", "qm9"], "parent": [3, 4]})
        second = await manifest_for(sp, {"datasets": ["oc20"], "git": {"url": "https://x/y"}})
        m = mounts_at(container(second))
        assert sorted(p for p in m if p.startswith("/kqi")) == [
            "/kqi/git",
            "/kqi/input/oc20",
            "/kqi/jobs",
        ]
        assert len(container(second)["volumeMounts"]) == len(m)
        assert [c["name"] for c in second["spec"]["initContainers"]] == ["kqi-init"]
        assert "/kqi/parent/3" in mounts_at(container(first))
        # the traits were not touched: the next spawn starts from the configured ones
        assert sp.volumes == [HOME_VOLUME] and sp.volume_mounts == [HOME_MOUNT]
        assert sp.init_containers == []


@pytest.mark.asyncio
async def test_start_poll_stop_against_kmock(tmp_path: Path) -> None:
    import kmock

    async with kube_api(tmp_path) as (api, url):
        async with FakeKubelet(api, NS, tmp_path / "data", tmp_path / "pods"):
            sp = make_spawner(url)
            sp.user_options = {"datasets": ["mnist"], "profile": "gpu"}
            await sp._apply_options(sp, sp.user_options)
            ip_port = await asyncio.wait_for(sp.start(), 30)
            assert ip_port == "http://10.0.0.7:8888"
            assert await sp.poll() is None
            pod = api.objects[kmock.resource("v1/pods"), NS, sp.pod_name].raw
            validate_strict({k: v for k, v in pod.items() if k != "status"})
            assert mounts_at(container(pod))["/kqi/input/mnist"]["readOnly"] is True
            assert container(pod)["resources"]["limits"]["nvidia.com/gpu"] == "2"
            assert pod["spec"]["automountServiceAccountToken"] is False
            pvc = api.objects[kmock.resource("v1/persistentvolumeclaims"), NS, sp.pvc_name].raw
            assert pvc["spec"]["resources"]["requests"]["storage"] == "200Gi"
            state = sp.get_state()
            assert state["pod_name"] == sp.pod_name and state["kqi_server_id"]

            await asyncio.wait_for(sp.stop(), 30)
            assert await sp.poll() == 1
            assert (kmock.resource("v1/pods"), NS, sp.pod_name) not in {
                k for k, o in api.objects.items() if not o.deleted
            }

            # a second start with other options builds a fresh pod (nothing piled up)
            sp.clear_state()
            sp.kqi_plan = None
            sp.user_options = {"datasets": ["qm9"]}
            await asyncio.wait_for(sp.start(), 30)
            pod = api.objects[kmock.resource("v1/pods"), NS, sp.pod_name].raw
            kqi = sorted(p for p in mounts_at(container(pod)) if p.startswith("/kqi"))
            assert kqi == ["/kqi/input/qm9", "/kqi/jobs"]
            await asyncio.wait_for(sp.stop(), 30)


@pytest.mark.asyncio
async def test_refused_options_create_nothing(tmp_path: Path) -> None:
    async with kube_api(tmp_path) as (api, url):
        sp = make_spawner(url)
        with pytest.raises(web.HTTPError) as e:
            await sp._apply_options(sp, {"datasets": ["nope"], "colour": "red"})
        assert "nope" in str(e.value) and "colour" in str(e.value)
        assert not list(api.objects.keys())


@pytest.mark.asyncio
async def test_missing_job_output_refuses_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "datasets" / "mnist").mkdir(parents=True)
    async with kube_api(tmp_path) as (_api, url):
        sp = make_spawner(url, data_root=str(data))
        sp.user_options = {"datasets": ["mnist"], "parent": 3}
        await sp._apply_options(sp, sp.user_options)
        with pytest.raises(web.HTTPError) as e:
            await sp.get_pod_manifest()
        assert e.value.status_code == 400 and "/kqi/parent" in e.value.log_message
        assert (data / "users" / "alice" / "jobs").is_dir()
