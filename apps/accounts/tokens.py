"""API tokens: `hgr_<prefix>_<secret>`; only SHA-256(secret) is stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from apps.accounts.models import ApiToken
from apps.core.i18n import lazy_message

TOKEN_PREFIX = "hgr_"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_api_token(user, name: str, days: int) -> tuple[ApiToken, str]:
    """Create a token; returns it and the full secret, which is never shown again."""
    if not 1 <= days <= settings.API_TOKEN_MAX_DAYS:
        raise ValueError(
            lazy_message(
                _("expiry must be between 1 and %(max)d days"), max=settings.API_TOKEN_MAX_DAYS
            )
        )
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user,
        name=name,
        prefix=prefix,
        secret_hash=hash_secret(secret),
        expires_at=timezone.now() + timedelta(days=days),
    )
    return token, f"{TOKEN_PREFIX}{prefix}_{secret}"


def user_for_api_token(raw: str):
    """The active user a presented token belongs to, or None."""
    if not raw.startswith(TOKEN_PREFIX):
        return None
    prefix, _sep, secret = raw[len(TOKEN_PREFIX) :].partition("_")
    if not prefix or not secret:
        return None
    token = ApiToken.objects.usable().select_related("user").filter(prefix=prefix).first()
    if token is None or not hmac.compare_digest(token.secret_hash, hash_secret(secret)):
        return None
    if not token.user.is_active:
        return None
    now = timezone.now()
    # Touch last-use at most once a minute: a busy integration must not write per call.
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        # After the request's transaction (AuditMiddleware's), not in it: a view
        # that waits on a node would hold this row locked, and every other request
        # with the token would wait behind it.
        transaction.on_commit(lambda: ApiToken.objects.filter(pk=token.pk).update(last_used_at=now))
    return token.user


def revoke_api_token(token: ApiToken) -> None:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
