"""Turn HANGAR_LDAP_* variables into django-auth-ldap settings.

LDAP is off when HANGAR_LDAP_URI is unset. Timeouts are short on purpose: a
directory that is down or hung must not hold the login page (docs/identity.md).
"""

from __future__ import annotations

from console import config
from console.config import PREFIX, ConfigError

GROUP_TYPES = {"groupofnames", "activedirectory", "posixgroup"}


def ldap_settings() -> dict:
    uri = config.raw("LDAP_URI")
    if uri is None:
        return {}
    if not uri.startswith(("ldap://", "ldaps://")):
        raise ConfigError(f"{PREFIX}LDAP_URI={uri!r} must start with ldap:// or ldaps://")
    import ldap
    from django_auth_ldap.config import (
        ActiveDirectoryGroupType,
        GroupOfNamesType,
        LDAPSearch,
        PosixGroupType,
    )

    user_base = config.raw("LDAP_USER_SEARCH")
    if user_base is None:
        raise ConfigError(f"{PREFIX}LDAP_USER_SEARCH (the base DN of users) is required with LDAP")
    user_filter = config.raw("LDAP_USER_FILTER", "(uid=%(user)s)")
    if "%(user)s" not in user_filter:
        raise ConfigError(f"{PREFIX}LDAP_USER_FILTER must contain %(user)s")
    timeout = config.integer("LDAP_TIMEOUT", 3, minimum=1)
    group_type = (config.raw("LDAP_GROUP_TYPE", "groupOfNames") or "").lower()
    if group_type not in GROUP_TYPES:
        raise ConfigError(
            f"{PREFIX}LDAP_GROUP_TYPE must be one of groupOfNames, activeDirectory, posixGroup"
        )

    settings: dict = {
        "AUTH_LDAP_SERVER_URI": uri,
        "AUTH_LDAP_BIND_DN": config.raw("LDAP_BIND_DN", ""),
        "AUTH_LDAP_BIND_PASSWORD": config.raw("LDAP_BIND_PASSWORD", ""),
        # The filter is escaped by django-auth-ldap (ldap.filter.escape_filter_chars).
        "AUTH_LDAP_USER_SEARCH": LDAPSearch(user_base, ldap.SCOPE_SUBTREE, user_filter),
        "AUTH_LDAP_START_TLS": config.boolean("LDAP_START_TLS", False),
        "AUTH_LDAP_USER_ATTR_MAP": {"first_name": "givenName", "last_name": "sn", "email": "mail"},
        "AUTH_LDAP_ALWAYS_UPDATE_USER": True,
        "AUTH_LDAP_CACHE_TIMEOUT": 0,
        "AUTH_LDAP_GLOBAL_OPTIONS": {ldap.OPT_NETWORK_TIMEOUT: timeout, ldap.OPT_TIMEOUT: timeout},
        "AUTH_LDAP_CONNECTION_OPTIONS": {
            ldap.OPT_NETWORK_TIMEOUT: timeout,
            ldap.OPT_TIMEOUT: timeout,
            ldap.OPT_REFERRALS: 0,
        },
    }
    group_base = config.raw("LDAP_GROUP_SEARCH")
    if group_base is not None:
        group_filter = config.raw("LDAP_GROUP_FILTER")
        if group_type == "activedirectory":
            kind = ActiveDirectoryGroupType()
            group_filter = group_filter or "(objectClass=group)"
        elif group_type == "posixgroup":
            kind = PosixGroupType()
            group_filter = group_filter or "(objectClass=posixGroup)"
        else:
            kind = GroupOfNamesType()
            group_filter = group_filter or "(objectClass=groupOfNames)"
        settings["AUTH_LDAP_GROUP_SEARCH"] = LDAPSearch(
            group_base, ldap.SCOPE_SUBTREE, group_filter
        )
        settings["AUTH_LDAP_GROUP_TYPE"] = kind
    return settings
