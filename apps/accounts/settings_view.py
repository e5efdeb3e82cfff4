"""The identity settings in force, as the security policy page shows them."""

from __future__ import annotations

from django.conf import settings
from django.utils.translation import gettext as _

from apps.accounts.roles import separation_of_duties
from apps.accounts.twofactor import roles_requiring_second_factor


def security_settings() -> list[tuple[str, str, str]]:
    """(label, value, environment variable) for each setting, in reading order."""
    never = _("never")
    return [
        (
            _("Minimum password length"),
            str(_min_length()),
            "HANGAR_PASSWORD_MIN_LENGTH",
        ),
        (
            _("Kinds of character a password needs"),
            str(settings.PASSWORD_MIN_CLASSES),
            "HANGAR_PASSWORD_MIN_CLASSES",
        ),
        (
            _("Password expiry (days)"),
            str(settings.PASSWORD_MAX_AGE_DAYS or never),
            "HANGAR_PASSWORD_MAX_AGE_DAYS",
        ),
        (
            _("Previous passwords that cannot be reused"),
            str(settings.PASSWORD_HISTORY),
            "HANGAR_PASSWORD_HISTORY",
        ),
        (
            _("Logout after inactivity (minutes)"),
            str(settings.IDLE_LOGOUT_MINUTES),
            "HANGAR_IDLE_LOGOUT_MINUTES",
        ),
        (
            _("Sessions per user at once"),
            str(settings.MAX_SESSIONS_PER_USER or _("no limit")),
            "HANGAR_MAX_SESSIONS_PER_USER",
        ),
        (
            _("Roles that must use a second factor"),
            ", ".join(sorted(roles_requiring_second_factor())) or _("none"),
            "HANGAR_REQUIRE_2FA",
        ),
        (
            _("Failed logins before a lock"),
            str(settings.LOGIN_FAILURE_LIMIT),
            "HANGAR_LOGIN_FAILURE_LIMIT",
        ),
        (
            _("Separation of duties"),
            _("on") if separation_of_duties() else _("off"),
            "HANGAR_SEPARATION_OF_DUTIES",
        ),
        (
            _("Audit forwarding"),
            settings.AUDIT_FORWARD or _("off"),
            "HANGAR_AUDIT_FORWARD",
        ),
        (
            _("Audit events kept in the database (days)"),
            str(settings.AUDIT_HOT_DAYS),
            "HANGAR_AUDIT_HOT_DAYS",
        ),
    ]


def _min_length() -> int:
    for validator in settings.AUTH_PASSWORD_VALIDATORS:
        if validator["NAME"].endswith("MinimumLengthValidator"):
            return validator.get("OPTIONS", {}).get("min_length", 8)
    return 8
