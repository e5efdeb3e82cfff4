"""/metrics follows Prometheus's conventions (promtool is the judge), offers dcgm-exporter's
names, and the shipped Grafana dashboard and Prometheus rules query only what it exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from apps.accounts.tokens import create_api_token
from apps.alerts.models import Alert
from apps.deployments.models import Deployment, Worker
from apps.gateway import traffic
from apps.gateway.models import Route
from apps.inventory.models import GPU, Node
from apps.telemetry import live
from tests.deployments.conftest import ready_version
from tests.telemetry.conftest import gpu_sample, sample

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/hangar-overview.json"
RULES = ROOT / "deploy/prometheus/hangar-rules.yml"
SCRAPE = ROOT / "deploy/prometheus/prometheus.yml"
PROMTOOL = shutil.which("promtool")
WINDOW = {
    "requests_per_s": 3.5,
    "http_5xx_rate": 0.01,
    "http_4xx_rate": 0.02,
    "latency_p50_ms": 40.0,
    "latency_p95_ms": 90.0,
    "latency_p99_ms": 120.0,
    "ttft_p50_ms": 10.0,
    "ttft_p99_ms": 30.0,
    "tokens_per_s": 80.0,
    "in_flight": 2,
}


@pytest.fixture
def populated(cluster):
    """One node with two GPUs and a worker reporting latency, a firing alert, and
    gateway numbers for a deployment and a route: every family has a series."""
    node = Node.objects.create(cluster=cluster, hostname="gpu-01", state="online")
    for index in (0, 1):
        GPU.objects.create(
            node=node, index=index, uuid=f"GPU-test-{index}", name="NVIDIA H200",
            pci_bus_id=f"00000000:1{index}:00.0", memory_total=80_000_000_000,
        )  # fmt: skip
    version = ready_version()
    deployment = Deployment.objects.create(
        name="chat", cluster=cluster, model_version=version, engine="reference", port=1
    )
    worker = Worker.objects.create(
        deployment=deployment, node=node, model_version=version, slot=0, port=9000,
        state="crashloop", availability=99.5,
    )  # fmt: skip
    payload = sample(1, [gpu_sample(0, temperature=77, fan=30), gpu_sample(1, ecc_errors=2)])
    payload["workers"] = [
        {"worker_id": worker.pk, "p50_ms": 20.0, "p95_ms": 50.0, "p99_ms": 250.0,
         "rps": 4.0, "error_rate": 0.0, "source": "engine"}
    ]  # fmt: skip
    live.client().set(live.latest_key(node.pk), json.dumps(payload))
    Route.objects.create(name="chat")
    Alert.objects.create(
        rule_name="hot GPU", series="gpu.0.temperature", node=node, cluster=cluster,
        severity="critical", state="firing", value=91, comparison=">", threshold=85,
        started_at="2026-12-01T00:00:00Z",
    )  # fmt: skip
    traffic.client().set(
        traffic.CURRENT_KEY,
        json.dumps(
            {
                "at": time.time(),
                "window_s": 5,
                "deployments": {str(deployment.pk): WINDOW},
                "routes": {"chat": WINDOW},
            }
        ),
    )
    return {"node": node, "worker": worker, "deployment": deployment}


def scrape(admin_api, query: str = "") -> str:
    response = admin_api.get("/metrics" + query)
    assert response.status_code == 200, response.content
    return response.content.decode()


def families(text: str) -> dict[str, str]:
    """{family name: TYPE} from the exposition."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def promtool_check(text: str) -> subprocess.CompletedProcess:
    assert PROMTOOL, "promtool is needed: apt-get install prometheus (.ci/run does)"
    return subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )


def test_promtool_finds_nothing_to_complain_about(admin_api, populated):
    text = scrape(admin_api)
    checked = promtool_check(text)
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")
    helped = set(re.findall(r"^# HELP (\S+) ", text, re.M))
    assert helped == set(families(text))  # every family has its HELP


@pytest.mark.parametrize("names", ["dcgm", "both"])
def test_with_dcgm_names_promtool_minds_only_dcgm_exporters_own_modelName_label(
    admin_api, populated, names
):
    text = scrape(admin_api, f"?names={names}")
    checked = promtool_check(text)
    complaints = (checked.stdout + checked.stderr).splitlines()
    dcgm = {name for name in families(text) if name.startswith("DCGM_FI_")}
    assert len(dcgm) == 7
    assert set(complaints) == {  # once per series: both GPUs
        f"{name} label names should be written in 'snake_case' not 'camelCase'" for name in dcgm
    }
    assert set(re.findall(r"^# HELP (\S+) ", text, re.M)) == set(families(text))


