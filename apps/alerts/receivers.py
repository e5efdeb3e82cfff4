"""Inventory's signals, as alerts act on them: inventory sits below alerts in the
import map and does not call it."""

from django.dispatch import receiver

from apps.alerts.services import node_state_changed as judge_node_offline
from apps.inventory.signals import node_state_changed


@receiver(node_state_changed, dispatch_uid="alerts.judge-node-offline")
def judge_node_state(sender, node, old_state: str, **kwargs) -> None:
    judge_node_offline(node, old_state)
