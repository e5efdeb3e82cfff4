"""Retiring a node: one service (inventory.services.retire_node) for the API and the
page; a node already retired is refused before anything changes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.inventory.models import Node, NodeState
from tests.inventory.test_nodes_api import make_node

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_page(admin_user) -> Client:
    client = Client()
    client.force_login(admin_user)
    return client


@pytest.fixture
def retired_node(cluster) -> Node:
    revoked = timezone.now() - timedelta(days=3)
    return make_node(
        cluster,
        "gpu09",
        state=NodeState.RETIRED,
        credential_hash="x" * 64,
        credential_revoked_at=revoked,
    )


def events_of(node: Node) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(target_id=str(node.pk)).order_by("seq"))


def test_retiring_a_retired_node_over_the_api_changes_nothing_and_says_why(admin_api, retired_node):
    revoked = retired_node.credential_revoked_at

    response = admin_api.post(f"/api/v1/nodes/{retired_node.pk}/retire/")

    assert response.status_code == 400
    assert response.json()["detail"] == "gpu09 is retired."
    retired_node.refresh_from_db()
    assert retired_node.credential_revoked_at == revoked
    assert retired_node.state == NodeState.RETIRED
    [event] = AuditEvent.objects.all()  # the refused request's own event, nothing else
    assert event.outcome == "failed"
    assert "agent_access" not in event.changes and "state" not in event.changes


def test_retiring_a_retired_node_on_its_page_changes_nothing_and_says_why(admin_page, retired_node):
    revoked = retired_node.credential_revoked_at

    response = admin_page.post(f"/nodes/{retired_node.pk}/retire/", follow=True)

    assert [str(m) for m in response.context["messages"]] == ["gpu09 is retired."]
    retired_node.refresh_from_db()
    assert retired_node.credential_revoked_at == revoked
    [event] = AuditEvent.objects.all()
    assert event.outcome == "failed"
    assert "agent_access" not in event.changes and "state" not in event.changes


def test_the_page_and_the_api_retire_a_node_alike(admin_page, admin_api, cluster):
    by_page = make_node(cluster, "page", state=NodeState.DRAINING, credential_hash="p" * 64)
    by_api = make_node(cluster, "api", state=NodeState.DRAINING, credential_hash="a" * 64)

    assert admin_page.post(f"/nodes/{by_page.pk}/retire/").status_code == 302
    assert admin_api.post(f"/api/v1/nodes/{by_api.pk}/retire/").status_code == 200

    recorded = []
    for node in (by_page, by_api):
        node.refresh_from_db()
        assert node.state == NodeState.RETIRED and node.credential_revoked_at is not None
        [event] = events_of(node)
        assert (event.action, event.outcome) == ("inventory.enroll", "allowed")
        recorded.append({k: event.changes[k] for k in ("agent_access", "state")})
    assert (
        recorded[0]
        == recorded[1]
        == {
            "agent_access": "revoked",
            "state": ["draining", "retired"],
        }
    )
