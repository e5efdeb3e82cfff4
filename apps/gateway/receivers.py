"""What changes the gateway's snapshot: routes, keys, and the workers behind routes."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.dispatch import receiver

from apps.deployments.models import Deployment, Worker
from apps.deployments.signals import worker_leaving, worker_state_changed
from apps.gateway import snapshot
from apps.gateway.models import ConsumerKey, Limit, Project, Route, RouteTarget, ServiceAccount
from apps.inventory.models import Node
from apps.inventory.signals import node_state_changed

# Saves of these fields (or whole-row saves) can change what a gateway may route to.
# A worker's state is not here: every report saves it, and only a change matters
# (worker_state_changed below), or the ingest thread would rebuild the snapshot
# for every progress line.
RELEVANT_FIELDS = {
    Worker: {"desired_state", "port", "node", "engine_secret"},
    Deployment: {"desired_state"},
    Node: {"state", "worker_host", "addresses"},
    get_user_model(): {"is_active"},
}


def _changed(sender, update_fields) -> bool:
    fields = RELEVANT_FIELDS.get(sender)
    return fields is None or update_fields is None or bool(fields & set(update_fields))


@receiver(post_save)
@receiver(post_delete)
def republish(sender, update_fields=None, **kwargs) -> None:
    gateway_models = (Route, RouteTarget, ConsumerKey, ServiceAccount, Project, Limit)
    if sender in gateway_models or (sender in RELEVANT_FIELDS and _changed(sender, update_fields)):
        snapshot.publish_on_commit()


@receiver(m2m_changed, sender=ConsumerKey.routes.through)
def republish_key_routes(sender, **kwargs) -> None:
    snapshot.publish_on_commit()


@receiver(node_state_changed, dispatch_uid="gateway.node-state")
def republish_node_state(sender, **kwargs) -> None:
    """A drained, offline or retired node's workers take no new requests."""
    snapshot.publish_on_commit()


@receiver(worker_leaving, dispatch_uid="gateway.worker-leaving")
def stop_routing_to(sender, worker, **kwargs) -> None:
    """Called after commit, before the stop goes out: publish now, synchronously."""
    try:
        snapshot.publish()
    except Exception as exc:
        snapshot.log.warning("gateway snapshot not published before a stop: %s", exc)


@receiver(worker_state_changed, dispatch_uid="gateway.worker-state")
def republish_worker_state(sender, **kwargs) -> None:
    """A worker became ready (routable) or stopped being so."""
    snapshot.publish_on_commit()
