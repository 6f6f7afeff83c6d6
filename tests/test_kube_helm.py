"""helm-values/: deep-merged over the chart's defaults and validated with the chart's schema;
the hub config in them executed against a traitlets config the way the chart does; the kqi
service's config file loaded; the extra manifests in strict kubernetes-validate."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from traitlets.config import Config
from traitlets.utils.importstring import import_item

from .kube.fixtures import validate_strict

REPO = Path(__file__).resolve().parents[1]
VALUES = REPO / "helm-values" / "values.yaml"
MANIFESTS = REPO / "helm-values" / "extra-manifests.yaml"
Z2JH = REPO.parent / "shared" / "z2jh"
SHARED_ALLOWLIST = REPO.parent / "shared" / "egress-allowlist.txt"


def deep_merge(base: Any, over: Any) -> Any:
    """Helm's merge of values: maps merge key by key, anything else replaces."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = copy.deepcopy(base)
        for k, v in over.items():
            out[k] = deep_merge(base.get(k), v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return yaml.safe_load(VALUES.read_text())


def chart_file(name: str) -> Path:
    path = Z2JH / name
    if not path.exists():
        pytest.fail(f"{path} is missing: the chart data lives in ../shared/z2jh")
    return path


def test_values_validate_against_the_chart_schema(values: dict[str, Any]) -> None:
    defaults = yaml.safe_load(chart_file("values.yaml").read_text())
    schema = yaml.safe_load(chart_file("values.schema.yaml").read_text())
    merged = deep_merge(defaults, values)
    jsonschema.validate(merged, schema, cls=jsonschema.Draft7Validator)
    assert merged["cull"]["enabled"] is False
    assert merged["hub"]["config"]["JupyterHub"]["spawner_class"].endswith("KqiKubeSpawner")
    # a wrong key is caught (the test would notice a schema that checks nothing)
    bad = deep_merge(merged, {"singleuser": {"storage": {"capcity": "1Gi"}}})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema, cls=jsonschema.Draft7Validator)


def z2jh_config(values: dict[str, Any]) -> Config:
    """What the chart's jupyterhub_config.py does with these values, as far as they matter
    here: hub.config, hub.services (+ generated tokens), hub.loadRoles, then hub.extraConfig
    in the order of their keys, all with the same ``c``."""
    hub = values["hub"]
    c = Config()
    c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"  # the chart's default
    for section, settings in hub["config"].items():
        for key, value in settings.items():
            setattr(c[section], key, copy.deepcopy(value))
    services = []
    for name, service in hub["services"].items():
        service = copy.deepcopy(service)
        service.setdefault("name", name)
        service["api_token"] = f"generated-token-of-{name}"
        services.append(service)
    c.JupyterHub.services = services
    c.JupyterHub.load_roles = [{"name": k, **v} for k, v in hub["loadRoles"].items()]
    for key in sorted(hub["extraConfig"]):
        code = hub["extraConfig"][key]
        exec(compile(code, f"hub.extraConfig.{key}", "exec"), {"c": c, "get_config": lambda: c})
    return c


