"""Per-minute rollups, the history API and the Prometheus exposition."""

import time

from apps.accounts.tokens import create_api_token
from apps.inventory.models import Node
from apps.telemetry import live
from apps.telemetry.ingest import NodeIngest
from apps.telemetry.models import NodeMetricMinute
from tests.telemetry.conftest import gpu_sample, sample


def test_samples_roll_up_into_minute_min_mean_max(cluster):
    node = Node.objects.create(cluster=cluster, hostname="r1")
    ingest = NodeIngest(node)
    minute = (int(time.time()) // 60 - 5) * 60
    for seq, temp in enumerate((40, 50, 60), start=1):
        ingest.accept_sample(sample(seq, [gpu_sample(0, temperature=temp)], ts=minute + seq))
    ingest.accept_sample(sample(5, [gpu_sample(0, temperature=70)], ts=minute + 61))
    assert ingest.lost == 1  # seq 4 never arrived: counted, not silent
    assert ingest.flush_rollups(include_current=True) == 2
    first, second = NodeMetricMinute.objects.filter(node=node).order_by("minute")
    assert first.samples == 3 and first.series["gpu.0.temperature"] == [40.0, 50.0, 60.0]
    assert second.series["gpu.0.temperature"] == [70.0, 70.0, 70.0]
    assert first.series["host.cpu_percent"] == [10.0, 10.0, 10.0]


def test_history_api_serves_points_and_refuses_bad_queries(admin_api, cluster):
    node = Node.objects.create(cluster=cluster, hostname="r2")
    ingest = NodeIngest(node)
    base = (int(time.time()) // 60 - 10) * 60
    for i in range(5):
        ingest.accept_sample(sample(i + 1, [gpu_sample(0, temperature=30 + i)], ts=base + 60 * i))
    ingest.flush_rollups(include_current=True)
    body = admin_api.get(f"/api/v1/nodes/{node.pk}/metrics/?metric=gpu.0.temperature").json()
    assert [p["mean"] for p in body["points"]] == [30.0, 31.0, 32.0, 33.0, 34.0]
    assert body["resolution"] == "1m"
    bad = admin_api.get(f"/api/v1/nodes/{node.pk}/metrics/?metric=gpu.0.rm -rf")
    assert bad.status_code == 400 and "metric" in bad.json()["fields"]
    bad_time = admin_api.get(f"/api/v1/nodes/{node.pk}/metrics/?metric=host.cpu_percent&from=x")
    assert bad_time.status_code == 400


def test_prometheus_exports_latest_gauges_to_a_token_holder_only(client, make_user, cluster):
    node = Node.objects.create(cluster=cluster, hostname="prom-1", state="online")
    live.client().set(
        live.latest_key(node.pk),
        __import__("json").dumps(sample(1, [gpu_sample(0, temperature=77)])),
    )
    assert client.get("/metrics").status_code in (401, 403)
    _token, secret = create_api_token(make_user("prom", "viewer"), "prometheus", 30)
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 200
    text = response.content.decode()
    assert 'hangar_gpu_temperature_celsius{node="prom-1",gpu="0",uuid="GPU-test-0"} 77' in text
    assert 'hangar_node_up{node="prom-1",cluster="campus-a",state="online"} 1' in text


def test_merged_sweeps_are_not_counted_as_lost(cluster):
    node = Node.objects.create(cluster=cluster, hostname="r3")
    ingest = NodeIngest(node)
    ingest.accept_sample(sample(1))
    merged = sample(10)
    merged["coalesced"] = 8  # sweeps 2..9 were merged into this one while offline
    ingest.accept_sample(merged)
    assert ingest.lost == 0
    ingest.accept_sample(sample(13))
    assert ingest.lost == 2
