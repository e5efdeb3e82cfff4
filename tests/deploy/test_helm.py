"""deploy/helm/hangar checked with Helm's own code and the Kubernetes schemas, offline.

No helm binary can be had on these machines (docs/kubernetes.md); the wheel
helm-python-sdk carries Helm v4 compiled as a library, with `helm template`
(Chart.render) and `helm lint`. The rendered manifests are checked against the
Kubernetes API's OpenAPI schemas by kubernetes-validate, strictly: an unknown
or misspelt field is an error, as kubeconform -strict has it.
"""

from __future__ import annotations

import pytest
import yaml
from helm_python.chart import Chart, lint
from helm_python.errors import HelmRenderError
from kubernetes_validate import ValidationError, validate

from tests.support import processes

CHART = processes.ROOT / "deploy" / "helm" / "hangar"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and a current one.
KUBERNETES = ["1.27.0", "1.33.0"]

# What an install gives (docs/kubernetes.md): the external services and the key.
INSTALL = {
    "externalDatabase": {"url": "postgres://hangar:pw@postgres.db.svc:5432/hangar"},
    "externalRedis": {"url": "redis://hangar:pw@redis.db.svc:6379/0"},
    "secretKey": {"value": "k" * 48},
}
EXISTING_SECRETS = {
    "externalDatabase": {"existingSecret": "db"},
    "externalRedis": {"existingSecret": "redis", "agentUrl": "redis://redis.db.svc:6379/0"},
    "secretKey": {"existingSecret": "key"},
}
MINIMAL = {
    **INSTALL,
    "gateway": {"enabled": False},
    "agent": {"enabled": False},
    "ingress": {"enabled": False},
    "persistence": {"enabled": False},
}
DEVICE_PLUGIN = {**EXISTING_SECRETS, "agent": {"gpus": 8}, "persistence": {"existingClaim": "x"}}
VALUES = {"install": INSTALL, "existing-secrets": EXISTING_SECRETS, "minimal": MINIMAL,
          "device-plugin": DEVICE_PLUGIN}  # fmt: skip


def render(values: dict) -> dict[str, list[dict]]:
    """helm template: {kind: [objects]} of the release `hangar` in namespace `hangar`."""
    rendered = Chart.load(CHART).render(
        values=values, name="hangar", namespace="hangar", is_install=True
    )
    objects: dict[str, list[dict]] = {}
    for path, text in rendered.items():
        if path.endswith(".yaml"):
            for document in yaml.safe_load_all(text):
                if document:
                    objects.setdefault(document["kind"], []).append(document)
    return objects


def named(objects: dict, kind: str, suffix: str) -> dict:
    [found] = [o for o in objects[kind] if o["metadata"]["name"].endswith(suffix)]
    return found


@pytest.mark.parametrize("values", VALUES.values(), ids=VALUES.keys())
def test_helm_lint_strict_finds_nothing(values):
    for version in KUBERNETES:
        report = lint(CHART, values=values, strict=True, kube_version=f"v{version}")
        found = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        assert found == [], (version, found)


@pytest.mark.parametrize("values", VALUES.values(), ids=VALUES.keys())
def test_every_rendered_object_matches_the_kubernetes_schema(values):
    objects = [o for group in render(values).values() for o in group]
    assert objects
    for version in KUBERNETES:
        for document in objects:
            validate(document, version, strict=True)


def test_the_schema_check_sees_a_misspelt_field():
    """The checker itself: strict validation refuses a field Kubernetes doesn't have."""
    web = named(render(INSTALL), "Deployment", "-web")
    web["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    with pytest.raises(ValidationError):
        validate(web, KUBERNETES[0], strict=True)


def test_the_release_runs_every_process_of_the_console():
    objects = render(INSTALL)
    commands = {
        o["metadata"]["name"]: o["spec"]["template"]["spec"]["containers"][0]["command"]
        for o in objects["Deployment"] + objects["DaemonSet"]
    }
    assert (
        commands["hangar-web"][:1] == ["daphne"] and "--proxy-headers" not in commands["hangar-web"]
    )
    assert commands["hangar-worker"][:4] == ["celery", "-A", "console.celery", "worker"]
    assert commands["hangar-beat"][:4] == ["celery", "-A", "console.celery", "beat"]
    assert commands["hangar-gateway"] == ["hangar-gateway"]
    assert commands["hangar-agent"][:2] == ["hangar-agent", "run"]
    beat = named(objects, "Deployment", "-beat")
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"]["type"] == "Recreate"
    [job] = objects["Job"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][-2:] == [
        "migrate",
        "--noinput",
    ]


def test_the_console_reads_its_secrets_from_secrets():
    objects = render(EXISTING_SECRETS)
    assert "Secret" not in objects  # nothing to make: all three exist
    env = named(objects, "Deployment", "-web")["spec"]["template"]["spec"]["containers"][0]["env"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in env if "valueFrom" in e}
    assert refs == {"HANGAR_DATABASE_URL": "db", "HANGAR_REDIS_URL": "redis",
                    "HANGAR_SECRET_KEY": "key"}  # fmt: skip
    plain = {e["name"]: e["value"] for e in env if "value" in e}
    assert plain["HANGAR_AGENT_BROKER_URL"] == "redis://redis.db.svc:6379/0"
    assert not any("pw@" in value for value in plain.values())


def test_the_agent_sees_every_gpu_through_the_nvidia_runtime_by_default():
    agent = render(INSTALL)["DaemonSet"][0]["spec"]["template"]["spec"]
    assert agent["hostPID"] is True and agent["hostNetwork"] is True
    assert agent["runtimeClassName"] == "nvidia"
    container = agent["containers"][0]
    assert {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"} in container["env"]
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert agent["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


def test_the_agent_can_take_gpus_from_the_device_plugin_instead():
    agent = render(DEVICE_PLUGIN)["DaemonSet"][0]["spec"]["template"]["spec"]
    assert "runtimeClassName" not in agent
    container = agent["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert not any(e["name"] == "NVIDIA_VISIBLE_DEVICES" for e in container.get("env") or [])


def test_the_ingress_sends_v1_to_the_gateway_and_the_rest_to_the_console():
    [ingress] = render(INSTALL)["Ingress"]
    paths = {
        p["path"]: p["backend"]["service"]["name"]
        for p in ingress["spec"]["rules"][0]["http"]["paths"]
    }
    assert paths == {"/v1/": "hangar-gateway", "/": "hangar-web"}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({**INSTALL, "externalDatabase": {"url": ""}}, "externalDatabase.url or"),
        ({**INSTALL, "externalRedis": {"url": ""}}, "externalRedis.url or"),
        ({**INSTALL, "secretKey": {"value": "too short"}}, "at least 32 characters"),
    ],
    ids=["no-database", "no-redis", "short-secret-key"],
)
def test_missing_or_bad_settings_stop_the_render_with_a_message(values, message):
    with pytest.raises(HelmRenderError) as refused:
        render(values)
    assert message in str(refused.value)
