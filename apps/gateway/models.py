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


class ServiceAccount(models.Model):
    """An application (a course assistant, a library search) that owns keys of its own."""

    name = models.CharField(max_length=100, unique=True)
    description = models.CharField(max_length=500, blank=True, default="")
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
        return self.filter(revoked_at__isnull=True, expires_at__gt=timezone.now())


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
        return "active"
