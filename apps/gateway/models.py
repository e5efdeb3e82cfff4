"""Routes (the model names clients send) and consumer keys (who may send them).

The gateway process never reads these tables on a request: it serves from the
snapshot that apps/gateway/snapshot.py builds from them and publishes in Redis.
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.utils import timezone

ROUTE_NAME = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,99}$",
    "A route name is what clients send as `model`: letters, digits and ._:/@+- "
    "(at most 100, starting with a letter or digit).",
)


class Route(models.Model):
    name = models.CharField(max_length=100, unique=True, validators=[ROUTE_NAME])
    description = models.CharField(max_length=500, blank=True, default="")
    # Used when none of this route's deployments has a ready worker.
    fallback = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="fallback_for"
    )
    enabled = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class RouteTarget(models.Model):
    """One deployment behind a route, with its share of the route's requests."""

    route = models.ForeignKey(Route, on_delete=models.CASCADE, related_name="targets")
    deployment = models.ForeignKey(
        "deployments.Deployment", on_delete=models.PROTECT, related_name="route_targets"
    )
    weight = models.PositiveSmallIntegerField(
        default=100, validators=[MinValueValidator(0), MaxValueValidator(1000)]
    )

    class Meta:
        ordering = ["route", "-weight", "pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["route", "deployment"], name="one_target_per_deployment"
            )
        ]

    def __str__(self) -> str:
        return f"{self.route.name} -> {self.deployment.name} ({self.weight})"


PROJECT_NAME = RegexValidator(
    r"^[a-z0-9][a-z0-9._-]{0,63}$",
    "A project's name is lower-case letters, digits and ._- (at most 64, starting with "
    "a letter or digit), e.g. cs-dept or course-nlp-2026.",
)


class Project(models.Model):
    """Who shares the appliance: a department, a course, a research group, an application.

    Its weight is its share when a deployment is saturated (docs/limits.md): a
    project of weight 300 is served three times as many tokens as one of 100.
    """

    name = models.CharField(max_length=64, unique=True, validators=[PROJECT_NAME])
    title = models.CharField(max_length=200, blank=True, default="")
    description = models.CharField(max_length=500, blank=True, default="")
    weight = models.PositiveIntegerField(
        default=100, validators=[MinValueValidator(1), MaxValueValidator(100000)]
    )
    # A member's new key works only once an owner approves it.
    require_approval = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ProjectRole(models.TextChoices):
    MEMBER = "member", "Member"
    OWNER = "owner", "Owner"


