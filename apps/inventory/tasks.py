import time

from celery import shared_task

from apps.inventory.services import mark_offline_nodes
from apps.telemetry.live import last_seen_all


@shared_task(name="inventory.mark_offline_nodes")
def mark_offline_nodes_task() -> list[int]:
    return mark_offline_nodes(last_seen_all(), time.time())
