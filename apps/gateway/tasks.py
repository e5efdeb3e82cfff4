from celery import shared_task

from apps.gateway import snapshot, traffic, usage


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


@shared_task(name="gateway.flush_usage")
def flush_usage_task() -> int:
    """Every 10 s (beat): the gateways' per-minute usage into the database (usage.py)."""
    return usage.flush_usage()


@shared_task(name="gateway.account_energy")
def account_energy_task() -> int:
    """Every 60 s (beat): each deployment's GPU-seconds and energy per minute (usage.py)."""
    return usage.account_energy()
