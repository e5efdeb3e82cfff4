from celery import shared_task

from apps.gateway import snapshot


@shared_task(name="gateway.publish_snapshot")
def publish_snapshot_task() -> int:
    """Every 5 s (beat): the snapshot again, so a restarted Redis is refilled and a
    change whose publication failed (Redis away at that moment) reaches the gateways."""
    return snapshot.publish()
