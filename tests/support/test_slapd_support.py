"""The LDAP test support talks to a real slapd: prove it with python-ldap only (no Django).

Run: ``.venv/bin/python -m pytest tests/support -q -p no:django``
"""

from __future__ import annotations

import time

import ldap
import ldap.filter
import pytest

from tests.support.blackhole import BlackholeServer
from tests.support.slapd import (
    ACTIVE_USER_FILTER,
    EMPTY_GROUP_PLACEHOLDER,
    GROUP_FILTER,
    USER_FILTER,
    SlapdServer,
)

pytest_plugins = ["tests.support.ldap_fixtures"]


def search_user(conn, slapd: SlapdServer, uid: str, user_filter: str = USER_FILTER):
    flt = user_filter % {"user": ldap.filter.escape_filter_chars(uid)}
    return conn.search_s(slapd.people_dn, ldap.SCOPE_SUBTREE, flt, ["uid", "mail", "cn"])


def group_names(conn, slapd: SlapdServer, user_dn: str) -> set[str]:
    flt = f"(&{GROUP_FILTER}(member={ldap.filter.escape_filter_chars(user_dn)}))"
    results = conn.search_s(slapd.groups_dn, ldap.SCOPE_SUBTREE, flt, ["cn"])
    return {attrs["cn"][0].decode() for dn, attrs in results if dn}


def test_server_is_private_and_on_loopback(slapd: SlapdServer):
    assert slapd.uri.startswith("ldap://127.0.0.1:")
    assert slapd.port not in (389, 636)
    assert slapd.pid_file.read_text().strip() == str(slapd.pid)
    assert slapd.config_dir.is_relative_to(slapd.workdir)
    assert slapd.base_dn == "dc=hangar,dc=test"
    assert slapd.people_dn == "ou=people,dc=hangar,dc=test"
    assert slapd.groups_dn == "ou=groups,dc=hangar,dc=test"
    assert slapd.bind_dn == "cn=hangar-bind,ou=services,dc=hangar,dc=test"
    assert slapd.bind_password == "bind-secret"


def test_hangar_env_matches_server(slapd: SlapdServer):
    env = slapd.hangar_env()
    assert env["HANGAR_LDAP_URI"] == slapd.uri
    assert env["HANGAR_LDAP_USER_SEARCH"] == slapd.people_dn
    assert "%(user)s" in env["HANGAR_LDAP_USER_FILTER"]
    assert "pwdAccountLockedTime" in slapd.hangar_env(active_filter=True)["HANGAR_LDAP_USER_FILTER"]


def test_bind_account_can_search_users(slapd: SlapdServer):
    conn = slapd.connect(slapd.bind_dn, slapd.bind_password)
    assert conn.whoami_s() == f"dn:{slapd.bind_dn}"
    results = conn.search_s(
        slapd.people_dn, ldap.SCOPE_SUBTREE, "(objectClass=inetOrgPerson)", ["uid"]
    )
    assert {a["uid"][0].decode() for _dn, a in results} == {"alice", "bob", "carol", "dave"}
    [(dn, attrs)] = search_user(conn, slapd, "alice")
    assert dn == "uid=alice,ou=people,dc=hangar,dc=test"
    assert attrs["mail"] == [b"alice@hangar.test"]
    assert attrs["cn"] == [b"Alice Anderson"]
    conn.unbind_s()


def test_bind_account_cannot_read_passwords(slapd: SlapdServer):
    conn = slapd.service_connection()
    [(_dn, attrs)] = conn.search_s(slapd.user_dn("alice"), ldap.SCOPE_BASE, attrlist=["*"])
    assert "userPassword" not in attrs
    conn.unbind_s()


def test_anonymous_sees_nothing(slapd: SlapdServer):
    conn = slapd.connect()
    with pytest.raises(ldap.NO_SUCH_OBJECT):
        conn.search_s(slapd.people_dn, ldap.SCOPE_SUBTREE, "(uid=alice)")
    conn.unbind_s()


def test_wrong_bind_password_fails(slapd: SlapdServer):
    with pytest.raises(ldap.INVALID_CREDENTIALS):
        slapd.connect(slapd.bind_dn, "not-the-secret")


def test_alice_binds_with_her_password(slapd: SlapdServer):
    conn = slapd.connect(slapd.user_dn("alice"), "alice-pw")
    assert conn.whoami_s() == "dn:uid=alice,ou=people,dc=hangar,dc=test"
    conn.unbind_s()


@pytest.mark.parametrize(
    ("uid", "password"),
    [("alice", "bob-pw"), ("alice", "ALICE-PW"), ("bob", "alice-pw"), ("mallory", "x")],
)
def test_wrong_password_or_unknown_user_fails(slapd: SlapdServer, uid: str, password: str):
    with pytest.raises(ldap.INVALID_CREDENTIALS):
        slapd.connect(slapd.user_dn(uid), password)


def test_wrong_passwords_do_not_lock_the_account(slapd: SlapdServer):
    for _ in range(10):
        with pytest.raises(ldap.INVALID_CREDENTIALS):
            slapd.connect(slapd.user_dn("dave"), "guess")
    slapd.connect(slapd.user_dn("dave"), "dave-pw").unbind_s()


def test_disabled_carol_cannot_bind_with_right_password(slapd: SlapdServer):
    with pytest.raises(ldap.INVALID_CREDENTIALS):
        slapd.connect(slapd.user_dn("carol"), "carol-pw")


