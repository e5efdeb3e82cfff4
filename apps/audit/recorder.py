"""The one audit mechanism.

Inside a request, AuditMiddleware writes exactly one event per mutating request;
the permission layer names the action, and services add the target and the
changes with `describe()`. Outside a request (Celery, the agent socket, system
transitions), services call `record()` directly. Nothing else writes events.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field

from apps.audit.chain import append_event
from apps.audit.models import AuditEvent

Actor = AuditEvent.ActorType
Outcome = AuditEvent.Outcome


@dataclass
class PendingEvent:
    """What the current request will be recorded as."""

    action: str = ""
    target_type: str = ""
    target_id: str = ""
    target_repr: str = ""
    changes: dict = field(default_factory=dict)
    outcome: str | None = None
    actor_name: str | None = None


_pending: ContextVar[PendingEvent | None] = ContextVar("hangar_audit_pending", default=None)


def begin_request() -> tuple[PendingEvent, object]:
    pending = PendingEvent()
    return pending, _pending.set(pending)


def end_request(token) -> None:
    _pending.reset(token)


def target_fields(target) -> dict:
    if target is None:
        return {}
    if isinstance(target, tuple):
        kind, ident, text = (*target, "")[:3]
        return {"target_type": kind, "target_id": str(ident), "target_repr": str(text)}
    return {
        "target_type": target._meta.label_lower,
        "target_id": str(target.pk or ""),
        "target_repr": str(target)[:255],
    }


def describe(
    action: str | None = None,
    target=None,
    changes: dict | None = None,
    outcome: str | None = None,
    actor_name: str | None = None,
) -> None:
    """Add detail to the current request's event. A no-op outside a request."""
    pending = _pending.get()
    if pending is None:
        return
    if action:
        pending.action = action
    for key, value in target_fields(target).items():
        setattr(pending, key, value)
    if changes:
        pending.changes.update(changes)
    if outcome:
        pending.outcome = outcome
    if actor_name:
        pending.actor_name = actor_name


def describe_default(target=None, changes: dict | None = None) -> None:
    """Describe the target and changes unless the request's code already did."""
    pending = _pending.get()
    if pending is None:
        return
    if target is not None and not pending.target_type:
        describe(target=target)
    if changes and not pending.changes:
        describe(changes=changes)


def in_request() -> bool:
    return _pending.get() is not None


def record(
    action: str,
    *,
    target=None,
    changes: dict | None = None,
    outcome: str = Outcome.ALLOWED,
    actor_type: str = Actor.SYSTEM,
    actor_id: str = "",
    actor_name: str = "",
    source_address: str | None = None,
    request_id: str = "",
) -> AuditEvent:
    """Write one event now: for work outside an HTTP request, or for a consequence
    of one that is not the caller's own action (a lock after failed logins, an alert
    that fires). Inside a request it carries that request's id, linking the two."""
    if not request_id:
        from apps.core.context import request_id_var

        request_id = request_id_var.get() or ""
    return append_event(
        action=action,
        outcome=outcome,
        actor_type=actor_type,
        actor_id=actor_id,
        actor_name=actor_name or actor_type,
        source_address=source_address,
        request_id=request_id,
        changes=changes or {},
        **target_fields(target),
    )


def diff(before: dict, after: dict) -> dict:
    """{field: [old, new]} for the fields that changed."""
    return {k: [before.get(k), after.get(k)] for k in after if before.get(k) != after.get(k)}
