"""Query-string filters for the audit log (shared by the API list and exports)."""

from __future__ import annotations

from django.db.models import Q, QuerySet
from django.utils.dateparse import parse_datetime
from django.utils.translation import gettext as _
from rest_framework.exceptions import ValidationError

TEXT_FILTERS = {
    "actor": "actor_name",
    "actor_type": "actor_type",
    "action": "action",
    "target_type": "target_type",
    "target_id": "target_id",
    "outcome": "outcome",
    "request_id": "request_id",
}


def _when(params, name: str):
    raw = params.get(name)
    if not raw:
        return None
    value = parse_datetime(raw)
    if value is None:
        raise ValidationError(
            {
                name: _("%(value)r is not an ISO 8601 time, e.g. 2026-01-31T08:00:00Z.")
                % {"value": raw}
            }
        )
    return value


def filter_events(queryset: QuerySet, params) -> QuerySet:
    for param, field in TEXT_FILTERS.items():
        if params.get(param):
            queryset = queryset.filter(**{field: params[param]})
    if params.get("action_prefix"):
        queryset = queryset.filter(action__startswith=params["action_prefix"])
    if (since := _when(params, "since")) is not None:
        queryset = queryset.filter(time__gte=since)
    if (until := _when(params, "until")) is not None:
        queryset = queryset.filter(time__lt=until)
    if params.get("q"):
        term = params["q"][:100]
        queryset = queryset.filter(
            Q(action__icontains=term)
            | Q(actor_name__icontains=term)
            | Q(target_repr__icontains=term)
        )
    return queryset
