from __future__ import annotations

from django.utils import timezone
from django.utils.translation import gettext as _
from rest_framework import serializers

from apps.alerts.evaluation import compile_pattern
from apps.alerts.models import Alert, AlertRule, Delivery, Receiver, Scope, Silence

_METRIC_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_.*")


class ReceiverSerializer(serializers.ModelSerializer):
    """The HMAC secret is write-only: reads say only whether one is set."""

    secret = serializers.CharField(
        write_only=True, required=False, allow_blank=True, max_length=200
    )
    has_secret = serializers.SerializerMethodField()
    failing = serializers.SerializerMethodField()

    class Meta:
        model = Receiver
        fields = [
            "id",
            "name",
            "kind",
            "url",
            "secret",
            "has_secret",
            "emails",
            "language",
            "enabled",
            "created_at",
            "failing",
        ]
        read_only_fields = ["id", "created_at"]

    def get_has_secret(self, receiver) -> bool:
        return bool(receiver.secret)

    def get_failing(self, receiver) -> int:
        """Deliveries that are being retried or were given up on."""
        return receiver.deliveries.filter(
            state__in=(Delivery.State.RETRYING, Delivery.State.FAILED)
        ).count()

    def validate_emails(self, emails):
        field = serializers.EmailField()
        if not isinstance(emails, list) or len(emails) > 50:
            raise serializers.ValidationError(_("A list of at most 50 e-mail addresses."))
        return [field.run_validation(e) for e in emails]

    def validate(self, attrs):
        kind = attrs.get("kind", getattr(self.instance, "kind", None))
        url = attrs.get("url", getattr(self.instance, "url", ""))
        emails = attrs.get("emails", getattr(self.instance, "emails", []))
        if kind in Receiver.URL_KINDS and not url:
            raise serializers.ValidationError(
                {"url": _("A %(kind)s receiver needs its webhook URL.") % {"kind": kind}}
            )
        if kind in Receiver.URL_KINDS and not url.startswith(("http://", "https://")):
            raise serializers.ValidationError({"url": _("Use an http:// or https:// URL.")})
        secret = attrs.get("secret", getattr(self.instance, "secret", ""))
        if kind == Receiver.Kind.WECOM and secret:
            raise serializers.ValidationError(
                {
                    "secret": _(
                        "WeCom group robots do not sign messages: the key in the webhook URL "
                        "is the credential. Leave the secret empty."
                    )
                }
            )
        if kind == Receiver.Kind.EMAIL and not emails:
            raise serializers.ValidationError(
                {"emails": _("An e-mail receiver needs at least one address.")}
            )
        return attrs


class AlertRuleSerializer(serializers.ModelSerializer):
    class Meta:
        model = AlertRule
        fields = [
            "id",
            "name",
            "description",
            "metric",
            "scope",
            "cluster",
            "node",
            "deployment",
            "comparison",
            "threshold",
            "clear_threshold",
            "for_seconds",
            "severity",
            "receivers",
            "enabled",
            "builtin",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "builtin", "created_at", "updated_at"]

    def validate_metric(self, metric: str) -> str:
        if not metric or set(metric) - _METRIC_CHARS or ".." in metric:
            raise serializers.ValidationError(
                _(
                    "Name a series with lower-case parts separated by dots; * stands for one "
                    "part, e.g. gpu.*.temperature (docs/alerts.md lists them)."
                )
            )
        compile_pattern(metric)
        return metric

    def validate(self, attrs):
        def current(name):
            return attrs.get(name, getattr(self.instance, name, None))

        scope = current("scope") or Scope.EVERYWHERE
        cluster, node = current("cluster"), current("node")
        deployment = current("deployment")
        attrs["deployment"] = None
        if scope == Scope.EVERYWHERE:
            attrs["cluster"], attrs["node"] = None, None
        elif scope == Scope.CLUSTER:
            if cluster is None:
                raise serializers.ValidationError(
                    {"cluster": _("A cluster rule names its cluster.")}
                )
            attrs["cluster"], attrs["node"] = cluster, None
        elif scope == Scope.NODE:
            if node is None:
                raise serializers.ValidationError({"node": _("A node rule names its node.")})
            attrs["cluster"] = node.cluster
        elif scope == Scope.DEPLOYMENT:
            if deployment is None:
                raise serializers.ValidationError(
                    {"deployment": _("A deployment rule names its deployment.")}
                )
            if not (current("metric") or "").startswith(("worker.", "deployment.")):
                raise serializers.ValidationError(
                    {
                        "metric": _(
                            "A deployment rule watches its workers' series (worker.*.p99_ms, "
                            "worker.*.availability, ...) or its own request metrics "
                            "(deployment.*.http_5xx_rate, deployment.*.latency_p99_ms, ...)."
                        )
                    }
                )
            attrs["cluster"], attrs["node"], attrs["deployment"] = (
                deployment.cluster,
                None,
                deployment,
            )
        comparison, threshold = current("comparison"), current("threshold")
        clear = current("clear_threshold")
        if clear is not None and comparison and threshold is not None:
            if comparison in (">", ">=") and clear > threshold:
                raise serializers.ValidationError(
                    {"clear_threshold": _("With > and >= it is at most the threshold.")}
                )
            if comparison in ("<", "<=") and clear < threshold:
                raise serializers.ValidationError(
                    {"clear_threshold": _("With < and <= it is at least the threshold.")}
                )
        return attrs


