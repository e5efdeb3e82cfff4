"""One error shape for the API: {"detail": ..., "code": ...}, JSON under /api/."""

from __future__ import annotations

from django.http import HttpResponse, JsonResponse
from django.shortcuts import render
from django.template.loader import render_to_string
from django.utils.translation import gettext as _
from rest_framework.views import exception_handler


def api_exception_handler(exc, context):
    response = exception_handler(exc, context)
    if response is None:
        return None
    data = response.data
    if isinstance(data, dict) and "detail" in data:
        code = getattr(data["detail"], "code", None) or getattr(exc, "default_code", "error")
        response.data = {"detail": str(data["detail"]), "code": code}
    else:
        # Field errors: keep them, and add a sentence a person can read.
        response.data = {
            "detail": _("The request has invalid fields."),
            "code": "invalid",
            "fields": data,
        }
    return response


def _wants_json(request) -> bool:
    return request.path.startswith("/api/") or request.path.startswith("/healthz")


def not_found(request, exception=None):
    if _wants_json(request):
        return JsonResponse({"detail": _("Not found."), "code": "not_found"}, status=404)
    return render(request, "errors/404.html", status=404)


def server_error(request):
    if _wants_json(request):
        return JsonResponse(
            {
                "detail": _("Internal server error; the event is in the server log."),
                "code": "server_error",
            },
            status=500,
        )
    return render(request, "errors/500.html", status=500)


def permission_denied(request, exception=None):
    if _wants_json(request):
        return JsonResponse(
            {"detail": _("You do not have permission to do this."), "code": "permission_denied"},
            status=403,
        )
    return render(request, "errors/403.html", status=403)


def bad_request(request, exception=None):
    if _wants_json(request):
        return JsonResponse({"detail": _("Bad request."), "code": "bad_request"}, status=400)
    return render(request, "errors/400.html", status=400)


def database_unavailable(request) -> HttpResponse:
    """503 while the database is away: JSON for the API, a page for a person.

    The page is rendered without the request's context: its processors read the
    user and their rights, from the database that is away."""
    detail = _(
        "The console's database is not answering, so nothing was changed. "
        "Try again in a minute; /healthz shows when it is back."
    )
    if _wants_json(request):
        response = JsonResponse({"detail": detail, "code": "database_unavailable"}, status=503)
    else:
        response = HttpResponse(render_to_string("errors/503.html", {"detail": detail}), status=503)
    response["Retry-After"] = "30"
    response.database_away = True  # for AuditMiddleware: no event can be written
    return response