def test_active_user_filter_hides_carol(slapd: SlapdServer):
    conn = slapd.service_connection()
    # The plain filter still finds her (the bind is what rejects her) ...
    assert len(search_user(conn, slapd, "carol", USER_FILTER)) == 1
    # ... the stricter filter does not, but still finds active users.
    assert search_user(conn, slapd, "carol", ACTIVE_USER_FILTER) == []
    assert len(search_user(conn, slapd, "alice", ACTIVE_USER_FILTER)) == 1
    conn.unbind_s()


@pytest.mark.parametrize(
    ("uid", "groups"),
    [
        ("alice", {"gpu-operators"}),
        ("bob", {"gpu-viewers"}),
        ("dave", {"auditors", "gpu-operators"}),
        ("carol", set()),
    ],
)
def test_group_membership_lookup(slapd: SlapdServer, uid: str, groups: set[str]):
    conn = slapd.service_connection()
    assert group_names(conn, slapd, slapd.user_dn(uid)) == groups
    conn.unbind_s()
    assert slapd.groups_of(uid) == groups


def test_user_can_look_up_own_groups(slapd: SlapdServer):
    # django-auth-ldap with AUTH_LDAP_BIND_AS_AUTHENTICATING_USER searches as the user.
    conn = slapd.connect(slapd.user_dn("dave"), "dave-pw")
    assert group_names(conn, slapd, slapd.user_dn("dave")) == {"auditors", "gpu-operators"}
    conn.unbind_s()


def test_removing_bob_from_group_is_visible_in_new_search(slapd_fresh: SlapdServer):
    slapd = slapd_fresh
    before = slapd.service_connection()
    assert group_names(before, slapd, slapd.user_dn("bob")) == {"gpu-viewers"}
    before.unbind_s()

    slapd.remove_user_from_group("bob", "gpu-viewers")  # bob was its only member

    after = slapd.service_connection()
    assert group_names(after, slapd, slapd.user_dn("bob")) == set()
    [(_dn, attrs)] = after.search_s(slapd.group_dn("gpu-viewers"), ldap.SCOPE_BASE)
    assert attrs["member"] == [EMPTY_GROUP_PLACEHOLDER.encode()]  # group stays schema-valid
    after.unbind_s()
    assert slapd.members_of("gpu-viewers") == set()
    # bob can still log in; only his rights are gone.
    slapd.connect(slapd.user_dn("bob"), "bob-pw").unbind_s()

    slapd.add_user_to_group("bob", "gpu-viewers")
    assert slapd.members_of("gpu-viewers") == {slapd.user_dn("bob")}


def test_removing_one_of_several_members(slapd_fresh: SlapdServer):
    slapd = slapd_fresh
    slapd.remove_user_from_group("dave", "gpu-operators")
    assert slapd.groups_of("dave") == {"auditors"}
    assert slapd.members_of("gpu-operators") == {slapd.user_dn("alice")}
    slapd.remove_user_from_group("dave", "gpu-operators")  # idempotent


def test_disable_user_then_reset(slapd_fresh: SlapdServer):
    slapd = slapd_fresh
    slapd.disable_user("alice")
    with pytest.raises(ldap.INVALID_CREDENTIALS):
        slapd.connect(slapd.user_dn("alice"), "alice-pw")
    slapd.reset()
    slapd.connect(slapd.user_dn("alice"), "alice-pw").unbind_s()
    with pytest.raises(ldap.INVALID_CREDENTIALS):
        slapd.connect(slapd.user_dn("carol"), "carol-pw")


def test_reset_restored_memberships(slapd: SlapdServer):
    # Runs after the mutating tests above (file order): slapd_fresh cleaned up.
    assert slapd.members_of("gpu-viewers") == {slapd.user_dn("bob")}
    assert slapd.members_of("gpu-operators") == {slapd.user_dn("alice"), slapd.user_dn("dave")}


def test_blackhole_hangs_until_client_timeout(ldap_blackhole: BlackholeServer):
    conn = ldap.initialize(ldap_blackhole.uri)
    conn.set_option(ldap.OPT_NETWORK_TIMEOUT, 1.0)
    conn.set_option(ldap.OPT_TIMEOUT, 1.0)
    started = time.monotonic()
    with pytest.raises(ldap.TIMEOUT):
        conn.simple_bind_s("uid=alice,ou=people,dc=hangar,dc=test", "alice-pw")
    elapsed = time.monotonic() - started
    assert 0.5 < elapsed < 10
    assert ldap_blackhole.accepted >= 1


def test_unused_uri_is_down(ldap_unused_uri: str):
    conn = ldap.initialize(ldap_unused_uri)
    conn.set_option(ldap.OPT_NETWORK_TIMEOUT, 1.0)
    started = time.monotonic()
    with pytest.raises(ldap.SERVER_DOWN):
        conn.simple_bind_s("uid=alice,ou=people,dc=hangar,dc=test", "alice-pw")
    assert time.monotonic() - started < 5


def test_start_and_stop_standalone(tmp_path):
    server = SlapdServer(tmp_path / "own")
    with server:
        uri = server.uri
        proc_pid = server.pid
        server.connect(server.bind_dn, server.bind_password).unbind_s()
    assert server.pid is None
    conn = ldap.initialize(uri)
    conn.set_option(ldap.OPT_NETWORK_TIMEOUT, 1.0)
    with pytest.raises(ldap.SERVER_DOWN):
        conn.simple_bind_s("", "")
    assert proc_pid is not None
