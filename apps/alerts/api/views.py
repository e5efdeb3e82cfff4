from __future__ import annotations

from django.utils import timezone
from django.utils.translation import gettext as _
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response

from apps.accounts.policy import allowed_in_scope, with_global_rows
from apps.alerts import services
from apps.alerts.api.serializers import (
    AcknowledgeSerializer,
    AlertRuleSerializer,
    AlertSerializer,
    DeliverySerializer,
    ReceiverSerializer,
    SilenceSerializer,
)
from apps.alerts.models import Alert, AlertRule, Delivery, Receiver, Severity, Silence
from apps.core.viewsets import HangarViewSet

VIEW = {"list": "alerts.view", "retrieve": "alerts.view"}
MANAGE = "alerts.manage"
READ = (mixins.ListModelMixin, mixins.RetrieveModelMixin)
WRITE = (mixins.CreateModelMixin, mixins.UpdateModelMixin, mixins.DestroyModelMixin)


def _int_param(params, name: str) -> int:
    try:
        return int(params[name])
    except (TypeError, ValueError):
        raise serializers.ValidationError({name: _("Give a whole number.")}) from None


def _choice_param(params, name: str, choices) -> str:
    value = params[name]
    if value not in choices:
        raise serializers.ValidationError(
            {name: _("Choose one of %(choices)s.") % {"choices": ", ".join(choices)}}
        )
    return value


class GlobalRowsVisible:
    """Rows without a cluster (rules and silences for everywhere) are shown to everyone
    who may view alerts at all; the rest follow the cluster, as restrict() does."""

    def get_queryset(self):
        return with_global_rows(
            super().get_queryset(), self.queryset, self.request.user, self.policy["list"]
        )


def _require_in_scope(user, action: str, cluster) -> None:
    if not allowed_in_scope(user, action, cluster):
        if cluster is None:
            raise PermissionDenied(
                _("Your roles do not allow %(action)s for every cluster.") % {"action": action}
            )
        raise PermissionDenied(
            _("Your roles do not allow %(action)s for cluster %(cluster)s.")
            % {"action": action, "cluster": cluster}
        )


class AlertRuleViewSet(GlobalRowsVisible, *READ, *WRITE, HangarViewSet):
    """Rules. Everyone who sees alerts reads them; administrators edit them."""

    queryset = AlertRule.objects.prefetch_related("receivers")
    serializer_class = AlertRuleSerializer
    policy = {
        **VIEW,
        "create": MANAGE,
        "update": MANAGE,
        "partial_update": MANAGE,
        "destroy": MANAGE,
    }

    def perform_create(self, serializer):
        _require_in_scope(self.request.user, MANAGE, serializer.validated_data.get("cluster"))
        super().perform_create(serializer)

    def perform_update(self, serializer):
        _require_in_scope(self.request.user, MANAGE, serializer.validated_data.get("cluster"))
        services.update_rule(serializer)

    def perform_destroy(self, instance):
        services.delete_rule(instance)


class AlertViewSet(*READ, HangarViewSet):
    """Alerts, newest first. Filters: state (or open=true), severity, node, deployment,
    cluster, rule."""

    queryset = Alert.objects.select_related("node", "deployment", "acknowledged_by")
    serializer_class = AlertSerializer
    policy = {**VIEW, "acknowledge": "alerts.acknowledge"}

    def get_queryset(self):
        queryset = super().get_queryset()
        params = self.request.query_params
        if params.get("state"):
            queryset = queryset.filter(state=_choice_param(params, "state", Alert.State.values))
        if params.get("open") in ("1", "true"):
            queryset = queryset.filter(state__in=Alert.OPEN)
        if params.get("severity"):
            queryset = queryset.filter(severity=_choice_param(params, "severity", Severity.values))
        for name in ("node", "deployment", "cluster", "rule"):
            if params.get(name):
                queryset = queryset.filter(**{f"{name}_id": _int_param(params, name)})
        return queryset

    @extend_schema(request=AcknowledgeSerializer, responses=AlertSerializer)
    @action(detail=True, methods=["post"])
    def acknowledge(self, request, pk=None):
        """Take a firing alert on, with a note; it resolves by itself when the condition clears."""
        alert = self.get_object()
        body = AcknowledgeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            alert = services.acknowledge(alert, request.user, body.validated_data["note"])
        except ValueError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response(AlertSerializer(alert).data)


class SilenceViewSet(GlobalRowsVisible, *READ, mixins.CreateModelMixin, HangarViewSet):
    """Silences: matchers (rule, node, cluster, severity; empty matches all) for a period."""

    queryset = Silence.objects.select_related("created_by")
    serializer_class = SilenceSerializer
    policy = {**VIEW, "create": "alerts.acknowledge", "expire": "alerts.acknowledge"}

    def get_queryset(self):
        queryset = super().get_queryset()
        if self.request.query_params.get("active") in ("1", "true"):
            now = timezone.now()
            queryset = queryset.filter(starts_at__lte=now, ends_at__gt=now)
        return queryset

    def perform_create(self, serializer):
        _require_in_scope(
            self.request.user, "alerts.acknowledge", serializer.validated_data.get("cluster")
        )
        services.create_silence(serializer, self.request.user)

    @extend_schema(request=None, responses=SilenceSerializer)
    @action(detail=True, methods=["post"])
    def expire(self, request, pk=None):
        """End the silence now (it stays listed); held-back firing alerts are then sent."""
        silence = services.expire_silence(self.get_object())
        return Response(SilenceSerializer(silence).data)


class ReceiverViewSet(*READ, *WRITE, HangarViewSet):
    """Webhook and e-mail receivers (administrators). Secrets are write-only."""

    queryset = Receiver.objects.all()
    serializer_class = ReceiverSerializer
    policy = {
        "list": MANAGE,
        "retrieve": MANAGE,
        "create": MANAGE,
        "update": MANAGE,
        "partial_update": MANAGE,
        "destroy": MANAGE,
    }


class DeliveryViewSet(*READ, HangarViewSet):
    """Notification deliveries with attempts and the last error. Filters: receiver, alert, state."""

    queryset = Delivery.objects.select_related("receiver", "alert")
    serializer_class = DeliverySerializer
    policy = {"list": MANAGE, "retrieve": MANAGE}

    def get_queryset(self):
        queryset = super().get_queryset()
        params = self.request.query_params
        if params.get("state"):
            queryset = queryset.filter(state=_choice_param(params, "state", Delivery.State.values))
        for name in ("receiver", "alert"):
            if params.get(name):
                queryset = queryset.filter(**{f"{name}_id": _int_param(params, name)})
        return queryset
