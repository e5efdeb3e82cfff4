"""Request ids (one per request, echoed back and recorded in audit events), and
the 503 a request gets when the database is away."""

from __future__ import annotations

import re
import uuid

from apps.core.context import request_id_var
from apps.core.errors import database_unavailable
from apps.core.outbox import DATABASE_AWAY

# Accept a caller's id (a reverse proxy's) only if it looks like one.
_VALID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


class RequestIdMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        incoming = request.headers.get("X-Request-ID", "")
        request.request_id = incoming if _VALID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request.request_id)
        try:
            response = self.get_response(request)
        finally:
            request_id_var.reset(token)
        response["X-Request-ID"] = request.request_id
        return response


class DatabaseAwayMiddleware:
    """A view that finds the database away answers 503, not 500 (docs/reliability.md).

    Last in MIDDLEWARE, so its process_exception sees a view's exception first.
    Mutating requests are also caught by AuditMiddleware, whose transaction is
    the first to need the database."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if isinstance(exception, DATABASE_AWAY):
            return database_unavailable(request)
        return None
