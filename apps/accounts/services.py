"""Account operations shared by the API, the pages and management commands."""

from __future__ import annotations

import secrets

from django.contrib.auth import get_user_model
from django.db import transaction

from apps.accounts.models import RoleBinding
from apps.accounts.roles import Role
from apps.audit import recorder


@transaction.atomic
def ensure_initial_admin(username: str = "admin") -> str | None:
    """Create the first administrator if no user holds a global admin binding.

    Returns the generated password (to print once) or None if nothing was done.
    """
    if RoleBinding.objects.filter(role=Role.ADMIN, cluster__isnull=True).exists():
        return None
    User = get_user_model()
    password = secrets.token_urlsafe(15)
    user, created = User.objects.get_or_create(username=username)
    user.set_password(password)
    user.is_active = True
    user.save()
    RoleBinding.objects.create(role=Role.ADMIN, user=user)
    recorder.record(
        "accounts.initial-admin", target=user, changes={"created": created, "role": Role.ADMIN}
    )
    return password


def deactivate_user(user) -> None:
    """Users are deactivated, never deleted: the audit log keeps naming them."""
    user.is_active = False
    user.save(update_fields=["is_active"])
    user.api_tokens.filter(revoked_at__isnull=True).update(revoked_at=_now())


def _now():
    from django.utils import timezone

    return timezone.now()
