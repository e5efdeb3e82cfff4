"""LDAP login through django-auth-ldap, with group DNs kept for role bindings."""

from __future__ import annotations

import ldap
from django.utils import timezone
from django_auth_ldap.backend import LDAPBackend, ldap_error

from apps.accounts.models import DirectoryMembership

UNREACHABLE = (ldap.SERVER_DOWN, ldap.TIMEOUT, ldap.CONNECT_ERROR, ldap.TIMELIMIT_EXCEEDED)


class HangarLDAPBackend(LDAPBackend):
    def authenticate(self, request, username=None, password=None, **kwargs):
        # Control characters have no place in a username; refuse before LDAP sees them.
        if not username or any(ord(ch) < 32 for ch in username) or len(username) > 150:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)

    def authenticate_ldap_user(self, ldap_user, password):
        user = super().authenticate_ldap_user(ldap_user, password)
        if user is not None:
            groups = sorted(dn.lower() for dn in (ldap_user.group_dns or ()))
            DirectoryMembership.objects.update_or_create(
                user=user, defaults={"group_dns": groups, "refreshed_at": timezone.now()}
            )
            user.__dict__.pop("_hangar_rights", None)
        return user


def _flag_unreachable(sender, context, user, request=None, exception=None, **kwargs):
    if request is not None and isinstance(exception, UNREACHABLE):
        request.ldap_unreachable = True


ldap_error.connect(_flag_unreachable, dispatch_uid="hangar-ldap-unreachable")