def test_values_are_in_base_units(admin_api, populated):
    text = scrape(admin_api)
    gpu0 = 'node="gpu-01",gpu="0",uuid="GPU-test-0"'
    assert f"hangar_gpu_temperature_celsius{{{gpu0}}} 77\n" in text
    assert f"hangar_gpu_memory_used_bytes{{{gpu0}}} 1000000000\n" in text
    assert f"hangar_gpu_power_draw_watts{{{gpu0}}} 200\n" in text
    assert f"hangar_gpu_sm_clock_hertz{{{gpu0}}} 1500000000\n" in text
    assert f"hangar_gpu_utilization_ratio{{{gpu0}}} 0.5\n" in text
    assert f"hangar_gpu_fan_speed_ratio{{{gpu0}}} 0.3\n" in text
    assert 'hangar_gpu_ecc_errors_total{node="gpu-01",gpu="1",uuid="GPU-test-1"} 2\n' in text
    assert families(text)["hangar_gpu_ecc_errors_total"] == "counter"
    worker = populated["worker"]
    labels = (
        f'node="gpu-01",worker="{worker.pk}",deployment="chat",'
        f'deployment_id="{worker.deployment_id}"'
    )
    assert f"hangar_worker_latency_p99_seconds{{{labels}}} 0.25\n" in text
    assert f"hangar_worker_availability_ratio{{{labels}}} 0.995\n" in text
    assert f'hangar_worker_state{{{labels},state="crashloop"}} 1\n' in text
    assert 'hangar_route_latency_p99_seconds{route="chat"} 0.12\n' in text
    # The unit-less names of before are gone (docs/metrics.md lists the renames).
    assert "hangar_gpu_memory_used{" not in text and "hangar_gpu_temperature{" not in text


def test_dcgm_names_labels_and_units_follow_dcgm_exporter(admin_api, populated):
    text = scrape(admin_api, "?names=dcgm")
    labels = (
        'gpu="0",UUID="GPU-test-0",pci_bus_id="00000000:10:00.0",device="nvidia0",'
        'modelName="NVIDIA H200",Hostname="gpu-01",hostname="gpu-01"'
    )
    assert f"DCGM_FI_DEV_GPU_TEMP{{{labels}}} 77\n" in text
    assert f"DCGM_FI_DEV_GPU_UTIL{{{labels}}} 50\n" in text  # percent, as DCGM has it
    assert f"DCGM_FI_DEV_FB_USED{{{labels}}} {1_000_000_000 / 2**20:.10g}\n" in text  # MiB
    assert f"DCGM_FI_DEV_FB_FREE{{{labels}}} {79_000_000_000 / 2**20:.10g}\n" in text
    assert f"DCGM_FI_DEV_POWER_USAGE{{{labels}}} 200\n" in text
    assert f"DCGM_FI_DEV_SM_CLOCK{{{labels}}} 1500\n" in text  # MHz
    assert "# HELP DCGM_FI_DEV_GPU_TEMP GPU temperature (in C).\n" in text
    assert "hangar_gpu_" not in text
    assert "hangar_node_up{" in text  # node, host, worker and gateway families stay


def test_the_setting_picks_the_names_and_a_bad_choice_is_a_clear_400(
    admin_api, populated, settings
):
    settings.METRICS_GPU_NAMES = "dcgm"
    assert "DCGM_FI_DEV_GPU_TEMP{" in scrape(admin_api)
    settings.METRICS_GPU_NAMES = "both"
    both = scrape(admin_api)
    assert "DCGM_FI_DEV_GPU_TEMP{" in both and "hangar_gpu_temperature_celsius{" in both
    bad = admin_api.get("/metrics?names=nvidia")
    assert bad.status_code == 400
    assert bad.content.decode() == "names must be one of: hangar, dcgm, both."


def test_a_cluster_viewer_sees_no_series_of_other_clusters(
    client, make_user, populated, other_cluster
):
    from apps.accounts.models import RoleBinding

    user = make_user("far-viewer")
    RoleBinding.objects.create(user=user, role="viewer", cluster=other_cluster)
    _token, secret = create_api_token(user, "prometheus", 30)
    text = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {secret}").content.decode()
    assert "gpu-01" not in text and 'deployment="chat"' not in text
    assert promtool_check(text).returncode == 0  # families without series are still valid


# --- the shipped dashboard, rules and scrape config ------------------------------------

