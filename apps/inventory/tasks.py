import logging
import time

from celery import shared_task

from apps.inventory import broker
from apps.inventory.services import copy_last_seen, mark_offline_nodes
from apps.telemetry.listening import listening_since
from apps.telemetry.live import last_seen_all

log = logging.getLogger(__name__)


@shared_task(name="inventory.mark_offline_nodes")
def mark_offline_nodes_task() -> list[int]:
    """Every 5 s (beat): Node.last_seen from the live times, then the offline sweep."""
    last_seen = last_seen_all()
    copy_last_seen(last_seen)
    now = time.time()
    since = listening_since()
    if since is None:
        log.warning("no web process is listening to the agents: nodes are not judged")
        return []
    return mark_offline_nodes(last_seen, now, since)


@shared_task(name="inventory.sync_broker_identities")
def sync_broker_identities_task() -> dict[str, int]:
    """Every 5 s (beat): each node that may connect has its Redis user, no other has one.

    Brings identities back after a Redis restart (the embedded Redis keeps nothing)
    and removes any that a failed revocation left behind.
    """
    return broker.sync_identities()
