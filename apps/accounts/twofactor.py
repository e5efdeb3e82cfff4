"""The second factor: TOTP (RFC 6238, through pyotp) and one-time recovery codes.

A code is accepted once: the newest accepted 30-second step is stored under a
row lock, so the same code (or an older one) typed again is refused, even by two
requests at the same moment. Recovery codes are stored as SHA-256 only and each
works once. Who must have a second factor is `HANGAR_REQUIRE_2FA`
(`second_factor_required`); API tokens never ask for one (they are 256-bit
secrets of their own, apps/accounts/tokens.py).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterable

import pyotp
import segno
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.accounts.models import RecoveryCode, SecondFactor
from apps.accounts.roles import GLOBAL_ONLY_ACTIONS, Role, role_actions

RECOVERY_CODES = 10
STEP_SECONDS = 30
# One step either side: a phone's clock a little off still works.
VALID_WINDOW = 1
# The session key that says this login passed (or was excused from) the second factor.
SESSION_VERIFIED = "hangar_2fa_verified"


def has_second_factor(user) -> bool:
    return SecondFactor.objects.filter(user=user, confirmed_at__isnull=False).exists()


def _admin_roles() -> set[str]:
    # "Admins" are the roles that manage something global beyond their own keys.
    managing = GLOBAL_ONLY_ACTIONS - {"audit.view", "gateway.manage"}
    return {role for role, actions in role_actions().items() if actions & managing} | {
        Role.AUDIT_ADMIN
    }


def roles_requiring_second_factor() -> set[str]:
    value = (settings.REQUIRE_2FA or "").strip().lower()
    if value in ("", "none", "off"):
        return set()
    if value == "all":
        return set(Role.values)
    if value == "admins":
        return _admin_roles()
    return {part.strip() for part in value.split(",") if part.strip()}


def second_factor_required(user) -> bool:
    """Does the policy require this user to use a second factor?"""
    from apps.accounts.models import RoleBinding

    required = roles_requiring_second_factor()
    if not required:
        return False
    if required == set(Role.values):
        return True
    held = set(RoleBinding.objects.for_user(user).values_list("role", flat=True))
    return bool(held & required)


def sso_satisfies_second_factor(amr: Iterable[str] | None) -> bool:
    """The hook for SSO logins: does the identity server's `amr` claim count as 2FA?

    Only when HANGAR_SSO_MFA_TRUSTED is on and one of the asserted methods is in
    HANGAR_SSO_MFA_AMR. The SSO login calls this and, when true, calls
    `mark_verified(request)` after `auth.login`.
    """
    if not settings.SSO_MFA_TRUSTED or not amr:
        return False
    if isinstance(amr, str):  # the claim is a list; a lone string is one method
        amr = [amr]
    return bool({str(m).lower() for m in amr} & {m.lower() for m in settings.SSO_MFA_AMR})


def mark_verified(request) -> None:
    request.session[SESSION_VERIFIED] = True


def is_verified(request) -> bool:
    return bool(request.session.get(SESSION_VERIFIED))


def start_enrolment(user) -> SecondFactor:
    """A new secret, unconfirmed until a first code from it is typed. An existing
    confirmed factor stays in force until the new one is confirmed."""
    factor, _ = SecondFactor.objects.get_or_create(user=user, defaults={"secret": ""})
    if factor.confirmed_at is None or not factor.secret:
        factor.secret = pyotp.random_base32()
        factor.save(update_fields=["secret"])
    return factor


def provisioning_uri(factor: SecondFactor) -> str:
    return pyotp.TOTP(factor.secret).provisioning_uri(
        name=factor.user.get_username(), issuer_name=settings.TOTP_ISSUER
    )


def qr_svg(factor: SecondFactor) -> str:
    """The enrolment QR code as inline SVG, drawn here (no external service)."""
    return segno.make(provisioning_uri(factor), error="m").svg_inline(scale=4)


def _accepted_step(secret: str, code: str, after_step: int, now: float) -> int | None:
    code = "".join(code.split())
    if not (code.isdigit() and len(code) == 6):
        return None
    totp = pyotp.TOTP(secret)
    current = int(now // STEP_SECONDS)
    for step in range(current - VALID_WINDOW, current + VALID_WINDOW + 1):
        if step > after_step and secrets.compare_digest(totp.at(step * STEP_SECONDS), code):
            return step
    return None


def confirm_enrolment(user, code: str, now: float | None = None) -> list[str] | None:
    """Confirm the enrolment with a first code; returns fresh recovery codes
    (shown once) or None when the code is wrong."""
    with transaction.atomic():
        factor = SecondFactor.objects.select_for_update().filter(user=user).first()
        if factor is None:
            return None
        step = _accepted_step(factor.secret, code, factor.last_used_step, now or time.time())
        if step is None:
            return None
        factor.last_used_step = step
        factor.confirmed_at = timezone.now()
        factor.save(update_fields=["last_used_step", "confirmed_at"])
        return new_recovery_codes(user)


def verify_code(user, code: str, now: float | None = None) -> bool:
    """A TOTP code at login: right, in time, and not used before."""
    with transaction.atomic():
        factor = (
            SecondFactor.objects.select_for_update()
            .filter(user=user, confirmed_at__isnull=False)
            .first()
        )
        if factor is None:
            return False
        step = _accepted_step(factor.secret, code, factor.last_used_step, now or time.time())
        if step is None:
            return False
        factor.last_used_step = step
        factor.save(update_fields=["last_used_step"])
        return True


def _code_hash(code: str) -> str:
    return hashlib.sha256("".join(code.split()).lower().encode()).hexdigest()


def new_recovery_codes(user) -> list[str]:
    """Replace the user's recovery codes with RECOVERY_CODES new ones."""
    codes = [secrets.token_hex(5) for _ in range(RECOVERY_CODES)]
    RecoveryCode.objects.filter(user=user).delete()
    RecoveryCode.objects.bulk_create(
        [RecoveryCode(user=user, code_hash=_code_hash(code)) for code in codes]
    )
    return codes


def use_recovery_code(user, code: str) -> bool:
    """Spend one recovery code; a used or unknown one is refused."""
    spent = RecoveryCode.objects.filter(
        user=user, code_hash=_code_hash(code), used_at__isnull=True
    ).update(used_at=timezone.now())
    return spent == 1


def verify_second_factor(user, code: str) -> str | None:
    """A code typed at login: "totp" or "recovery" for what it was, None if refused."""
    if verify_code(user, code):
        return "totp"
    if use_recovery_code(user, code):
        return "recovery"
    return None


def remove_second_factor(user) -> None:
    SecondFactor.objects.filter(user=user).delete()
    RecoveryCode.objects.filter(user=user).delete()
