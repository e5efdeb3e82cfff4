"""Shared fixtures: users with roles, API clients, and real console processes."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from apps.accounts.models import RoleBinding
from apps.inventory import broker
from apps.inventory.models import Cluster
from tests.support import processes

# tests/ha (`make ha`) starts Patroni, etcd and Sentinels and kills them, minutes per
# case: not part of `make test` (docs/ha.md).

pytest_plugins = ["tests.support.ldap_fixtures"]

# The chaos suite breaks a live stack of its own and needs root: `make chaos`
# (tests/chaos/pytest.ini, docs/reliability.md), not part of `make test`.
collect_ignore = ["chaos"]
# The HA proof builds clusters in network namespaces: `make ha` (docs/ha.md).
if not os.environ.get("HANGAR_HA_TESTS"):
    collect_ignore.append("ha")


@pytest.fixture(autouse=True)
def _clean_redis_state(settings):
    """Each test starts with no login counters or live telemetry left by another."""
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    keys = list(client.scan_iter("hangar:*"))
    if keys:
        client.delete(*keys)
    yield
    # Node broker identities (ACL users) are server-wide: none outlives its test.
    for node_id in broker.existing_identities(client):
        broker.remove_identity(node_id, client)


@pytest.fixture(autouse=True)
def _second_factor_policy_off(settings):
    """Tests log admins in with a password alone; the second-factor tests
    (tests/accounts/test_second_factor.py) turn the default policy back on."""
    settings.REQUIRE_2FA = "none"


@pytest.fixture
def cluster(db) -> Cluster:
    return Cluster.objects.create(name="campus-a", description="Main campus", site="DC1")


@pytest.fixture
def other_cluster(db) -> Cluster:
    return Cluster.objects.create(name="campus-b", description="Second site", site="DC2")


@pytest.fixture
def make_user(db):
    """make_user("ann", ("operator", cluster), "viewer") -> a user with those bindings."""

    def make(username: str, *roles, password: str = "correct horse battery staple"):
        user = get_user_model().objects.create_user(username, password=password)
        for role in roles:
            role_name, scope = role if isinstance(role, tuple) else (role, None)
            RoleBinding.objects.create(role=role_name, user=user, cluster=scope)
        return user

    return make


@pytest.fixture
def admin_user(make_user):
    return make_user("root-admin", "admin")


@pytest.fixture
def client_for():
    def build(user) -> APIClient:
        api = APIClient()
        if user is not None:
            api.force_authenticate(user)
        return api

    return build


@pytest.fixture
def admin_api(admin_user, client_for) -> APIClient:
    return client_for(admin_user)


@pytest.fixture
def daphne(transactional_db, tmp_path):
    """A real Daphne serving the console against the test database."""
    port = processes.free_port()
    proc = processes.start(
        [
            str(processes.BIN / "daphne"),
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "console.asgi:application",
        ],
        processes.console_env(HANGAR_ALLOWED_HOSTS="127.0.0.1,localhost"),
        tmp_path / "daphne.log",
    )
    url = f"http://127.0.0.1:{port}"
    processes.wait_for(
        lambda: urllib.request.urlopen(f"{url}/healthz", timeout=2).status == 200,
        what="daphne to answer /healthz",
        process=proc,
    )
    proc.url = url
    yield proc
    processes.stop(proc)


@pytest.fixture
def console_worker(transactional_db, tmp_path):
    """A real Celery worker for the console's queue, against the test database."""
    proc = processes.start(
        [
            str(processes.BIN / "celery"),
            "-A",
            "console.celery",
            "worker",
            "-Q",
            "console",
            "--pool",
            "solo",
            "-n",
            f"console-test-{processes.free_port()}@%h",
            "-l",
            "info",
            "--without-gossip",
            "--without-mingle",
        ],
        processes.console_env(),
        tmp_path / "console-worker.log",
    )
    processes.wait_for(
        lambda: b"ready" in Path(proc.log_path).read_bytes(),
        what="the console Celery worker",
        process=proc,
    )
    yield proc
    processes.stop(proc)
