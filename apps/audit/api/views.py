from __future__ import annotations

from django.http import StreamingHttpResponse
from django.utils.translation import gettext as _
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError

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
        # An async stream: Daphne sends each chunk as it is read (apps/audit/export.py).
        response = StreamingHttpResponse(stream(self.get_queryset()), content_type=content_type)
        response["Content-Disposition"] = f'attachment; filename="hangar-audit.{kind}"'
        return response
