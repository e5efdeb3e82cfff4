"""Facts from an agent never undo what people did to the node meanwhile.

The agent's socket keeps the Node it loaded at connect, and collect_facts waits
for the agent with the Node it loaded before asking: both apply facts with an
old copy of the row. Here the old copy is made explicitly, then people act.
"""

from __future__ import annotations

import pytest

from apps.inventory.models import Node, NodeState
from apps.inventory.services import (
    apply_facts,
    create_enrollment_token,
    edit_node,
    enroll_node,
    move_node,
    revoke_node_credential,
)
from apps.telemetry.ingest import NodeIngest
from tests.telemetry.conftest import FACTS


@pytest.fixture
def enrolled(cluster):
    _token, secret = create_enrollment_token(cluster, None)
    return enroll_node(secret, "gpu-test", FACTS, None)


def act_on_the_node_meanwhile(node: Node, other_cluster) -> None:
    move_node(Node.objects.get(pk=node.pk), NodeState.DRAINING, "drained by ann")
    edit_node(Node.objects.get(pk=node.pk), {"cluster": other_cluster, "labels": {"rack": "r9"}})
    revoke_node_credential(Node.objects.get(pk=node.pk))


def assert_people_s_changes_stand(node: Node, other_cluster) -> None:
    row = Node.objects.get(pk=node.pk)
    assert (row.state, row.state_reason) == (NodeState.DRAINING, "drained by ann")
    assert (row.cluster_id, row.labels) == (other_cluster.pk, {"rack": "r9"})
    assert row.credential_revoked_at is not None
    assert (row.kernel, row.cpu_count) == ("6.2.0", 8)  # and the facts were stored


def newer_facts() -> dict:
    return {**FACTS, "kernel": "6.2.0", "cpu_count": 8}


def test_facts_collected_with_an_old_node_keep_a_drain_a_move_and_a_revocation(
    enrolled, other_cluster
):
    node, _credential = enrolled
    loaded_before = Node.objects.get(pk=node.pk)
    act_on_the_node_meanwhile(node, other_cluster)

    apply_facts(loaded_before, newer_facts())

    assert_people_s_changes_stand(node, other_cluster)


def test_a_hello_on_a_socket_opened_before_keeps_a_drain_a_move_and_a_revocation(
    enrolled, other_cluster
):
    node, _credential = enrolled
    ingest = NodeIngest(Node.objects.get(pk=node.pk))
    act_on_the_node_meanwhile(node, other_cluster)

    ingest.hello(newer_facts(), "2.0")

    assert_people_s_changes_stand(node, other_cluster)
    assert Node.objects.get(pk=node.pk).agent_version == "2.0"


def test_a_hello_after_an_undrain_brings_the_node_online(enrolled):
    """The socket loaded the node while it was draining; the decision uses the row."""
    node, _credential = enrolled
    move_node(Node.objects.get(pk=node.pk), NodeState.DRAINING, "drained by ann")
    ingest = NodeIngest(Node.objects.get(pk=node.pk))
    move_node(Node.objects.get(pk=node.pk), NodeState.OFFLINE, "undrained")

    ingest.hello(FACTS, "1")

    assert Node.objects.get(pk=node.pk).state == NodeState.ONLINE
