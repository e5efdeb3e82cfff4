"""The gateways' request counters in the console: windows, alert series, page, /metrics.

Real `hangar-gateway` processes and reference engines where requests are made;
elsewhere the counters are written to Redis by the gateway's own export code, in
the gateway's own key format, as a process would.
"""

from __future__ import annotations

import json
import time

import pytest
import redis
from django.conf import settings
from django.test import Client

from apps.alerts.defaults import DEFAULT_RULES, GATEWAY_RULES, install_default_rules
from apps.alerts.models import Alert, AlertRule
from apps.alerts.services import rules as rule_cache
from apps.deployments.models import Deployment, Worker, WorkerState
from apps.gateway import traffic
from apps.gateway.models import ConsumerKey, Route, RouteTarget
from apps.gateway.proxy.metrics import BUCKETS, Metrics, export
from apps.gateway.proxy.state import REPORTERS_KEY, STATS_KEY
from apps.inventory.models import Node
from tests.alerts.conftest import make_rule
from tests.deployments.conftest import ready_version
from tests.gateway.conftest import http, published
from tests.support import processes

CHAT_BODY = {"model": "chat", "messages": [{"role": "user", "content": "hello there"}]}


@pytest.fixture(autouse=True)
def _only_the_tests_rules(transactional_db):
    AlertRule.objects.filter(builtin=True).delete()
    rule_cache.clear()
    yield
    rule_cache.clear()


@pytest.fixture
def store():
    return redis.Redis.from_url(settings.REDIS_URL)


def report(store, reporter: str, metrics: Metrics, at: float) -> None:
    """What View.report writes each second (apps/gateway/proxy/state.py)."""
    body = json.dumps({"reporter": reporter, "at": at, **export(metrics)})
    store.set(STATS_KEY + reporter, body, ex=15)
    store.sadd(REPORTERS_KEY, reporter)


def dead_deployment(cluster, route_name: str, version) -> Deployment:
    """A deployment whose one ready worker points at a port nobody listens on."""
    node = Node.objects.get(hostname="gpu-gw")
    deployment = Deployment.objects.create(
        name=f"{route_name}-deployment", cluster=cluster, model_version=version,
        engine="reference", port=9000,
    )  # fmt: skip
    Worker.objects.create(
        deployment=deployment, node=node, model_version=version, slot=0,
        port=processes.free_port(), state=WorkerState.READY, engine_secret="s" * 24,
    )  # fmt: skip
    route = Route.objects.create(name=route_name)
    RouteTarget.objects.create(route=route, deployment=deployment, weight=100)
    return deployment


def total_requests(reports: dict) -> int:
    return sum(sum(e["requests"].values()) for r in reports.values() for e in r["entries"])


def test_requests_through_a_real_gateway_become_rates_percentiles_and_alert_series(
    gateway, serving, consumer_key, cluster, store
):
    chat = serving("chat")
    broken = dead_deployment(cluster, "broken", chat.model_version)
    rule = make_rule(
        name="5xx", metric="deployment.*.http_5xx_rate", threshold=0.001, for_seconds=0
    )
    key = consumer_key()
    published(gateway)
    processes.wait_for(lambda: traffic.read_reports(store), what="the gateway's first report")
    assert traffic.judge_traffic(store)["window_s"] == 0  # the baseline

    before = time.time()
    for _ in range(20):
        assert http("POST", f"{gateway.url}/v1/chat/completions", CHAT_BODY, key)[0] == 200
    for _ in range(5):
        body = {**CHAT_BODY, "model": "broken"}
        assert http("POST", f"{gateway.url}/v1/chat/completions", body, key)[0] == 502
    processes.wait_for(
        lambda: total_requests(traffic.read_reports(store)) == 25,
        what="the gateway to report 25 requests",
    )
    traffic.judge_traffic(store)

    numbers = traffic.current_numbers(store)
    window = numbers["window_s"]
    assert window > 0
    good, bad = numbers["deployments"][str(chat.pk)], numbers["deployments"][str(broken.pk)]
    assert good["requests"] == 20 and bad["requests"] == 5
    assert good["requests_per_s"] == pytest.approx(20 / window, rel=1e-3)
    assert good["http_5xx_rate"] == 0.0 and bad["http_5xx_rate"] == 1.0
    assert 0 < good["latency_p50_ms"] <= good["latency_p95_ms"] <= good["latency_p99_ms"]
    assert good["tokens_per_s"] > 0 and good["in_flight"] == 0
    assert numbers["routes"]["broken"]["http_5xx_rate"] == 1.0

    alert = Alert.objects.get(rule=rule)
    assert alert.series == f"deployment.{broken.pk}.http_5xx_rate"
    assert alert.state == Alert.State.FIRING and alert.value == 1.0
    assert alert.node is None and alert.deployment == broken and alert.cluster == cluster
    assert "5 requests" in alert.detail

    # The key's last use reached the database without the gateway touching it.
    used = ConsumerKey.objects.get().last_used_at
    assert used is not None and used.timestamp() >= before


