"""pytest fixtures for a real OpenLDAP server and for broken LDAP servers.

Register in ``tests/conftest.py``::

    pytest_plugins = ["tests.support.ldap_fixtures"]

Fixtures:

* ``slapd`` (session): a running :class:`~tests.support.slapd.SlapdServer`
  (``uri``, ``base_dn``, ``people_dn``, ``groups_dn``, ``bind_dn``,
  ``bind_password``, ``user_filter`` ..., ``remove_user_from_group()``).
  Started once per session; shared, so tests that change the directory should
  use ``slapd_fresh`` instead.
* ``slapd_fresh`` (function): the same server, restored to its initial group
  memberships and account states after the test.
* ``ldap_blackhole`` (function): a started :class:`~tests.support.blackhole.BlackholeServer`
  (``uri``), a server that accepts connections and never answers.
* ``ldap_unused_uri`` (function): ``ldap://127.0.0.1:<port>`` with nothing listening.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.blackhole import BlackholeServer, unused_uri
from tests.support.slapd import SlapdError, SlapdServer


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlapdServer]:
    server = SlapdServer(tmp_path_factory.mktemp("slapd"))
    try:
        server.start()
    except SlapdError as exc:
        server.stop()
        pytest.fail(f"could not start the test slapd: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def slapd_fresh(slapd: SlapdServer) -> Iterator[SlapdServer]:
    try:
        yield slapd
    finally:
        slapd.reset()


@pytest.fixture
def ldap_blackhole() -> Iterator[BlackholeServer]:
    with BlackholeServer() as server:
        yield server


@pytest.fixture
def ldap_unused_uri() -> str:
    return unused_uri()
