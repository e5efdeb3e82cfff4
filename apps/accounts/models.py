from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from apps.accounts.roles import Role


class RoleBindingQuerySet(models.QuerySet):
    def for_user(self, user) -> RoleBindingQuerySet:
        groups = DirectoryMembership.groups_of(user)
        match = Q(user=user)
        if groups:
            match |= Q(ldap_group__in=groups)
        return self.filter(match)


class RoleBinding(models.Model):
    """Gives a role to a user or to an LDAP group, everywhere or in one cluster."""

    role = models.CharField(max_length=32, choices=Role.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="role_bindings",
    )
    # Stored lower-cased: DNs compare case-insensitively in every directory we meet.
    ldap_group = models.CharField(max_length=512, blank=True, default="")
    cluster = models.ForeignKey(
        "inventory.Cluster",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="role_bindings",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = RoleBindingQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(user__isnull=False) & Q(ldap_group=""))
                | (Q(user__isnull=True) & ~Q(ldap_group="")),
                name="rolebinding_one_subject",
            ),
            models.UniqueConstraint(
                fields=["role", "user", "ldap_group", "cluster"], name="rolebinding_unique"
            ),
        ]

    def __str__(self) -> str:
        subject = self.user.username if self.user_id else f"group {self.ldap_group}"
        scope = f"cluster {self.cluster_id}" if self.cluster_id else "everywhere"
        return f"{self.role} for {subject} {scope}"

    @property
    def policy_cluster_id(self) -> int | None:
        return self.cluster_id


class DirectoryMembership(models.Model):
    """The LDAP groups a user belonged to at their last login (re-read each login)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="directory"
    )
    group_dns = models.JSONField(default=list)
    refreshed_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"directory groups of user {self.user_id}"

    @staticmethod
    def groups_of(user) -> list[str]:
        try:
            return list(user.directory.group_dns)
        except DirectoryMembership.DoesNotExist:
            return []


class ApiTokenQuerySet(models.QuerySet):
    def usable(self):
        return self.filter(revoked_at__isnull=True, expires_at__gt=timezone.now())


class ApiToken(models.Model):
    """A named API token. Only a SHA-256 of its secret is stored."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix})"

    @property
    def state(self) -> str:
        if self.revoked_at:
            return "revoked"
        if self.expires_at <= timezone.now():
            return "expired"
        return "active"


class LoginLock(models.Model):
    """A username or client address locked after repeated login failures."""

    class Scope(models.TextChoices):
        USERNAME = "username"
        ADDRESS = "address"

    scope = models.CharField(max_length=16, choices=Scope.choices)
    key = models.CharField(max_length=255)
    locked_at = models.DateTimeField(auto_now_add=True)
    locked_until = models.DateTimeField()
    unlocked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-locked_at"]
        indexes = [models.Index(fields=["scope", "key", "unlocked_at"])]

    def __str__(self) -> str:
        return f"{self.scope} {self.key} until {self.locked_until:%Y-%m-%d %H:%M}"


class SecondFactor(models.Model):
    """A user's TOTP secret (RFC 6238); confirmed once they typed a first code."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="second_factor"
    )
    secret = models.CharField(max_length=64)
    confirmed_at = models.DateTimeField(null=True, blank=True)
    # The newest 30-second step accepted: a code is good once, never again.
    last_used_step = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"second factor of user {self.user_id}"


class RecoveryCode(models.Model):
    """A one-time recovery code; only its SHA-256 is stored."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="recovery_codes"
    )
    code_hash = models.CharField(max_length=64)
    used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"recovery code {self.pk} of user {self.user_id}"


class PasswordState(models.Model):
    """When a user's password was set, whether they must change it, and the hashes
    of the previous ones (for the no-reuse rule)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="password_state"
    )
    changed_at = models.DateTimeField(default=timezone.now)
    must_change = models.BooleanField(default=False)
    previous_hashes = models.JSONField(default=list)

    def __str__(self) -> str:
        return f"password state of user {self.user_id}"


class LoginRecord(models.Model):
    """Each successful login: shown to the user at their next one, and the list of
    sessions the concurrent-session limit counts."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="login_records"
    )
    time = models.DateTimeField(default=timezone.now)
    address = models.GenericIPAddressField(null=True, blank=True)
    session_key = models.CharField(max_length=40, blank=True, default="")

    class Meta:
        ordering = ["-time", "-id"]

    def __str__(self) -> str:
        return f"login of user {self.user_id} at {self.time:%Y-%m-%d %H:%M}"