def test_hub_config_selects_kqi_classes_and_services(
    values: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("kubespawner")
    from hub_ext.auth import KqiAuthenticator
    from hub_ext.spawner.kube import KqiKubeSpawner

    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setenv("POD_NAMESPACE", "kqi")
    c = z2jh_config(values)
    assert import_item(c.JupyterHub.spawner_class) is KqiKubeSpawner
    assert import_item(c.JupyterHub.authenticator_class) is KqiAuthenticator
    services = {s["name"]: s for s in c.JupyterHub.services}
    assert set(services) == {"kqi", "kqi-culler"}
    kqi = services["kqi"]
    assert kqi["command"][:3] == ["python3", "-m", "hub_ext.service"]
    assert kqi["environment"]["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"
    assert kqi["environment"]["POD_NAMESPACE"] == "kqi"
    assert c.KqiKubeSpawner.kqi_api_token == "generated-token-of-kqi"
    culler = services["kqi-culler"]
    assert culler["command"] == ["python3", "-m", "culler"]
    assert callable(culler["environment"]["KQI_CULLER_CONFIG"])
    # the spawner takes every setting given to it (no typo'd trait names)
    sp_traits = KqiKubeSpawner.class_trait_names(config=True)
    assert set(c.KqiKubeSpawner) <= set(sp_traits)


def test_roles_match_the_embedded_mode(values: dict[str, Any], tmp_path: Path) -> None:
    """The same services get the same scopes on one machine and on Kubernetes."""
    c = Config()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        code = (REPO / "hub_ext" / "embedded_config.py").read_text()
        env = {"KQI_DATA_ROOT": str(tmp_path / "data")}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            exec(compile(code, "embedded_config.py", "exec"), {"get_config": lambda: c})
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    finally:
        os.chdir(cwd)
    embedded = {r["name"]: sorted(r["scopes"]) for r in c.JupyterHub.load_roles}
    helm = {k: sorted(v["scopes"]) for k, v in values["hub"]["loadRoles"].items()}
    assert helm == embedded
    assert values["hub"]["loadRoles"]["kqi-culler"]["services"] == ["kqi-culler"]
    assert values["hub"]["loadRoles"]["kqi-service"]["services"] == ["kqi"]


def test_service_config_builds_valid_jobs(values: dict[str, Any]) -> None:
    pytest.importorskip("kubernetes_asyncio")
    from hub_ext.layout import plan_job
    from hub_ext.options import Profile
    from hub_ext.runners.base import JobLaunch
    from hub_ext.runners.kubernetes import KubernetesRunner

    extra = values["hub"]["extraFiles"]["kqi-service-config"]
    c = Config()
    exec(compile(extra["stringData"], extra["mountPath"], "exec"), {"get_config": lambda: c})
    assert import_item(c.KqiService.runner_class) is KubernetesRunner
    profiles = {p.name: p for p in map(Profile.from_config, c.KqiService.profiles)}
    std = profiles["standard"]
    assert (std.cpu, std.memory, std.storage, std.default) == (2, 8 * 1024**3, 100 * 1024**3, True)
    assert profiles["gpu"].gpu == 1
    runner = KubernetesRunner(config=c, namespace="kqi", data_root="/srv/kqi-data")
    assert runner.extra_env["HTTPS_PROXY"] == values["singleuser"]["extraEnv"]["HTTPS_PROXY"]
    for p in profiles.values():
        plan = plan_job("alice", 1, ["mnist"])
        m = runner.manifest(JobLaunch(1, "alice", "python train.py", plan, dict(plan.env), p, 60))
        validate_strict(m)
    gpu = m if p.name == "gpu" else None
    assert gpu is None or gpu["spec"]["template"]["spec"]["tolerations"]


def test_extra_manifests_validate() -> None:
    docs = [d for d in yaml.safe_load_all(MANIFESTS.read_text()) if d]
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
    assert "Role/kqi-jobs" in kinds and "RoleBinding/kqi-jobs" in kinds
    assert "PersistentVolumeClaim/kqi-data" in kinds
    for d in docs:
        validate_strict(d)
    role = next(d for d in docs if d["kind"] == "Role")
    rules = {
        (g, r): set(rule["verbs"])
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    assert {"create", "delete", "watch", "list", "get"} <= rules[("batch", "jobs")]
    assert rules[("", "pods/log")] == {"get"}
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "hub"}]


def test_egress_proxy_allowlist_is_the_shared_one() -> None:
    docs = [d for d in yaml.safe_load_all(MANIFESTS.read_text()) if d]
    cm = next(d for d in docs if d["kind"] == "ConfigMap")

    def hosts(text: str) -> set[str]:
        return {ln.strip() for ln in text.splitlines() if ln.strip() and ln[0] != "#"}

    assert hosts(cm["data"]["egress-allowlist.txt"]) == hosts(
        (REPO / "helm-values" / "egress-allowlist.txt").read_text()
    )
    if SHARED_ALLOWLIST.exists():
        assert hosts(cm["data"]["egress-allowlist.txt"]) == hosts(SHARED_ALLOWLIST.read_text())
    assert "package-index.txt" in cm["data"]
    conf = cm["data"]["squid.conf"]
    assert "package-index.txt" in conf and "http_access deny all" in conf


def test_user_pods_egress_only_dns_proxy_and_kqi(values: dict[str, Any]) -> None:
    net = values["singleuser"]["networkPolicy"]
    rules = net["egressAllowRules"]
    assert not rules["nonPrivateIPs"] and not rules["privateIPs"]
    assert not rules["cloudMetadataServer"]
    ports = sorted(p["port"] for rule in net["egress"] for p in rule["ports"])
    assert ports == [3128, 10101]
    env = values["singleuser"]["extraEnv"]
    assert env["HTTP_PROXY"] == env["HTTPS_PROXY"] == "http://kqi-egress-proxy:3128"
