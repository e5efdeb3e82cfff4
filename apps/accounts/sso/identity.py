"""From what an identity server asserts to a Hangar user with directory groups.

SSO groups live in DirectoryMembership beside LDAP group DNs, so role bindings
and project memberships by group work for them unchanged. Each is written
`<protocol>:<attribute>=<value>`, lower-cased (`cas:edupersonaffiliation=staff`,
`oidc:groups=gpu-admins`): the prefix keeps a CAS attribute from ever matching an
LDAP DN or an OIDC claim of the same spelling.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from apps.accounts.models import DirectoryMembership

# Why a login was refused: the audit event's `reason`.
INVALID_USERNAME = "invalid-username"
LOCAL_ACCOUNT = "local-account"
AWAITING_APPROVAL = "awaiting-approval"
INACTIVE = "inactive"

MAX_GROUPS = 200  # an identity server that sends more is misconfigured, not generous


@dataclass
class Identity:
    protocol: str  # "cas" or "oidc"
    username: str
    name: str = ""
    email: str = ""
    groups: list[str] = field(default_factory=list)


class Refused(Exception):
    """The identity server vouched for someone Hangar will not log in."""

    def __init__(self, reason: str, message):
        super().__init__(reason)
        self.reason = reason
        self.message = message


def _values(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(item) for item in value if item is not None and str(item) != ""]
    return [str(value)] if str(value) != "" else []


def _first(attributes: dict, name: str) -> str:
    values = _values(attributes.get(name)) if name else []
    return values[0] if values else ""


def identity_from(protocol: str, username: str, attributes: dict, mapping: dict) -> Identity:
    """Read username, name, e-mail and groups out of `attributes` per `mapping`
    (SSO_CAS or SSO_OIDC, from console/sso.py)."""
    keys = {"cas": ("username_attribute", "name_attribute", "email_attribute")}.get(
        protocol, ("username_claim", "name_claim", "email_claim")
    )
    group_names = mapping.get("group_attributes") or mapping.get("group_claims") or []
    if mapping.get(keys[0]):
        username = _first(attributes, mapping[keys[0]])
    groups = sorted(
        {
            f"{protocol}:{name}={value}".lower()
            for name in group_names
            for value in _values(attributes.get(name))
        }
    )
    return Identity(
        protocol=protocol,
        username=(username or "").strip(),
        name=_first(attributes, mapping.get(keys[1], ""))[:150],
        email=_first(attributes, mapping.get(keys[2], ""))[:254],
        groups=groups[:MAX_GROUPS],
    )


def _valid_username(username: str) -> bool:
    return 0 < len(username) <= 150 and not any(ord(ch) < 32 for ch in username)


def user_for(identity: Identity):
    """The user this identity logs in as, created on first login; raises Refused.

    An existing account with a local password is never entered through SSO: a
    campus account that happens to be called "admin" must not become Hangar's
    admin. Such accounts keep logging in with their password.
    """
    if not _valid_username(identity.username):
        raise Refused(
            INVALID_USERNAME,
            _("The identity server sent no usable username. Ask its administrators to check."),
        )
    model = get_user_model()
    user = model._default_manager.filter(**{model.USERNAME_FIELD: identity.username}).first()
    created = user is None
    if created:
        user = model(**{model.USERNAME_FIELD: identity.username})
        user.set_unusable_password()
        user.is_active = not settings.SSO_APPROVAL_REQUIRED
    elif user.has_usable_password():
        raise Refused(
            LOCAL_ACCOUNT,
            _(
                "A local Hangar account has this username, so it cannot log in through "
                "single sign-on. Log in with its password instead."
            ),
        )
    _store(user, identity)
    # After the commit: an account that waits for approval is kept, for the admin to find.
    if not user.is_active:
        if settings.SSO_APPROVAL_REQUIRED and user.last_login is None:
            raise Refused(
                AWAITING_APPROVAL,
                _(
                    "Your account was created and waits for an administrator's approval. "
                    "Try again once they have activated it."
                ),
            )
        raise Refused(INACTIVE, _("This account is deactivated."))
    return user


@transaction.atomic
def _store(user, identity: Identity) -> None:
    """Name, e-mail and groups as the identity server says today (re-read each login)."""
    user.first_name, user.last_name = identity.name, ""
    if identity.email:
        user.email = identity.email
    user.save()
    DirectoryMembership.objects.update_or_create(
        user=user, defaults={"group_dns": identity.groups, "refreshed_at": timezone.now()}
    )
    user.__dict__.pop("_hangar_rights", None)
