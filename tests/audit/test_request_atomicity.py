"""A mutating request's change and its audit event commit together or not at all."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, connection

from apps.audit.models import AuditEvent
from apps.inventory.models import Cluster


def refuse_audit_events() -> None:
    """Make the database itself refuse every new event: a real failure of the
    write that comes after the view's own."""
    with connection.cursor() as cursor:
        cursor.execute(
            "ALTER TABLE audit_auditevent ADD CONSTRAINT refuse_every_event CHECK (false) NOT VALID"
        )


def test_a_change_whose_audit_event_fails_to_be_written_is_not_made(admin_api):
    refuse_audit_events()
    with pytest.raises(IntegrityError):
        admin_api.post("/api/v1/clusters/", {"name": "half-done"}, format="json")
    assert not Cluster.objects.filter(name="half-done").exists()
    assert not AuditEvent.objects.filter(changes__path="/api/v1/clusters/").exists()


def test_a_change_and_its_event_are_both_written_when_nothing_fails(admin_api):
    answer = admin_api.post("/api/v1/clusters/", {"name": "whole"}, format="json")
    assert answer.status_code == 201
    event = AuditEvent.objects.get(changes__path="/api/v1/clusters/")
    assert event.target_id == str(Cluster.objects.get(name="whole").pk)
