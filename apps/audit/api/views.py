from __future__ import annotations

from django.db.models import Max
from django.http import StreamingHttpResponse
from django.utils.translation import gettext as _
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError

from apps.audit import recorder
from apps.audit.api.serializers import AuditEventSerializer
from apps.audit.export import csv_stream, jsonl_stream
from apps.audit.filters import filter_events
from apps.audit.models import AuditEvent
from apps.core.viewsets import HangarViewSet

EXPORTS = {"jsonl": (jsonl_stream, "application/x-ndjson"), "csv": (csv_stream, "text/csv")}


class AuditEventViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, HangarViewSet):
    """The audit log, newest first. Filters: actor, actor_type, action, action_prefix,
    target_type, target_id, outcome, request_id, since, until, q."""

    queryset = AuditEvent.objects.all()
    serializer_class = AuditEventSerializer
    lookup_field = "seq"
    policy = {"list": "audit.view", "retrieve": "audit.view", "export": "audit.export"}

    def get_queryset(self):
        return filter_events(super().get_queryset(), self.request.query_params)

    def finalize_response(self, request, response, *args, **kwargs):
        # Reading the audit log is audited (docs/identity.md, separation of duties).
        if request.method == "GET" and response.status_code < 400:
            action = "audit.export" if self.action == "export" else "audit.read"
            recorder.record_read(request, action, {"query": dict(request.query_params.items())})
        return super().finalize_response(request, response, *args, **kwargs)

    @extend_schema(
        parameters=[OpenApiParameter("as", enum=list(EXPORTS), default="jsonl")],
        responses={200: None},
    )
    @action(detail=False, methods=["get"])
    def export(self, request):
        """Export the filtered events, oldest first, as JSON Lines or CSV."""
        kind = request.query_params.get("as", "jsonl")
        if kind not in EXPORTS:
            raise ValidationError({"as": _("Choose jsonl or csv.")})
        stream, content_type = EXPORTS[kind]
        # Up to the newest event now: not the export's own record (separation mode).
        newest = AuditEvent.objects.aggregate(newest=Max("seq"))["newest"] or 0
        events = self.get_queryset().filter(seq__lte=newest)
        # An async stream: Daphne sends each chunk as it is read (apps/audit/export.py).
        response = StreamingHttpResponse(stream(events), content_type=content_type)
        response["Content-Disposition"] = f'attachment; filename="hangar-audit.{kind}"'
        return response
