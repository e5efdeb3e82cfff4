"""Hashing and appending audit events; one function writes every event."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from apps.audit.forwarding import request_forwarding
from apps.audit.models import AuditEvent, ChainHead

GENESIS = "0" * 64
# The exact names (any case) under which a secret, or a hash that stands for one,
# can reach `changes`: model fields that snapshots copy (User.password,
# Receiver.secret, ApiToken.secret_hash, EnrollmentToken.token_hash,
# Node.credential_hash, Worker.engine_secret, SecondFactor.secret,
# RecoveryCode.code_hash, PasswordState.previous_hashes) and the names of secrets callers
# handle. Exact names, not substrings: `credential_prefix` (which identifies a
# refused agent), `credential_revoked_at`, a token's `prefix` and a login lock's
# `key` are evidence.
SECRET_FIELDS = frozenset(
    {
        "password",
        "bind_password",
        "passphrase",
        "secret",
        "client_secret",
        "secret_hash",
        "key_hash",
        "secret_key",
        "token",
        "api_token",
        "access_token",
        "refresh_token",
        "token_hash",
        "credential",
        "credential_hash",
        "api_key",
        "engine_secret",
        "private_key",
        "authorization",
        "session_key",
        "code_hash",
        "previous_hashes",
    }
)
REDACTED = "[redacted]"

HASHED_FIELDS = (
    "seq",
    "time",
    "actor_type",
    "actor_id",
    "actor_name",
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


def redact(value):
    """Replace the values under SECRET_FIELDS names, at any depth."""
    if isinstance(value, dict):
        return {
            k: (REDACTED if str(k).lower() in SECRET_FIELDS else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _storable(value):
    """PostgreSQL stores no NUL in text or jsonb: show it escaped instead of failing."""
    if isinstance(value, str):
        return value.replace("\x00", "\\x00")
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(v) for v in value]
    return value


def event_hash(fields: dict) -> str:
    payload = {name: fields[name] for name in HASHED_FIELDS}
    if isinstance(payload["time"], datetime):
        payload["time"] = payload["time"].isoformat()
    encoded = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(encoded.encode()).hexdigest()


def append_event(**fields) -> AuditEvent:
    """Append one event to the chain, serialised on the chain head row."""
    fields["changes"] = redact(fields.get("changes") or {})
    # Round-trip through JSON so the hash covers exactly what the database stores.
    fields["changes"] = _storable(json.loads(json.dumps(fields["changes"], default=str)))
    fields.setdefault("time", timezone.now())
    with transaction.atomic():
        head, _ = ChainHead.objects.select_for_update().get_or_create(id=1)
        fields["seq"] = head.last_seq + 1
        fields["prev_hash"] = head.last_hash
        for name in (
            "actor_id",
            "actor_name",
            "request_id",
            "target_type",
            "target_id",
            "target_repr",
        ):
            fields[name] = _storable(str(fields.get(name) or ""))[:255]
        fields.setdefault("source_address", None)
        fields["action"] = _storable(fields["action"])[:100]
        fields["hash"] = event_hash(fields)
        event = AuditEvent.objects.create(**fields)
        head.last_seq = event.seq
        head.last_hash = event.hash
        head.save(update_fields=["last_seq", "last_hash"])
    # To the central collector once committed, never on this path (forwarding.py).
    request_forwarding()
    return event


def verify_events(events, expected_prev: str, expected_seq: int) -> tuple[int, str | None, str]:
    """Walk events (dicts or models, in seq order). Returns (count, problem, last_hash)."""
    count = 0
    prev = expected_prev
    for event in events:
        fields = (
            event
            if isinstance(event, dict)
            else {name: getattr(event, name) for name in (*HASHED_FIELDS, "hash")}
        )
        seq = fields["seq"]
        if seq != expected_seq:
            return count, f"event #{expected_seq} is missing (found #{seq} next)", prev
        if fields["prev_hash"] != prev:
            return count, f"event #{seq} does not link to the event before it", prev
        if event_hash(fields) != fields["hash"]:
            return count, f"event #{seq} was altered: its hash does not match its content", prev
        prev = fields["hash"]
        expected_seq += 1
        count += 1
    return count, None, prev


def verify_database() -> tuple[int, str | None]:
    """Verify the hot chain in the database against the chain head."""
    head, _ = ChainHead.objects.get_or_create(id=1)
    events = AuditEvent.objects.order_by("seq").iterator(chunk_size=2000)
    count, problem, last = verify_events(
        events, head.archived_through_hash, head.archived_through_seq + 1
    )
    if problem:
        return count, problem
    if head.last_seq != head.archived_through_seq + count or head.last_hash != last:
        return count, f"the newest events after #{head.archived_through_seq + count} are missing"
    return count, None
