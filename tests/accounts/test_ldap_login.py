"""LDAP login against a real OpenLDAP slapd: who gets in, with which groups and rights."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from apps.accounts.models import DirectoryMembership, RoleBinding
from apps.audit.models import AuditEvent
from console.config import ConfigError
from console.ldap import ldap_settings
from tests.accounts.helpers import UNREACHABLE_MESSAGE, WRONG_CREDENTIALS, login, use_ldap

pytestmark = pytest.mark.django_db

OPERATORS = "cn=gpu-operators,ou=groups,dc=hangar,dc=test"


def test_ldap_user_logs_in_and_their_group_dns_are_stored(directory, browser):
    response = login(browser, "alice", "alice-pw")

    assert response.status_code == 302
    alice = get_user_model().objects.get(username="alice")
    assert alice.email == "alice@hangar.test"
    assert alice.get_full_name() == "Alice Anderson"
    assert not alice.has_usable_password(), "LDAP users must not get a local password"
    assert DirectoryMembership.groups_of(alice) == [OPERATORS]
    assert browser.get("/api/v1/me/").json()["username"] == "alice"


def test_group_binding_scoped_to_a_cluster_gives_rights_only_there(
    directory, browser, cluster, other_cluster, nodes
):
    RoleBinding.objects.create(role="operator", ldap_group=OPERATORS, cluster=cluster)

    assert login(browser, "alice", "alice-pw").status_code == 302

    me = browser.get("/api/v1/me/").json()
    assert me["rights"]["global"] == []
    assert me["rights"]["clusters"] == {str(cluster.pk): ["operator"]}
    assert "deployments.operate" in me["rights"]["cluster_actions"][str(cluster.pk)]
    clusters = browser.get("/api/v1/clusters/").json()["results"]
    assert [c["name"] for c in clusters] == [cluster.name]
    listed_nodes = browser.get("/api/v1/nodes/").json()["results"]
    assert [n["hostname"] for n in listed_nodes] == ["gpu-a1"]
    assert browser.get(f"/api/v1/nodes/{nodes['out'].pk}/").status_code == 404
    # Draining needs inventory.change, which an operator has nowhere: refused outright.
    assert browser.post(f"/api/v1/nodes/{nodes['in'].pk}/drain/").status_code == 403
    assert (
        browser.patch(f"/api/v1/clusters/{other_cluster.pk}/", {"description": "x"}).status_code
        == 403
    )


def test_removing_the_user_from_the_directory_group_removes_rights_at_next_login(
    directory, browser, cluster
):
    RoleBinding.objects.create(role="operator", ldap_group=OPERATORS, cluster=cluster)
    assert login(browser, "alice", "alice-pw").status_code == 302
    assert browser.get("/api/v1/clusters/").status_code == 200

    directory.remove_user_from_group("alice", "gpu-operators")
    browser.post("/logout/")
    assert login(browser, "alice", "alice-pw").status_code == 302

    alice = get_user_model().objects.get(username="alice")
    assert DirectoryMembership.groups_of(alice) == []
    assert browser.get("/api/v1/me/").json()["rights"]["clusters"] == {}
    assert browser.get("/api/v1/clusters/").status_code == 403


def test_group_binding_created_through_the_api_matches_whatever_case_the_dn_is_given_in(
    directory, browser, admin_api, cluster
):
    response = admin_api.post(
        "/api/v1/role-bindings/",
        {"role": "viewer", "ldap_group": OPERATORS.upper(), "cluster": cluster.pk},
        format="json",
    )
    assert response.status_code == 201, response.json()

    login(browser, "alice", "alice-pw")
    assert browser.get("/api/v1/me/").json()["rights"]["clusters"] == {str(cluster.pk): ["viewer"]}


def test_disabled_directory_account_cannot_log_in(directory, browser):
    response = login(browser, "carol", "carol-pw")

    assert response.status_code == 401
    assert WRONG_CREDENTIALS in response.content.decode()
    assert not get_user_model().objects.filter(username="carol").exists()


def test_wrong_password_is_refused_and_audited(directory, browser):
    response = login(browser, "alice", "not-alice-pw")

    assert response.status_code == 401
    assert WRONG_CREDENTIALS in response.content.decode()
    assert browser.get("/api/v1/me/").status_code in (401, 403)
    event = AuditEvent.objects.get(action="auth.login")
    assert (event.outcome, event.actor_name) == ("denied", "alice")
    assert event.changes["reason"] == "bad-credentials"


@pytest.mark.parametrize(
    "username",
    [
        "*",
        "alice)(uid=*",
        "*)(|(uid=*",
        "alice)(|(objectClass=*)",
        "al*",
        "alice\x00",
        "alice\x00)(uid=*",
        "a" * 5000,
    ],
    ids=[
        "star",
        "close-paren",
        "or-all",
        "or-objectclass",
        "prefix-wildcard",
        "nul",
        "nul-or",
        "long",
    ],
)
def test_filter_injection_in_the_username_authenticates_nobody(directory, browser, username):
    # The password of every directory user is tried: none may match an injected filter.
    for number, password in enumerate(("alice-pw", "bob-pw", "dave-pw")):
        response = login(browser, username, password, address=f"10.9.0.{number + 1}")
        assert response.status_code in (400, 401), response.status_code
        assert browser.get("/api/v1/me/").status_code in (401, 403)
    assert not get_user_model().objects.exists()
    assert AuditEvent.objects.filter(action="auth.login", outcome="allowed").count() == 0


def test_directory_down_fails_ldap_login_with_a_clear_message_and_local_login_works(
    settings, monkeypatch, slapd, ldap_unused_uri, make_user, browser
):
    use_ldap(settings, monkeypatch, slapd.hangar_env() | {"HANGAR_LDAP_URI": ldap_unused_uri})
    make_user("breakglass", password="local password for emergencies")

    refused = login(browser, "alice", "alice-pw")
    assert refused.status_code == 401
    assert UNREACHABLE_MESSAGE in refused.content.decode()
    event = AuditEvent.objects.get(action="auth.login")
    assert event.changes["directory"] == "unreachable"

    assert login(browser, "breakglass", "local password for emergencies").status_code == 302
    assert browser.get("/api/v1/me/").json()["username"] == "breakglass"


def test_hung_directory_fails_ldap_login_with_a_clear_message_and_local_login_works(
    settings, monkeypatch, slapd, ldap_blackhole, make_user, browser
):
    use_ldap(settings, monkeypatch, slapd.hangar_env() | {"HANGAR_LDAP_URI": ldap_blackhole.uri})
    make_user("breakglass", password="local password for emergencies")

    refused = login(browser, "alice", "alice-pw")
    assert refused.status_code == 401
    assert UNREACHABLE_MESSAGE in refused.content.decode()

    assert login(browser, "breakglass", "local password for emergencies").status_code == 302


def test_local_accounts_still_log_in_while_ldap_is_configured(directory, make_user, browser):
    make_user("breakglass", password="local password for emergencies")

    assert login(browser, "breakglass", "local password for emergencies").status_code == 302


def test_ldap_settings_are_off_without_a_uri(monkeypatch):
    monkeypatch.delenv("HANGAR_LDAP_URI", raising=False)

    assert ldap_settings() == {}


def test_active_directory_settings(monkeypatch):
    import ldap
    from django_auth_ldap.config import ActiveDirectoryGroupType

    for name, value in {
        "HANGAR_LDAP_URI": "ldaps://dc1.example.edu",
        "HANGAR_LDAP_BIND_DN": "CN=hangar,OU=Services,DC=example,DC=edu",
        "HANGAR_LDAP_BIND_PASSWORD": "s3cret",
        "HANGAR_LDAP_USER_SEARCH": "OU=Staff,DC=example,DC=edu",
        "HANGAR_LDAP_USER_FILTER": "(sAMAccountName=%(user)s)",
        "HANGAR_LDAP_GROUP_SEARCH": "OU=Groups,DC=example,DC=edu",
        "HANGAR_LDAP_GROUP_TYPE": "activeDirectory",
        "HANGAR_LDAP_START_TLS": "false",
        "HANGAR_LDAP_TIMEOUT": "2",
    }.items():
        monkeypatch.setenv(name, value)

    built = ldap_settings()

    assert built["AUTH_LDAP_SERVER_URI"] == "ldaps://dc1.example.edu"
    assert built["AUTH_LDAP_USER_SEARCH"].filterstr == "(sAMAccountName=%(user)s)"
    assert isinstance(built["AUTH_LDAP_GROUP_TYPE"], ActiveDirectoryGroupType)
    assert built["AUTH_LDAP_GROUP_SEARCH"].filterstr == "(objectClass=group)"
    assert built["AUTH_LDAP_CONNECTION_OPTIONS"][ldap.OPT_NETWORK_TIMEOUT] == 2


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("HANGAR_LDAP_URI", "dc1.example.edu", "must start with ldap://"),
        ("HANGAR_LDAP_USER_FILTER", "(uid=alice)", "must contain %(user)s"),
        ("HANGAR_LDAP_GROUP_TYPE", "nested", "HANGAR_LDAP_GROUP_TYPE must be one of"),
    ],
)
def test_ldap_settings_refuse_unusable_values(monkeypatch, variable, value, message):
    monkeypatch.setenv("HANGAR_LDAP_URI", "ldap://127.0.0.1:1")
    monkeypatch.setenv("HANGAR_LDAP_USER_SEARCH", "ou=people,dc=hangar,dc=test")
    monkeypatch.setenv(variable, value)

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ldap_settings()
