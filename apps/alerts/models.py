"""Alert rules, the alerts they raise, silences, receivers and their deliveries.

docs/alerts.md explains the lifecycle; apps/alerts/evaluation.py decides it.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _


class Severity(models.TextChoices):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class Comparison(models.TextChoices):
    GT = ">"
    GE = ">="
    LT = "<"
    LE = "<="


class Scope(models.TextChoices):
    EVERYWHERE = "everywhere"
    CLUSTER = "cluster"
    NODE = "node"
    DEPLOYMENT = "deployment"  # worker series of one deployment's workers only


class Receiver(models.Model):
    """Where notifications go. The console's own live list needs no receiver."""

    class Kind(models.TextChoices):
        WEBHOOK = "webhook", _("Webhook")
        EMAIL = "email", _("E-mail")
        # Group robots of the IM services campus IT in China lives in (apps/alerts/robots.py).
        WECOM = "wecom", _("WeCom (企业微信) group robot")
        DINGTALK = "dingtalk", _("DingTalk (钉钉) group robot")
        FEISHU = "feishu", _("Feishu (飞书) group robot")

    ROBOTS = (Kind.WECOM, Kind.DINGTALK, Kind.FEISHU)
    URL_KINDS = (Kind.WEBHOOK, *ROBOTS)

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    url = models.URLField(max_length=500, blank=True, default="")
    # The HMAC-SHA256 key for X-Hangar-Signature, or DingTalk's / Feishu's signing
    # secret ("加签" / "签名校验"); write-only in the API.
    secret = models.CharField(max_length=200, blank=True, default="")
    # The language a group robot's message is written in (webhooks send JSON).
    language = models.CharField(
        max_length=10, choices=settings.LANGUAGES, default=settings.LANGUAGE_CODE
    )
    emails = models.JSONField(default=list, blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.kind} receiver {self.name}"


class AlertRule(models.Model):
    """A condition on one flattened series name pattern, e.g. gpu.*.temperature > 85 for 120 s.

    A node- or deployment-scoped rule also stores its cluster, so that who may
    see and edit it follows the cluster like every other scoped object.
    """

    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True, default="")
    metric = models.CharField(
        max_length=100, help_text="A series name; * stands for one part, e.g. gpu.*.temperature."
    )
    scope = models.CharField(max_length=16, choices=Scope.choices, default=Scope.EVERYWHERE)
    cluster = models.ForeignKey(
        "inventory.Cluster", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    node = models.ForeignKey(
        "inventory.Node", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    deployment = models.ForeignKey(
        "deployments.Deployment",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="+",
    )
    comparison = models.CharField(max_length=2, choices=Comparison.choices)
    threshold = models.FloatField()
    clear_threshold = models.FloatField(
        null=True,
        blank=True,
        help_text="Hysteresis: the value must cross back past this to resolve "
        "(default: the threshold).",
    )
    for_seconds = models.PositiveIntegerField(default=0)
    severity = models.CharField(max_length=16, choices=Severity.choices, default=Severity.WARNING)
    receivers = models.ManyToManyField(Receiver, blank=True, related_name="rules")
    enabled = models.BooleanField(default=True)
    builtin = models.BooleanField(default=False, help_text="Shipped with Hangar (editable).")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    policy_cluster_path = "cluster"

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def policy_cluster_id(self) -> int | None:
        return self.cluster_id


class Alert(models.Model):
    """One series breaking one rule, from pending to resolved.

    A series belongs to a node (gpu.*, host.*, worker.*: from its agent) or, with
    no node, to a deployment (deployment.<id>.*: the gateway's request metrics).
    """

    class State(models.TextChoices):
        PENDING = "pending"
        FIRING = "firing"
        ACKNOWLEDGED = "acknowledged"
        RESOLVED = "resolved"

    OPEN = (State.PENDING, State.FIRING, State.ACKNOWLEDGED)

    rule = models.ForeignKey(
        AlertRule, null=True, blank=True, on_delete=models.SET_NULL, related_name="alerts"
    )
    rule_name = models.CharField(max_length=100)
    series = models.CharField(max_length=150)
    node = models.ForeignKey(
        "inventory.Node", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    deployment = models.ForeignKey(
        "deployments.Deployment",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="+",
    )
    cluster = models.ForeignKey("inventory.Cluster", on_delete=models.CASCADE, related_name="+")
    severity = models.CharField(max_length=16, choices=Severity.choices)
    state = models.CharField(max_length=16, choices=State.choices, db_index=True)
    value = models.FloatField(help_text="The value at the latest transition.")
    comparison = models.CharField(max_length=2, choices=Comparison.choices)
    threshold = models.FloatField()
    started_at = models.DateTimeField(help_text="Since when the condition holds.")
    fired_at = models.DateTimeField(null=True, blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    note = models.TextField(blank=True, default="")
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_reason = models.CharField(max_length=200, blank=True, default="")
    # Evidence from the reporter, e.g. a crash-looping worker's last exit cause and log line.
    detail = models.CharField(max_length=500, blank=True, default="")
    # When receivers were told it fires; null while a silence holds it back.
    notified_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    policy_cluster_path = "cluster"

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["rule", "node", "series"],
                condition=~Q(state="resolved"),
                name="alert_one_open_per_series",
            ),
            # A deployment's series has no node (NULLs are distinct in the one above).
            models.UniqueConstraint(
                fields=["rule", "series"],
                condition=~Q(state="resolved") & Q(node__isnull=True),
                name="alert_one_open_per_deployment_series",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.rule_name} on {self.series} ({self.state})"

    @property
    def policy_cluster_id(self) -> int | None:
        return self.cluster_id

    @property
    def summary(self) -> str:
        return f"{self.series} = {self.value:g} ({self.comparison} {self.threshold:g})"


class Silence(models.Model):
    """Mute notifications of matching alerts between starts_at and ends_at.

    Empty matchers match everything; a node matcher implies its cluster.
    """

    rule = models.ForeignKey(
        AlertRule, null=True, blank=True, on_delete=models.CASCADE, related_name="silences"
    )
    node = models.ForeignKey(
        "inventory.Node", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    cluster = models.ForeignKey(
        "inventory.Cluster", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    severity = models.CharField(max_length=16, choices=Severity.choices, blank=True, default="")
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    reason = models.CharField(max_length=500)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    policy_cluster_path = "cluster"

    class Meta:
        ordering = ["-ends_at", "-id"]

    def __str__(self) -> str:
        return f"silence {self.pk}: {self.reason[:60]}"

    @property
    def policy_cluster_id(self) -> int | None:
        return self.cluster_id

    def matches(self, alert: Alert) -> bool:
        return (
            (self.rule_id is None or self.rule_id == alert.rule_id)
            and (self.node_id is None or self.node_id == alert.node_id)
            and (self.cluster_id is None or self.cluster_id == alert.cluster_id)
            and (not self.severity or self.severity == alert.severity)
        )


class Delivery(models.Model):
    """One notification of one alert transition to one receiver, with its attempts."""

    class State(models.TextChoices):
        QUEUED = "queued"
        RETRYING = "retrying"
        SENT = "sent"
        FAILED = "failed"

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="deliveries")
    receiver = models.ForeignKey(Receiver, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=16)
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    payload = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    policy_cluster_path = "alert__cluster"

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "deliveries"

    def __str__(self) -> str:
        return f"delivery {self.pk} of alert {self.alert_id} ({self.event}) to {self.receiver_id}"

    @property
    def policy_cluster_id(self) -> int | None:
        return self.alert.cluster_id
