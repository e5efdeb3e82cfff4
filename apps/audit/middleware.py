"""Writes one audit event for every mutating HTTP request, whatever its outcome."""

from __future__ import annotations

import logging

from django.db import transaction
from django.urls import Resolver404, resolve

from apps.audit import recorder
from apps.audit.models import AuditEvent
from apps.core.errors import database_unavailable
from apps.core.outbox import DATABASE_AWAY, first_line

log = logging.getLogger(__name__)

MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
Outcome = AuditEvent.Outcome


def client_address(request) -> str | None:
    # REMOTE_ADDR comes from the ASGI scope, which apps/core/forwarded.py has already
    # set from X-Forwarded-For where (and only where) the peer is a trusted proxy.
    # Never read the header here: a client writes whatever it likes into it.
    return request.META.get("REMOTE_ADDR") or None


def outcome_for(status: int) -> str:
    if status < 400:
        return Outcome.ALLOWED
    if status in (401, 403, 429):
        return Outcome.DENIED
    return Outcome.FAILED


def default_action(request) -> str:
    try:
        match = resolve(request.path_info)
    except Resolver404:
        return f"http.{request.method.lower()}.unknown-route"
    return f"http.{request.method.lower()}.{match.url_name or match.route}"


class _DatabaseAway(Exception):
    """The view found the database away (DatabaseAwayMiddleware answered for it)."""


class _Failed(Exception):
    """Carries a failed response out of the view's savepoint, undoing its writes."""

    def __init__(self, response):
        self.response = response


class AuditMiddleware:
    """One transaction per mutating request: the view's writes and their event
    commit together or not at all. A view that failed (an exception, answered
    500) has its writes undone and is recorded as failed; any other answer keeps
    what the view wrote on purpose (a login lock with the 4xx that refused the
    login, the error run of a preflight whose node did not answer with its 504)
    with its event. With the database away there is nothing to write into: the
    answer is a 503 (apps/core/errors.py) and nothing has changed."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.method not in MUTATING:
            return self.get_response(request)
        try:
            with transaction.atomic():
                return self._audited(request)
        except (*DATABASE_AWAY, _DatabaseAway) as exc:
            log.warning(
                "database away: %s %s answered 503, nothing changed (%s)",
                request.method,
                request.path,
                first_line(exc),
            )
            return database_unavailable(request)

    def _audited(self, request):
        # Who was logged in before the view ran: the actor of a logout.
        before = getattr(request, "user", None)
        was_authenticated = before is not None and before.is_authenticated
        pending, token = recorder.begin_request()
        try:
            with transaction.atomic():
                response = self.get_response(request)
                if response.status_code == 500 or getattr(response, "database_away", False):
                    raise _Failed(response)
                if response.status_code < 400:
                    recorder.describe_write()
        except _Failed as failed:
            response = failed.response
        finally:
            recorder.end_request(token)
        if getattr(response, "database_away", False):
            raise _DatabaseAway  # no event can be written either: answer the 503 as it is
        # After the view: DRF's token authentication sets the user only inside it.
        user = getattr(request, "user", None)
        authenticated = user is not None and user.is_authenticated
        if not authenticated and was_authenticated:
            user, authenticated = before, True
        recorder.append_event(
            action=pending.action or default_action(request),
            outcome=pending.outcome or outcome_for(response.status_code),
            actor_type=recorder.Actor.USER if authenticated else recorder.Actor.ANONYMOUS,
            actor_id=str(user.pk) if authenticated else "",
            actor_name=user.get_username() if authenticated else (pending.actor_name or ""),
            source_address=client_address(request),
            request_id=getattr(request, "request_id", ""),
            target_type=pending.target_type,
            target_id=pending.target_id,
            target_repr=pending.target_repr,
            changes={**pending.changes, "status": response.status_code, "path": request.path[:200]},
        )
        return response