class ProjectMember(models.Model):
    """A user, or an LDAP group (a whole department at once), in a project."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="members")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="project_memberships",
    )
    ldap_group = models.CharField(max_length=512, blank=True, default="")
    role = models.CharField(max_length=10, choices=ProjectRole.choices, default=ProjectRole.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project", "-role", "pk"]
        constraints = [
            models.CheckConstraint(
                condition=(models.Q(user__isnull=False) & models.Q(ldap_group=""))
                | (models.Q(user__isnull=True) & ~models.Q(ldap_group="")),
                name="member_is_user_or_group",
            ),
            models.UniqueConstraint(
                fields=["project", "user", "ldap_group"], name="one_membership_per_subject"
            ),
        ]

    def __str__(self) -> str:
        subject = self.user.get_username() if self.user_id else f"group {self.ldap_group}"
        return f"{subject} in {self.project.name} ({self.role})"


class ServiceAccount(models.Model):
    """An application (a course assistant, a library search) that owns keys of its own."""

    name = models.CharField(max_length=100, unique=True)
    description = models.CharField(max_length=500, blank=True, default="")
    project = models.ForeignKey(
        Project, null=True, blank=True, on_delete=models.PROTECT, related_name="service_accounts"
    )
    is_active = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ConsumerKeyQuerySet(models.QuerySet):
    def usable(self):
        return self.filter(
            revoked_at__isnull=True, approved_at__isnull=False, expires_at__gt=timezone.now()
        )


class ConsumerKey(models.Model):
    """`hk-<prefix>_<secret>`; only SHA-256 of the whole key is stored."""

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64, unique=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="consumer_keys",
    )
    service_account = models.ForeignKey(
        ServiceAccount, null=True, blank=True, on_delete=models.CASCADE, related_name="keys"
    )
    # The project whose limits, share and usage the key counts under (none: only
    # its own and its user's limits apply; docs/limits.md).
    project = models.ForeignKey(
        Project, null=True, blank=True, on_delete=models.PROTECT, related_name="keys"
    )
    # Set when the key may be used; a key of a project that requires approval
    # starts without it.
    approved_at = models.DateTimeField(null=True, blank=True)
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    all_routes = models.BooleanField(default=False)
    routes = models.ManyToManyField(Route, blank=True, related_name="keys")
    # CIDRs the key may be used from; empty: anywhere.
    source_networks = models.JSONField(default=list, blank=True)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ConsumerKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(user__isnull=False, service_account__isnull=True)
                | models.Q(user__isnull=True, service_account__isnull=False),
                name="key_has_one_owner",
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} (hk-{self.prefix})"

    @property
    def owner_name(self) -> str:
        return self.user.get_username() if self.user_id else f"service:{self.service_account.name}"

    @property
    def state(self) -> str:
        if self.revoked_at:
            return "revoked"
        if self.expires_at <= timezone.now():
            return "expired"
        if self.approved_at is None:
            return "pending"
        return "active"


class GatewayPolicy(models.Model):
    """The site's rules for self-service keys; one row (pk 1), made on first read."""

    self_service = models.BooleanField(default=True)
    max_key_days = models.PositiveIntegerField(
        default=180, validators=[MinValueValidator(1), MaxValueValidator(3650)]
    )
    # Consumers without a project may make keys only when this is on.
    keys_without_project = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return "gateway policy"

    @classmethod
    def current(cls) -> GatewayPolicy:
        return cls.objects.get_or_create(pk=1)[0]


class LimitScope(models.TextChoices):
    KEY = "key", "One key"
    USER = "user", "One user (all their keys)"
    PROJECT = "project", "The project (all its keys together)"
    EACH_MEMBER = "each-member", "Each member of the project"
    EACH_KEY = "each-key", "Each key of the project"


LIMIT_FIELDS = (
    "requests_per_minute",
    "tokens_per_minute",
    "tokens_per_day",
    "tokens_per_week",
    "concurrent_requests",
)


class Limit(models.Model):
    """Ceilings for one subject, optionally on one route only; every field is optional.

    A request is judged against every limit that applies to it, all at once
    (apps/gateway/proxy/limits.py); docs/limits.md has the rules.
    """

    scope = models.CharField(max_length=12, choices=LimitScope.choices)
    key = models.ForeignKey(
        ConsumerKey, null=True, blank=True, on_delete=models.CASCADE, related_name="limits"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="gateway_limits",
    )
    project = models.ForeignKey(
        Project, null=True, blank=True, on_delete=models.CASCADE, related_name="limits"
    )
    # Only requests to this route count and are held (none: every route).
    route = models.ForeignKey(
        Route, null=True, blank=True, on_delete=models.CASCADE, related_name="limits"
    )
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveBigIntegerField(null=True, blank=True)
    tokens_per_day = models.PositiveBigIntegerField(null=True, blank=True)
    tokens_per_week = models.PositiveBigIntegerField(null=True, blank=True)
    concurrent_requests = models.PositiveIntegerField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["scope", "pk"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(
                        scope="key", key__isnull=False, user__isnull=True, project__isnull=True
                    )
                    | models.Q(
                        scope="user", key__isnull=True, user__isnull=False, project__isnull=True
                    )
                    | models.Q(
                        scope__in=("project", "each-member", "each-key"),
                        key__isnull=True,
                        user__isnull=True,
                        project__isnull=False,
                    )
                ),
                name="limit_subject_matches_scope",
            ),
            models.UniqueConstraint(
                fields=["scope", "key", "user", "project", "route"],
                nulls_distinct=False,
                name="one_limit_per_subject_and_route",
            ),
        ]

    def __str__(self) -> str:
        subject = self.key or self.user or self.project
        route = f" on {self.route.name}" if self.route_id else ""
        return f"{self.get_scope_display()}: {subject}{route}"

    def values(self) -> dict[str, int]:
        return {f: getattr(self, f) for f in LIMIT_FIELDS if getattr(self, f) is not None}