class AlertSerializer(serializers.ModelSerializer):
    node_name = serializers.SerializerMethodField()
    deployment_name = serializers.SerializerMethodField()
    acknowledged_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    summary = serializers.CharField(read_only=True)

    class Meta:
        model = Alert
        fields = [
            "id",
            "rule",
            "rule_name",
            "series",
            "node",
            "node_name",
            "deployment",
            "deployment_name",
            "cluster",
            "severity",
            "state",
            "value",
            "comparison",
            "threshold",
            "summary",
            "started_at",
            "fired_at",
            "acknowledged_at",
            "acknowledged_by",
            "note",
            "resolved_at",
            "resolved_reason",
            "notified_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_node_name(self, alert: Alert) -> str | None:
        return str(alert.node) if alert.node_id else None

    def get_deployment_name(self, alert: Alert) -> str | None:
        """A deployment's own series (deployment.<id>.*) have a deployment, no node."""
        return alert.deployment.name if alert.deployment_id else None


class AcknowledgeSerializer(serializers.Serializer):
    note = serializers.CharField(max_length=2000, allow_blank=True, required=False, default="")


class SilenceSerializer(serializers.ModelSerializer):
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    active = serializers.SerializerMethodField()

    class Meta:
        model = Silence
        fields = [
            "id",
            "rule",
            "node",
            "cluster",
            "severity",
            "starts_at",
            "ends_at",
            "reason",
            "created_by",
            "created_at",
            "active",
        ]
        read_only_fields = ["id", "created_by", "created_at", "active"]
        extra_kwargs = {"starts_at": {"required": False}}

    def get_active(self, silence) -> bool:
        return silence.starts_at <= timezone.now() < silence.ends_at

    def validate(self, attrs):
        attrs.setdefault("starts_at", timezone.now())
        if attrs["ends_at"] <= attrs["starts_at"]:
            raise serializers.ValidationError({"ends_at": _("A silence ends after it starts.")})
        node = attrs.get("node")
        if node is not None:
            if attrs.get("cluster") not in (None, node.cluster):
                raise serializers.ValidationError(
                    {"cluster": _("The node is in another cluster; name one or the other.")}
                )
            attrs["cluster"] = node.cluster
        rule = attrs.get("rule")
        if rule is not None and rule.cluster_id is not None and attrs.get("cluster") is None:
            attrs["cluster"] = rule.cluster
        return attrs


class DeliverySerializer(serializers.ModelSerializer):
    receiver_name = serializers.CharField(source="receiver.name", read_only=True)

    class Meta:
        model = Delivery
        fields = [
            "id",
            "alert",
            "receiver",
            "receiver_name",
            "event",
            "state",
            "attempts",
            "last_error",
            "created_at",
            "sent_at",
            "payload",
        ]
        read_only_fields = fields