def test_a_restarted_gateway_gives_no_negative_rate(cluster, store):
    deployment = Deployment.objects.create(
        name="d", cluster=cluster, model_version=ready_version(), engine="reference", port=9000
    )
    before = Metrics()
    for _ in range(100):
        before.request_done("chat", str(deployment.pk), 200, 0.03)
    report(store, "gw:1", before, at=1000.0)
    traffic.judge_traffic(store)
    after = Metrics()  # the same host:pid, counting from zero again
    for _ in range(4):
        after.request_done("chat", str(deployment.pk), 500, 0.03)
    report(store, "gw:1", after, at=1005.0)
    traffic.judge_traffic(store)

    got = traffic.current_numbers(store)["deployments"][str(deployment.pk)]
    assert got["requests"] == 4 and got["requests_per_s"] == pytest.approx(0.8)
    assert got["http_5xx_rate"] == 1.0


def test_two_gateways_add_up_and_percentiles_interpolate_within_a_bucket(cluster, store):
    deployment = Deployment.objects.create(
        name="d", cluster=cluster, model_version=ready_version(), engine="reference", port=9000
    )
    one, two = Metrics(), Metrics()
    report(store, "gw:1", one, at=100.0)
    report(store, "gw:2", two, at=100.0)
    traffic.judge_traffic(store)
    # 90 answers in (0.05, 0.1] s and 10 in (0.2, 0.5] s, spread over two processes.
    for metrics, fast, slow in ((one, 60, 4), (two, 30, 6)):
        for _ in range(fast):
            metrics.request_done("chat", str(deployment.pk), 200, 0.07)
        for _ in range(slow):
            metrics.request_done("chat", str(deployment.pk), 503, 0.3)
    report(store, "gw:1", one, at=110.0)
    report(store, "gw:2", two, at=110.0)
    traffic.judge_traffic(store)

    got = traffic.current_numbers(store)["deployments"][str(deployment.pk)]
    assert got["requests_per_s"] == pytest.approx(10.0)
    assert got["http_5xx_rate"] == pytest.approx(0.1)
    # rank 50 of 90 in (0.05, 0.1]: 0.05 + 0.05 * 50/90; rank 99: 9th of 10 in (0.2, 0.5].
    assert got["latency_p50_ms"] == pytest.approx(1000 * (0.05 + 0.05 * 50 / 90), abs=0.01)
    assert got["latency_p99_ms"] == pytest.approx(1000 * (0.2 + 0.3 * 9 / 10), abs=0.01)
    assert got["ttft_p99_ms"] is None  # no streams


def test_a_reporter_whose_key_expired_leaves_the_set(store):
    report(store, "gw:gone", Metrics(), at=1.0)
    store.delete(STATS_KEY + "gw:gone")
    report(store, "gw:here", Metrics(), at=1.0)
    assert set(traffic.read_reports(store)) == {"gw:here"}
    assert store.smembers(REPORTERS_KEY) == {b"gw:here"}


def test_the_quantile_of_the_overflow_bucket_is_the_highest_bound():
    counts = [0] * len(BUCKETS) + [3]
    assert traffic.quantile(0.99, list(BUCKETS), counts) == BUCKETS[-1]
    assert traffic.quantile(0.5, list(BUCKETS), [0] * (len(BUCKETS) + 1)) is None


