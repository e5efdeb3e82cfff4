"""Inventory's signals, as telemetry acts on them: inventory sits below telemetry
in the import map and does not call it."""

from django.db import transaction
from django.dispatch import receiver

from apps.inventory.signals import node_credential_revoked, node_edited, node_state_changed
from apps.telemetry.live import disconnect_agent, publish_node_state, tell_agent_node_changed


@receiver(node_state_changed, dispatch_uid="telemetry.push-node-state")
def push_node_state(sender, node, **kwargs) -> None:
    """Browsers watching the node's cluster see the new state at once."""
    publish_node_state(node)


@receiver(node_credential_revoked, dispatch_uid="telemetry.close-agent-socket")
def close_agent_socket(sender, node, **kwargs) -> None:
    """A revoked agent's open socket closes now, not at its next reconnect: once the
    revocation is committed (retire_node revokes inside its transaction), so the
    agent cannot reconnect in between with a credential that still works."""
    transaction.on_commit(lambda: disconnect_agent(node.pk))


@receiver(node_edited, dispatch_uid="telemetry.agent-node-changed")
def reload_agent_node(sender, node, **kwargs) -> None:
    """The node's agent socket re-reads its node, so it never writes back old fields."""
    tell_agent_node_changed(node.pk)
