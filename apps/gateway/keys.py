"""Consumer keys: `hk-<prefix>_<secret>`, shown once; only SHA-256 of the key is kept."""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from apps.audit import recorder
from apps.core.i18n import lazy_message
from apps.gateway import snapshot
from apps.gateway.models import ConsumerKey

KEY_PREFIX = "hk-"


class KeyRefused(ValueError):
    """A key can't be made as asked; str() is the reason, for the person."""


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def clean_networks(networks: list[str]) -> list[str]:
    """CIDRs in canonical form; a bad one is refused by name."""
    cleaned = []
    for text in networks:
        try:
            cleaned.append(str(ipaddress.ip_network(str(text).strip(), strict=False)))
        except ValueError:
            raise KeyRefused(
                lazy_message(_("%(network)s is not a network (e.g. 10.8.0.0/16)"), network=text)
            ) from None
    return cleaned


@transaction.atomic
def create_consumer_key(
    *,
    name: str,
    days: int,
    user=None,
    service_account=None,
    routes=(),
    all_routes: bool = False,
    source_networks: list[str] | None = None,
    created_by=None,
    project=None,
    approved: bool = True,
) -> tuple[ConsumerKey, str]:
    """Make a key; returns it and the full key, which is never shown again.

    `approved=False` makes a key that works only once approved (`approve_consumer_key`).
    """
    if not 1 <= days <= settings.GATEWAY_KEY_MAX_DAYS:
        raise KeyRefused(
            lazy_message(
                _("expiry must be between 1 and %(max)d days"), max=settings.GATEWAY_KEY_MAX_DAYS
            )
        )
    if (user is None) == (service_account is None):
        raise KeyRefused(_("a key belongs to a user or to a service account"))
    prefix = secrets.token_hex(6)
    raw = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    key = ConsumerKey.objects.create(
        name=name,
        prefix=prefix,
        key_hash=hash_key(raw),
        user=user,
        service_account=service_account,
        all_routes=all_routes,
        source_networks=clean_networks(source_networks or []),
        expires_at=timezone.now() + timedelta(days=days),
        created_by=created_by,
        project=project,
        approved_at=timezone.now() if approved else None,
        approved_by=created_by if approved else None,
    )
    key.routes.set(routes)
    recorder.describe(
        target=key,
        changes={
            "created": {
                "name": name,
                "prefix": prefix,
                "owner": key.owner_name,
                "routes": "all" if all_routes else sorted(r.name for r in routes),
                "source_networks": key.source_networks,
                "expires_at": key.expires_at.isoformat(),
                "project": project.name if project else None,
                "approved": approved,
            }
        },
    )
    return key, raw


def revoke_consumer_key(key: ConsumerKey) -> None:
    updated = ConsumerKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    key.refresh_from_db(fields=["revoked_at"])
    if updated:
        recorder.describe(target=key, changes={"revoked": True})
        # A filtered UPDATE sends no post_save: tell the gateways here.
        snapshot.publish_on_commit()


def approve_consumer_key(key: ConsumerKey, by) -> bool:
    """Let a pending key work; False when it was not pending (approved, revoked or expired)."""
    updated = ConsumerKey.objects.filter(
        pk=key.pk, approved_at__isnull=True, revoked_at__isnull=True
    ).update(approved_at=timezone.now(), approved_by=by)
    key.refresh_from_db(fields=["approved_at", "approved_by"])
    if updated:
        recorder.describe(target=key, changes={"approved": True})
        snapshot.publish_on_commit()
    return bool(updated)