def test_the_seed_guides_rules_ship_as_defaults():
    assert install_default_rules(AlertRule, GATEWAY_RULES) == 2
    shipped = {r.metric: r for r in AlertRule.objects.filter(builtin=True)}
    errors, latency = shipped["deployment.*.http_5xx_rate"], shipped["deployment.*.latency_p99_ms"]
    assert (errors.comparison, errors.threshold, errors.for_seconds) == (">", 0.001, 300)
    assert (latency.comparison, latency.threshold, latency.for_seconds) == (">", 200.0, 300)
    assert {"worker.*.availability"} <= {r["metric"] for r in DEFAULT_RULES}


def test_a_deployment_rule_watches_its_own_request_series(cluster, store, admin_api):
    ours = Deployment.objects.create(
        name="ours", cluster=cluster, model_version=ready_version(), engine="reference", port=1
    )
    other = Deployment.objects.create(
        name="other", cluster=cluster, model_version=ours.model_version, engine="reference", port=2
    )
    answer = admin_api.post(
        "/api/v1/alert-rules/",
        {"name": "slow ours", "metric": "deployment.*.latency_p99_ms", "scope": "deployment",
         "deployment": ours.pk, "comparison": ">", "threshold": 100.0, "severity": "warning"},
        format="json",
    )  # fmt: skip
    assert answer.status_code == 201, answer.json()
    metrics = Metrics()
    report(store, "gw:1", metrics, at=0.0)
    traffic.judge_traffic(store)
    for deployment in (ours, other):
        metrics.request_done("chat", str(deployment.pk), 200, 0.4)
    report(store, "gw:1", metrics, at=5.0)
    traffic.judge_traffic(store)
    assert [a.series for a in Alert.objects.all()] == [f"deployment.{ours.pk}.latency_p99_ms"]


def test_the_deployment_page_shows_the_requests_panel_in_both_languages(cluster, store, make_user):
    deployment = Deployment.objects.create(
        name="chat", cluster=cluster, model_version=ready_version(), engine="reference", port=1
    )
    metrics = Metrics()
    report(store, "gw:1", metrics, at=0.0)
    traffic.judge_traffic(store)
    for _ in range(99):
        metrics.request_done("chat", str(deployment.pk), 200, 0.07)
    metrics.request_done("chat", str(deployment.pk), 502, 0.07)
    report(store, "gw:1", metrics, at=10.0)
    traffic.judge_traffic(store)

    client = Client()
    client.force_login(make_user("viewer", "viewer"))
    page = client.get(f"/deployments/{deployment.pk}/").content.decode()
    assert 'id="traffic-panel"' in page and 'data-live="yes"' in page
    assert '<dd data-field="requests_per_s">10.0</dd>' in page
    assert '<dd data-field="http_5xx_rate">1.00 %</dd>' in page
    assert "Requests" in page
    chinese = client.get(
        f"/deployments/{deployment.pk}/", HTTP_ACCEPT_LANGUAGE="zh-hans"
    ).content.decode()
    assert "请求" in chinese and 'id="traffic-panel"' in chinese


def test_console_metrics_carry_each_deployments_request_numbers(cluster, store, admin_api):
    deployment = Deployment.objects.create(
        name="chat", cluster=cluster, model_version=ready_version(), engine="reference", port=1
    )
    metrics = Metrics()
    report(store, "gw:1", metrics, at=time.time() - 5)
    traffic.judge_traffic(store)
    for _ in range(4):
        metrics.request_done("chat", str(deployment.pk), 200, 0.07)
    metrics.request_done("chat", str(deployment.pk), 500, 0.07)
    report(store, "gw:1", metrics, at=time.time())
    traffic.judge_traffic(store)

    body = admin_api.get("/metrics").content.decode()
    labels = f'deployment="chat",id="{deployment.pk}",cluster="campus-a"'
    assert f"hangar_deployment_http_5xx_ratio{{{labels}}} 0.2" in body
    assert f"hangar_deployment_requests_per_second{{{labels}}} " in body
    assert f"hangar_deployment_latency_p99_seconds{{{labels}}} 0.0" in body
    assert "# TYPE hangar_deployment_in_flight gauge" in body
