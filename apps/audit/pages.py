"""The audit log page and the chain's verification state (auditors and admins).

Filtering is apps.audit.filters (the API list and exports use the same), and
the export links point at the API's export with the same query string."""

from __future__ import annotations

from django.core.paginator import Paginator
from django.shortcuts import render
from django.utils.translation import gettext as _
from rest_framework.exceptions import ValidationError

from apps.accounts.permissions import requires
from apps.accounts.policy import can, restrict
from apps.audit import recorder
from apps.audit.chain import verify_database
from apps.audit.filters import filter_events
from apps.audit.models import AuditEvent

EVENTS_PER_PAGE = 50
FILTERS = ("q", "actor", "action_prefix", "outcome", "target_type", "since", "until")


@requires("audit.view")
def audit_log(request):
    params = request.GET.copy()
    events = restrict(AuditEvent.objects.all(), request.user, "audit.view")
    error = None
    try:
        events = filter_events(events, {k: v for k, v in params.items() if k in FILTERS})
    except ValidationError:
        error = _("Give times as 2026-01-31T08:00 (ISO 8601); the filter was not applied.")
        events = restrict(AuditEvent.objects.all(), request.user, "audit.view")
    page = Paginator(events.order_by("-seq"), EVENTS_PER_PAGE).get_page(params.get("page"))
    export_query = {k: v for k, v in params.items() if k in FILTERS and v}
    recorder.record_read(request, "audit.read", {"filters": export_query})
    return render(
        request,
        "audit/log.html",
        {
            "page": page,
            "events": page.object_list,
            "filters": {k: params.get(k, "") for k in FILTERS},
            "outcomes": AuditEvent.Outcome.values,
            "error": error,
            "can_export": can(request.user, "audit.export"),
            "export_params": export_query,
        },
    )


@requires("audit.view")
def chain_state(request):
    """Walk the whole hash chain now; loaded by the audit page after it renders."""
    count, problem = verify_database()
    recorder.record_read(request, "audit.verify", {"events": count, "intact": problem is None})
    return render(request, "audit/_chain.html", {"count": count, "problem": problem})
