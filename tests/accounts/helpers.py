"""Helpers shared by the identity tests (LDAP settings, logging in through the form)."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from apps.accounts.ldap import HangarLDAPBackend

LDAP_BACKEND = f"{HangarLDAPBackend.__module__}.{HangarLDAPBackend.__name__}"
UNREACHABLE_MESSAGE = "The directory server is unreachable"
WRONG_CREDENTIALS = "Wrong username or password."


def use_ldap(settings, monkeypatch, env: dict[str, str]) -> dict:
    """Configure login exactly as console/settings.py does from HANGAR_LDAP_* variables.

    The variables go through console.ldap.ldap_settings(), so that function is
    what these tests exercise, not a hand-written copy of its output.
    """
    from console.ldap import ldap_settings

    for name in list(env):
        monkeypatch.setenv(name, env[name])
    monkeypatch.setenv("HANGAR_LDAP_TIMEOUT", env.get("HANGAR_LDAP_TIMEOUT", "1"))
    built = ldap_settings()
    assert built, "HANGAR_LDAP_URI was set, so LDAP must be on"
    for name, value in built.items():
        setattr(settings, name, value)
    settings.AUTHENTICATION_BACKENDS = [LDAP_BACKEND, "django.contrib.auth.backends.ModelBackend"]
    return built


def login(client: APIClient, username: str, password: str, address: str = "127.0.0.1"):
    """POST the login form; returns the response (302 on success)."""
    return client.post("/login/", {"username": username, "password": password}, REMOTE_ADDR=address)


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """PBKDF2 at production strength costs ~0.3 s per login; these tests log in a lot."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
