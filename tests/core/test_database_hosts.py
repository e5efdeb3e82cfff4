"""HANGAR_DATABASE_URL with several hosts: libpq picks the one that takes writes.

Real servers (tests/support/servers.py): a primary and its streaming standby,
listed standby first, and a host that is down, listed first too.
"""

from __future__ import annotations

import pytest
from django.db.utils import ConnectionHandler

from console import config
from console.config import ConfigError
from tests.support import processes
from tests.support.servers import Servers


@pytest.fixture(scope="module")
def primary_and_standby():
    servers = Servers()
    try:
        primary = servers.postgres_primary("primary")
        standby = servers.postgres_standby("standby", primary)
        yield primary, standby
    finally:
        servers.close()


@pytest.fixture
def connect(monkeypatch, tmp_path, django_db_blocker):
    """Django's own PostgreSQL backend, connected with the settings the URL makes."""

    def connect(url: str) -> tuple[bool, int]:
        monkeypatch.setenv("HANGAR_DATABASE_URL", url)
        connection = ConnectionHandler({"default": config.database(tmp_path)})["default"]
        # Not the test database: servers of this module's own.
        with django_db_blocker.unblock():
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_is_in_recovery(), inet_server_port()")
                    return cursor.fetchone()
            finally:
                connection.close()

    return connect


def test_several_hosts_become_libpq_host_and_port_lists(monkeypatch, tmp_path):
    monkeypatch.setenv(
        "HANGAR_DATABASE_URL",
        "postgres://hangar:pw@db1:5432,db2:5433,[fd00::3]/hangar?target_session_attrs=read-write",
    )
    found = config.database(tmp_path)
    assert (found["HOST"], found["PORT"]) == ("db1,db2,fd00::3", "5432,5433,5432")
    assert (found["USER"], found["PASSWORD"], found["NAME"]) == ("hangar", "pw", "hangar")
    # The URL's own option, beside the connect timeout every PostgreSQL URL gets
    # (a host that is gone must not hold a request longer: docs/reliability.md).
    assert found["OPTIONS"] == {"target_session_attrs": "read-write", "connect_timeout": 5}
    assert found["CONN_HEALTH_CHECKS"] is True


def test_a_host_without_a_usable_port_is_refused_with_an_example(monkeypatch, tmp_path):
    monkeypatch.setenv("HANGAR_DATABASE_URL", "postgres://u@db1:5432,db2:x/hangar")
    with pytest.raises(ConfigError, match="host1:5432,host2:5432"):
        config.database(tmp_path)


def test_the_standby_listed_first_is_passed_over_for_the_primary(primary_and_standby, connect):
    primary, standby = primary_and_standby
    url = (
        f"postgres://postgres@127.0.0.1:{standby.port},127.0.0.1:{primary.port}/postgres"
        "?target_session_attrs=read-write"
    )
    assert connect(url) == (False, primary.port)


def test_a_host_that_is_down_is_passed_over(primary_and_standby, connect):
    primary, _ = primary_and_standby
    down = processes.free_port()
    url = (
        f"postgres://postgres@127.0.0.1:{down},127.0.0.1:{primary.port}/postgres"
        "?target_session_attrs=read-write"
    )
    assert connect(url) == (False, primary.port)


def test_without_read_write_the_first_host_that_answers_is_used(primary_and_standby, connect):
    """Why the setting matters: a standby listed first would otherwise get the writes."""
    primary, standby = primary_and_standby
    url = f"postgres://postgres@127.0.0.1:{standby.port},127.0.0.1:{primary.port}/postgres"
    assert connect(url) == (True, standby.port)
