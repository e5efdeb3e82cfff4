"""The one audit mechanism.

Inside a request, AuditMiddleware writes exactly one event per mutating request;
the permission layer names the action, and services add the target and the
changes with `describe()`. What a write did to its object is found the same way
for the API and the pages: the code that loads the object names it (`watch`,
from HangarViewSet.get_object and apps.core.pages.found_or_404), the form that
saves it is named (`watch_form`, from HangarViewSet.get_serializer and the
pages), and on success the middleware describes target and changes from them
(`describe_write`) unless the request's code already did. Outside a request
(Celery, the agent socket, system transitions), services call `record()`
directly. Nothing else writes events.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field

from django.db.models import Model
from django.forms.models import model_to_dict

from apps.audit.chain import append_event
from apps.audit.models import AuditEvent
from apps.core.context import request_id_var

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
    # What the write acted on (see watch / watch_form), for describe_write.
    watched: object = None
    watched_before: dict | None = None
    form: object = None
    form_before: dict | None = None


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


def snapshot(instance) -> dict:
    """A row's fields as the audit log records them (secrets are redacted by the chain)."""
    return {k: v for k, v in model_to_dict(instance).items() if not k.startswith("_")}


def diff(before: dict, after: dict) -> dict:
    """{field: [old, new]} for the fields that changed."""
    return {k: [before.get(k), after.get(k)] for k in after if before.get(k) != after.get(k)}


def watch(instance) -> None:
    """The object this request loaded to act on, as it was before: a deletion
    is recorded from it. A no-op outside a mutating request."""
    pending = _pending.get()
    if pending is None or instance is None:
        return
    pending.watched, pending.watched_before = instance, snapshot(instance)
    describe_default(target=instance)


def watch_form(serializer) -> None:
    """The serializer (API body or page form) that will save the object: a
    create is recorded as its saved row, an update as the fields it changed."""
    pending = _pending.get()
    if pending is None:
        return
    instance = getattr(serializer, "instance", None)
    before = snapshot(instance) if isinstance(instance, Model) and instance.pk is not None else None
    pending.form, pending.form_before = serializer, before


def describe_write() -> None:
    """Describe a successful write from what was watched, unless described already."""
    pending = _pending.get()
    if pending is None:
        return
    form = pending.form
    saved = getattr(form, "instance", None)
    if isinstance(saved, Model) and saved.pk is not None and getattr(form, "_errors", None) == {}:
        after = snapshot(saved)
        before = pending.form_before
        changes = {"created": after} if before is None else diff(before, after)
        describe_default(target=saved, changes=changes)
    elif pending.watched is not None and pending.watched.pk is None:
        describe_default(changes={"deleted": pending.watched_before})


def record_read(request, action: str, changes: dict | None = None) -> AuditEvent | None:
    """In separation of duties mode, write one event for a read of the audit log
    itself (a list, an event, an export, a verification): the audit administrator
    is on the record too. In the ordinary mode reads write nothing."""
    from django.conf import settings

    from apps.audit.middleware import client_address

    if not settings.SEPARATION_OF_DUTIES:
        return None
    user = request.user
    return record(
        action,
        actor_type=Actor.USER,
        actor_id=str(user.pk),
        actor_name=user.get_username(),
        source_address=client_address(request),
        request_id=getattr(request, "request_id", ""),
        changes={**(changes or {}), "path": request.path[:200]},
    )
