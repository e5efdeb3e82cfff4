from celery import shared_task

from apps.gateway import snapshot, traffic


@shared_task(name="gateway.publish_snapshot")
def publish_snapshot_task() -> int:
    """Every 5 s (beat): the snapshot again, so a restarted Redis is refilled and a
    change whose publication failed (Redis away at that moment) reaches the gateways."""
    return snapshot.publish()


@shared_task(name="gateway.judge_traffic")
def judge_traffic_task() -> dict:
    """Every 5 s (beat): the gateways' request counters into windowed numbers, for
    the alert rules, the deployment page and /metrics (apps/gateway/traffic.py)."""
    return traffic.judge_traffic()
