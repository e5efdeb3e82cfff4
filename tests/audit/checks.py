"""What the audit log must hold after one request of the role matrix."""

from __future__ import annotations

from django.conf import settings

from apps.accounts.policy import AUTHENTICATED, PUBLIC
from tests.endpoints import LOGIN_REDIRECT, MUTATING, Endpoint


def expected_outcome(status) -> str:
    if status == LOGIN_REDIRECT or status in (401, 403, 404):
        # 404 here means "outside your scope": hidden from the caller, a denial on record.
        return "denied"
    return "allowed" if status < 400 else "failed"


def _audit_read_action(row: Endpoint) -> str:
    if row.action == "audit.export":
        return "audit.export"
    return "audit.verify" if row.path.rstrip("/").endswith("chain") else "audit.read"


def assert_audited(row: Endpoint, subject: str, expected, response, events) -> None:
    """A mutating request wrote exactly one event of its own, right in every field;
    a read wrote none."""
    # The system may record consequences of a request (a lock, an alert that fires)
    # as events of their own; they carry the request's id.
    assert {e.request_id for e in events} <= {response["X-Request-ID"]}
    own = [e for e in events if e.actor_type != "system"]
    if row.method not in MUTATING:
        separated = settings.SEPARATION_OF_DUTIES
        if separated and row.action in ("audit.view", "audit.export") and expected == row.ok:
            # In separation mode reads of the audit log are on the record (docs/identity.md).
            assert [(e.action, e.actor_name) for e in own] == [
                (_audit_read_action(row), f"as-{subject}")
            ]
            return
        assert own == [], f"a {row.method} wrote {[(e.action, e.outcome) for e in own]}"
        return
    assert len(own) == 1, [(e.action, e.actor_type, e.outcome) for e in events]
    [event] = own
    assert event.outcome == expected_outcome(expected), (response.status_code, event.changes)
    assert event.changes["status"] == response.status_code
    assert event.changes["path"] == response.wsgi_request.path
    assert event.source_address == "127.0.0.1"
    if row.audit_action == "auth.login":
        # Whoever was logged in before, the actor of a login is the one logging in.
        assert (event.actor_type, event.actor_name) == ("user", row.body["username"])
    elif subject == "anonymous":
        assert event.actor_type == "anonymous"
    else:
        assert (event.actor_type, event.actor_name) == ("user", f"as-{subject}")
    if event.outcome == "allowed":
        assert event.action == (row.audit_action or row.action)
        if row.kind in ("object", "create") and row.action not in (PUBLIC, AUTHENTICATED):
            assert event.target_type and event.target_id, "a change names what it changed"
    elif row.action not in (PUBLIC, AUTHENTICATED):
        assert event.action == row.action
