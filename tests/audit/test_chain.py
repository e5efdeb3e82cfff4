"""The hash chain: `audit verify` passes on an intact log and names the first broken link."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from apps.audit import recorder
from apps.audit.chain import GENESIS, REDACTED, SECRET_FIELDS, verify_database
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


def test_fields_that_only_mention_a_credential_are_kept_and_each_secret_is_redacted():
    kept = {
        "credential_prefix": "hgn_abcd",  # how a refused agent is identified
        "credential_revoked_at": "2026-01-31T08:00:00+00:00",
        "prefix": "hgr_1234",
        "key": "ann",  # a login lock's subject
        "keyboard_layout": "de",
        "hash_algorithm": "sha256",
    }
    secrets = {name: f"value of {name}" for name in SECRET_FIELDS}
    upper = {"PASSWORD": "shouted", "Api_Key": "mixed case"}

    event = recorder.record("test.secrets", changes={**kept, **secrets, "nested": [upper]})

    stored = AuditEvent.objects.get(pk=event.pk).changes
    assert {name: stored[name] for name in kept} == kept
    assert {name: stored[name] for name in secrets} == dict.fromkeys(secrets, REDACTED)
    assert stored["nested"] == [dict.fromkeys(upper, REDACTED)]
    assert "chain intact" in _verify()


def test_snapshots_of_rows_holding_secrets_keep_their_evidence_and_lose_their_secrets(
    cluster, make_user
):
    from django.forms.models import model_to_dict  # what the audit snapshots copy

    from apps.accounts.models import ApiToken
    from apps.alerts.models import Receiver
    from apps.inventory.models import EnrollmentToken, Node

    later = timezone.now() + timedelta(days=1)
    user = make_user("ann")
    receiver = Receiver.objects.create(name="hook", kind="webhook", secret="s3")
    api_token = ApiToken.objects.create(
        user=user, name="ci", prefix="hgr_ci", secret_hash="a" * 64, expires_at=later
    )
    enrollment = EnrollmentToken.objects.create(
        cluster=cluster, token_hash="b" * 64, prefix="hge_x", expires_at=later
    )
    node = Node.objects.create(
        cluster=cluster,
        hostname="gpu-a1",
        credential_hash="c" * 64,
        credential_revoked_at=timezone.now(),
    )
    rows = [
        (user, "password"),
        (receiver, "secret"),
        (api_token, "secret_hash"),
        (enrollment, "token_hash"),
        (node, "credential_hash"),
    ]
    for row, secret in rows:
        event = recorder.record("test.snapshot", changes={"deleted": model_to_dict(row)})

        stored = AuditEvent.objects.get(pk=event.pk).changes["deleted"]
        assert stored[secret] == REDACTED, row
        assert [k for k, v in stored.items() if v == REDACTED] == [secret], row
    assert stored["credential_revoked_at"] is not None and stored["hostname"] == "gpu-a1"


# Fields whose names mention a secret without being one.
NOT_SECRETS = {
    "credential_revoked_at",  # when a node's access ended
    "key",  # LoginLock: the locked username or client address
    "hash",  # the audit chain's own links, never in `changes`
    "prev_hash",
    "last_hash",
    "archived_through_hash",
    "first_prev_hash",
    # The gateway's key policy, limits and usage: counts and days, and `key`, a
    # consumer key's id (the key itself is only ever stored as key_hash).
    "max_key_days",
    "keys_without_project",
    "tokens_per_minute",
    "tokens_per_day",
    "tokens_per_week",
    "prompt_tokens",
    "completion_tokens",
    "first_token_ms",
}


def test_every_model_field_named_like_a_secret_is_redacted_or_known_not_to_be_one():
    from django.apps import apps

    looks_secret = re.compile(r"pass|secret|token|credential|key|hash", re.IGNORECASE)
    unclassified = [
        f"{model._meta.label}.{field.name}"
        for model in apps.get_models()
        for field in model._meta.concrete_fields
        if looks_secret.search(field.name)
        and field.name.lower() not in SECRET_FIELDS
        and field.name not in NOT_SECRETS
    ]
    assert unclassified == []


def test_a_nul_byte_is_stored_escaped_and_the_chain_still_verifies():
    recorder.record("test.nul", actor_name="a\x00b", changes={"k\x00": "v\x00"})

    assert AuditEvent.objects.get().actor_name == "a\\x00b"
    assert "chain intact" in _verify()
