import time

from celery import shared_task

from apps.inventory import broker
from apps.inventory.services import copy_last_seen, mark_offline_nodes
from apps.telemetry.live import last_seen_all


@shared_task(name="inventory.mark_offline_nodes")
def mark_offline_nodes_task() -> list[int]:
    """Every 5 s (beat): Node.last_seen from the live times, then the offline sweep."""
    last_seen = last_seen_all()
    copy_last_seen(last_seen)
    return mark_offline_nodes(last_seen, time.time())


@shared_task(name="inventory.sync_broker_identities")
def sync_broker_identities_task() -> dict[str, int]:
    """Every 5 s (beat): each node that may connect has its Redis user, no other has one.

    Brings identities back after a Redis restart (the embedded Redis keeps nothing)
    and removes any that a failed revocation left behind.
    """
    return broker.sync_identities()
