"""The hash chain: `audit verify` passes on an intact log and names the first broken link."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from apps.audit import recorder
from apps.audit.chain import GENESIS, REDACTED, verify_database
from apps.audit.models import AuditEvent, AuditImmutable

pytestmark = pytest.mark.django_db


def _events(count: int) -> list[AuditEvent]:
    return [recorder.record("test.event", changes={"n": n}) for n in range(count)]


def _verify(*args: str) -> str:
    from io import StringIO

    out = StringIO()
    call_command("audit", "verify", *args, stdout=out)
    return out.getvalue()


def _sql(statement: str, params: list) -> None:
    table = connection.ops.quote_name(AuditEvent._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(statement.format(table=table), params)


def test_verify_passes_on_an_intact_chain():
    events = _events(5)

    assert "OK: 5 events in the audit log, chain intact." in _verify()
    assert events[0].prev_hash == GENESIS
    assert [e.prev_hash for e in events[1:]] == [e.hash for e in events[:-1]]
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]


def test_verify_passes_on_an_empty_log():
    assert "OK: 0 events" in _verify()


def test_editing_a_row_with_sql_breaks_the_chain_at_that_event():
    events = _events(5)
    _sql("UPDATE {table} SET actor_name = %s WHERE seq = %s", ["mallory", events[2].seq])

    with pytest.raises(CommandError, match=r"BROKEN after 2 good events.*event #3 was altered"):
        _verify()


def test_editing_the_changes_json_breaks_the_chain():
    events = _events(3)
    _sql("UPDATE {table} SET changes = '{{\"n\": 99}}' WHERE seq = %s", [events[1].seq])

    with pytest.raises(CommandError, match=r"event #2 was altered"):
        _verify()


def test_rehashing_an_edited_row_still_breaks_the_link_to_the_next_one():
    from apps.audit.chain import event_hash

    events = _events(4)
    forged = {
        name: getattr(events[1], name)
        for name in (
            "seq",
            "time",
            "actor_type",
            "actor_id",
            "source_address",
            "request_id",
            "action",
            "target_type",
            "target_id",
            "target_repr",
            "changes",
            "outcome",
            "prev_hash",
        )
    }
    forged["actor_name"] = "mallory"
    _sql(
        "UPDATE {table} SET actor_name = %s, hash = %s WHERE seq = %s",
        ["mallory", event_hash(forged), events[1].seq],
    )  # fmt: skip

    with pytest.raises(CommandError, match=r"event #3 does not link to the event before it"):
        _verify()


def test_deleting_a_row_with_sql_breaks_the_chain():
    events = _events(5)
    _sql("DELETE FROM {table} WHERE seq = %s", [events[1].seq])

    with pytest.raises(CommandError, match=r"event #2 is missing \(found #3 next\)"):
        _verify()


def test_deleting_the_newest_rows_is_noticed_through_the_chain_head():
    events = _events(4)
    _sql("DELETE FROM {table} WHERE seq >= %s", [events[2].seq])

    count, problem = verify_database()
    assert count == 2
    assert problem == "the newest events after #2 are missing"


def test_the_orm_refuses_to_change_or_delete_events():
    event = _events(1)[0]

    event.actor_name = "mallory"
    with pytest.raises(AuditImmutable):
        event.save()
    with pytest.raises(AuditImmutable):
        event.delete()
    with pytest.raises(AuditImmutable):
        AuditEvent.objects.filter(pk=event.pk).update(actor_name="mallory")
    with pytest.raises(AuditImmutable):
        AuditEvent.objects.filter(pk=event.pk).delete()
    with pytest.raises(AuditImmutable):
        AuditEvent.objects.all().delete()
    assert AuditEvent.objects.get().actor_name == "system"
    assert "chain intact" in _verify()


def test_secrets_are_redacted_at_any_depth_before_hashing():
    event = recorder.record(
        "test.secrets",
        changes={
            "password": "hunter2hunter2",
            "nested": {"api_token": "hgr_abc_def", "list": [{"client_secret": "s3"}]},
            "bind_password": "bind-secret",
            "name": "kept",
        },
    )

    stored = AuditEvent.objects.get(pk=event.pk).changes
    assert stored["password"] == REDACTED
    assert stored["nested"]["api_token"] == REDACTED
    assert stored["nested"]["list"][0]["client_secret"] == REDACTED
    assert stored["bind_password"] == REDACTED
    assert stored["name"] == "kept"
    assert "chain intact" in _verify()


def test_a_nul_byte_is_stored_escaped_and_the_chain_still_verifies():
    recorder.record("test.nul", actor_name="a\x00b", changes={"k\x00": "v\x00"})

    assert AuditEvent.objects.get().actor_name == "a\\x00b"
    assert "chain intact" in _verify()
