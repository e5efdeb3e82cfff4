import time

from celery import shared_task

from apps.inventory.services import copy_last_seen, mark_offline_nodes
from apps.telemetry.live import last_seen_all


@shared_task(name="inventory.mark_offline_nodes")
def mark_offline_nodes_task() -> list[int]:
    """Every 5 s (beat): Node.last_seen from the live times, then the offline sweep."""
    last_seen = last_seen_all()
    copy_last_seen(last_seen)
    return mark_offline_nodes(last_seen, time.time())
