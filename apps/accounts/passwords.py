"""Password policy (docs/identity.md): character classes, no reuse of the last N,
expiry and forced change.

The validators plug into Django's AUTH_PASSWORD_VALIDATORS, so every path that
sets a password through `password_validation` (the user API, the change page)
obeys them. `password_change_required` is what the session middleware asks.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib.auth.hashers import check_password
from django.core.exceptions import ValidationError
from django.utils import timezone
from django.utils.translation import gettext as _

from apps.accounts.models import PasswordState


def character_classes(password: str) -> int:
    """How many of lower case, upper case, digits and other characters it uses."""
    return sum(
        (
            any(c.islower() for c in password),
            any(c.isupper() for c in password),
            any(c.isdigit() for c in password),
            any(not c.isalnum() for c in password),
        )
    )


class CharacterClassValidator:
    def validate(self, password: str, user=None) -> None:
        needed = settings.PASSWORD_MIN_CLASSES
        if character_classes(password) < needed:
            raise ValidationError(
                _(
                    "Use at least %(n)d of these kinds of character: lower case, upper case, "
                    "digits, other characters (spaces and punctuation)."
                ),
                params={"n": needed},
            )

    def get_help_text(self) -> str:
        return _("At least %(n)d kinds of character.") % {"n": settings.PASSWORD_MIN_CLASSES}


class HistoryValidator:
    def validate(self, password: str, user=None) -> None:
        if user is None or user.pk is None or not settings.PASSWORD_HISTORY:
            return
        if any(check_password(password, old) for old in recent_hashes(user)):
            raise ValidationError(
                _("Choose a password you have not used for your last %(n)d passwords."),
                params={"n": settings.PASSWORD_HISTORY},
            )

    def password_changed(self, password: str, user=None) -> None:
        # Called by Django after set_password + save through password_validation.
        return None

    def get_help_text(self) -> str:
        return _("Not one of your last %(n)d passwords.") % {"n": settings.PASSWORD_HISTORY}


def state_of(user) -> PasswordState:
    state, _created = PasswordState.objects.get_or_create(user=user)
    return state


def recent_hashes(user) -> list[str]:
    """The current hash and the ones before it, newest first, N in all."""
    hashes = [user.password] if user.password else []
    hashes += state_of(user).previous_hashes
    return hashes[: max(settings.PASSWORD_HISTORY, 0)]


def change_password(user, new_password: str) -> None:
    """Set a new password the user chose: remembered for the history, expiry restarts."""
    state = state_of(user)
    if user.password:
        state.previous_hashes = [user.password, *state.previous_hashes][: settings.PASSWORD_HISTORY]
    user.set_password(new_password)
    user.save(update_fields=["password"])
    state.changed_at = timezone.now()
    state.must_change = False
    state.save(update_fields=["previous_hashes", "changed_at", "must_change"])


def require_change(user) -> None:
    """The next login must choose a new password (a generated or reset one)."""
    state = state_of(user)
    state.must_change = True
    state.save(update_fields=["must_change"])


def password_change_required(user) -> str | None:
    """Why this user must change their password now ("first-login", "expired"), or None.

    Only for passwords Hangar keeps: directory (LDAP) and SSO accounts have none here.
    """
    if not user.has_usable_password():
        return None
    state = PasswordState.objects.filter(user=user).first()
    if state is None:
        return None
    if state.must_change:
        return "first-login"
    max_age = settings.PASSWORD_MAX_AGE_DAYS
    if max_age and state.changed_at < timezone.now() - timedelta(days=max_age):
        return "expired"
    return None