# PromQL words that look like metric names but are not.
PROMQL_WORDS = {
    "sum", "count", "avg", "min", "max", "by", "without", "on", "ignoring", "and", "or",
    "unless", "rate", "irate", "increase", "histogram_quantile", "label_values", "topk",
    "bottomk", "group_left", "group_right", "bool", "offset", "time", "vector", "abs",
    "clamp_min", "clamp_max", "ALERTS", "humanizePercentage",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers outside label matchers,
    strings, grouping clauses and range brackets."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # label lists
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    names = set(re.findall(r"\b[A-Za-z_:][A-Za-z0-9_:]*\b", expr))
    return {n for n in names if n not in PROMQL_WORDS and not n.startswith("$")}


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            queries.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", query))
    return queries


def rule_queries() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_the_dashboard_and_the_rules_query_only_metrics_that_are_exported(admin_api, populated):
    exported = set(families(scrape(admin_api)))
    queried = {name for q in dashboard_queries() + rule_queries() for name in metric_names(q)}
    assert queried, "the parser found no metric names at all"
    assert queried - exported == set()
    # What the issue asks the dashboard to show is there.
    dashboard_names = {name for q in dashboard_queries() for name in metric_names(q)}
    for wanted in (
        "hangar_gpu_temperature_celsius", "hangar_gpu_utilization_ratio",
        "hangar_gpu_memory_used_bytes", "hangar_gpu_power_draw_watts",
        "hangar_worker_latency_p99_seconds", "hangar_route_requests_per_second",
        "hangar_route_http_5xx_ratio", "hangar_route_latency_p99_seconds",
    ):  # fmt: skip
        assert wanted in dashboard_names


def test_the_metric_name_parser_sees_through_promql():
    assert metric_names(
        'sum by (node) (rate(a_total{x="b_c"}[5m])) / on (node) b_bytes or ALERTS{alertname="z"}'
    ) == {"a_total", "b_bytes"}


def test_the_dashboard_is_a_grafana_10_dashboard_over_a_chosen_prometheus():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 38  # Grafana 10.0
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["targets"] and panel["fieldConfig"]["defaults"]["unit"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_promtool_accepts_the_rules_and_the_example_scrape_config(tmp_path):
    assert PROMTOOL, "promtool is needed: apt-get install prometheus (.ci/run does)"
    rules = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 11 rules found" in rules.stdout  # one per shipped Hangar rule
    # The example names its token file where Prometheus keeps it; check it here with one.
    token = tmp_path / "hangar.token"
    token.write_text("hgr_example")
    config = SCRAPE.read_text().replace("/etc/prometheus/hangar.token", str(token))
    (tmp_path / "prometheus.yml").write_text(config)
    shutil.copy(RULES, tmp_path / "hangar-rules.yml")
    checked = subprocess.run(
        [PROMTOOL, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_rules_cover_every_shipped_hangar_rule():
    from apps.alerts.defaults import DEFAULT_RULES

    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    covered = [rule["annotations"]["hangar_rule"] for rule in rules]
    assert sorted(covered) == sorted(r["name"] for r in DEFAULT_RULES)
    severities = {r["name"]: r["severity"] for r in DEFAULT_RULES}
    for rule in rules:
        assert rule["labels"]["severity"] == severities[rule["annotations"]["hangar_rule"]]


def test_gpu_health_is_exported_from_the_last_health_read(admin_api, populated):
    gpu = GPU.objects.get(node=populated["node"], index=1)
    gpu.health, gpu.cordoned = "degraded", True
    gpu.health_reading = {
        "ecc_aggregate_corrected": 12, "ecc_aggregate_uncorrected": 0,
        "pcie_replay_counter": 3, "pcie_link_width": 8, "pcie_link_width_max": 16,
        "remapped_rows_pending": False, "retired_pages_double_bit": None,
    }  # fmt: skip
    gpu.save()
    text = scrape(admin_api)
    one = 'node="gpu-01",gpu="1",uuid="GPU-test-1"'
    zero = 'node="gpu-01",gpu="0",uuid="GPU-test-0"'
    assert f'hangar_gpu_health{{{one},state="degraded"}} 1\n' in text
    assert f'hangar_gpu_health{{{zero},state="unknown"}} 1\n' in text
    assert f"hangar_gpu_cordoned{{{one}}} 1\n" in text
    assert f"hangar_gpu_cordoned{{{zero}}} 0\n" in text
    assert f"hangar_gpu_ecc_corrected_total{{{one}}} 12\n" in text
    assert f"hangar_gpu_pcie_link_width{{{one}}} 8\n" in text
    assert f"hangar_gpu_pcie_link_width_max{{{one}}} 16\n" in text
    assert f"hangar_gpu_remapped_rows_pending{{{one}}} 0\n" in text
    # A GPU with no health read has no counter series (never a made-up zero).
    assert f"hangar_gpu_ecc_corrected_total{{{zero}}}" not in text
    assert families(text)["hangar_gpu_pcie_replays_total"] == "counter"
    assert promtool_check(text).returncode == 0