class UsageMinute(models.Model):
    """What one key did on one route, deployment and worker in one minute, by status class.

    Written in bulk from the gateways' per-minute counters in Redis
    (apps/gateway/usage.py), never one row per request. A late report for a
    minute already written adds another row; reports add rows up.
    """

    minute = models.DateTimeField(db_index=True)
    key = models.ForeignKey(ConsumerKey, null=True, on_delete=models.SET_NULL, related_name="usage")
    # Copied from the key when written, so a report by project or user needs no join
    # and survives the key's deletion.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    service_account = models.ForeignKey(
        ServiceAccount, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    project = models.ForeignKey(Project, null=True, on_delete=models.SET_NULL, related_name="+")
    route = models.CharField(max_length=100)
    deployment = models.ForeignKey(
        "deployments.Deployment", null=True, on_delete=models.SET_NULL, related_name="+"
    )
    worker_id = models.BigIntegerField(null=True)
    status = models.CharField(max_length=3)  # 2xx, 4xx, 5xx, or 429 for the gateway's own
    requests = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    first_token_ms = models.PositiveBigIntegerField(default=0)  # summed over streams
    streams = models.PositiveIntegerField(default=0)
    duration_ms = models.PositiveBigIntegerField(default=0)  # summed
    queued_ms = models.PositiveBigIntegerField(default=0)  # summed

    class Meta:
        ordering = ["minute", "pk"]
        indexes = [
            models.Index(fields=["project", "minute"]),
            models.Index(fields=["user", "minute"]),
            models.Index(fields=["key", "minute"]),
            models.Index(fields=["deployment", "minute"]),
        ]

    def __str__(self) -> str:
        return f"usage of key {self.key_id} on {self.route} at {self.minute:%Y-%m-%d %H:%M}"


class RequestRecord(models.Model):
    """One request, when the optional per-request log is on (off by default).

    Never holds a prompt or a completion: who, what route, how it ended and
    how many tokens.
    """

    at = models.DateTimeField(db_index=True)
    request_id = models.CharField(max_length=40)
    key = models.ForeignKey(ConsumerKey, null=True, on_delete=models.SET_NULL, related_name="+")
    project = models.ForeignKey(Project, null=True, on_delete=models.SET_NULL, related_name="+")
    route = models.CharField(max_length=100)
    deployment_id = models.BigIntegerField(null=True)
    worker_id = models.BigIntegerField(null=True)
    status = models.PositiveSmallIntegerField()
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    first_token_ms = models.PositiveIntegerField(null=True)
    duration_ms = models.PositiveIntegerField(default=0)
    queued_ms = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"request {self.request_id} ({self.status})"


class EnergyMinute(models.Model):
    """GPU time and energy one deployment's workers used in one minute (docs/limits.md)."""

    minute = models.DateTimeField()
    deployment = models.ForeignKey(
        "deployments.Deployment", on_delete=models.CASCADE, related_name="energy"
    )
    gpu_seconds = models.FloatField(default=0)
    joules = models.FloatField(default=0)

    class Meta:
        ordering = ["minute", "deployment"]
        constraints = [
            models.UniqueConstraint(fields=["minute", "deployment"], name="one_energy_row")
        ]

    def __str__(self) -> str:
        return f"energy of deployment {self.deployment_id} at {self.minute:%Y-%m-%d %H:%M}"
