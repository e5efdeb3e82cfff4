from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from apps.inventory.models import Node
from tests.accounts.helpers import fast_password_hashing, use_ldap

__all__ = ["fast_password_hashing"]


@pytest.fixture
def directory(slapd_fresh, settings, monkeypatch):
    """Login configured against the real test slapd, built from HANGAR_LDAP_* variables."""
    use_ldap(settings, monkeypatch, slapd_fresh.hangar_env())
    return slapd_fresh


@pytest.fixture
def browser() -> APIClient:
    """A client that logs in through the form and keeps the session cookie."""
    return APIClient()


@pytest.fixture
def nodes(cluster, other_cluster) -> dict[str, Node]:
    return {
        "in": Node.objects.create(cluster=cluster, hostname="gpu-a1"),
        "out": Node.objects.create(cluster=other_cluster, hostname="gpu-b1"),
    }
