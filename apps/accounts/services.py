"""Account operations shared by the API, the pages and management commands."""

from __future__ import annotations

import secrets

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils.translation import gettext as _

from apps.accounts.models import RoleBinding
from apps.accounts.passwords import require_change
from apps.accounts.roles import DUTY_ROLES, Role, bindable_roles, separation_of_duties
from apps.audit import recorder


class SeparationError(ValueError):
    """A binding that separation of duties forbids; the message is for the person."""


def check_separation(role: str, user=None, ldap_group: str = "") -> None:
    """Refuse a binding that would give one account two duties (三员分立).

    In separation mode `admin` cannot be bound, and an account (or LDAP group)
    holding a system, security or audit administrator role holds no other role.
    """
    if not separation_of_duties():
        return
    if role not in bindable_roles():
        raise SeparationError(
            _(
                "Separation of duties is on: the administrator role is split into the "
                "system, security and audit administrators. Bind one of those instead."
            )
        )
    subject = RoleBinding.objects.filter(user=user) if user else None
    if subject is None:
        subject = RoleBinding.objects.filter(user__isnull=True, ldap_group=ldap_group)
    held = set(subject.values_list("role", flat=True)) - {role}
    if held and (role in DUTY_ROLES or held & DUTY_ROLES):
        raise SeparationError(
            _(
                "Separation of duties is on: this account already holds %(held)s, and a "
                "system, security or audit administrator may hold no other role."
            )
            % {"held": ", ".join(sorted(held))}
        )


@transaction.atomic
def ensure_initial_admin(username: str = "admin") -> str | None:
    """Create the first administrator if no user holds a global admin binding.

    Returns the generated password (to print once) or None if nothing was done.
    """
    # In separation mode the first account is the security administrator, who then
    # creates the system and audit administrators.
    role = Role.SECURITY_ADMIN if separation_of_duties() else Role.ADMIN
    if RoleBinding.objects.filter(role=role, cluster__isnull=True).exists():
        return None
    User = get_user_model()
    password = secrets.token_urlsafe(15)
    user, created = User.objects.get_or_create(username=username)
    user.set_password(password)
    user.is_active = True
    user.save()
    RoleBinding.objects.create(role=role, user=user)
    # A generated password is a first password: its first login must replace it.
    require_change(user)
    recorder.record(
        "accounts.initial-admin", target=user, changes={"created": created, "role": role}
    )
    return password


def deactivate_user(user) -> None:
    """Users are deactivated, never deleted: the audit log keeps naming them."""
    user.is_active = False
    user.save(update_fields=["is_active"])
    user.api_tokens.filter(revoked_at__isnull=True).update(revoked_at=_now())


def activate_user(user) -> None:
    """Let the account log in again (or for the first time, when SSO approval is on).
    API tokens revoked at a deactivation stay revoked."""
    user.is_active = True
    user.save(update_fields=["is_active"])


def _now():
    from django.utils import timezone

    return timezone.now()
