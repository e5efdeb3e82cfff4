"""CAS and OpenID Connect login against a real identity server (django-mama-cas and
django-oauth-toolkit in a subprocess), with Hangar on a live server and a
requests session as the browser following every redirect."""

from __future__ import annotations

from io import StringIO
from urllib.parse import urlencode, urlsplit, urlunsplit

import pytest
import requests
from django.contrib.auth import get_user_model
from django.core.management import call_command

from apps.accounts.models import DirectoryMembership, RoleBinding
from apps.audit.models import AuditEvent
from tests.accounts.sso_helpers import (
    UNREACHABLE,
    cas_ticket_url,
    oidc_code_url,
    query_of,
    use_sso,
)
from tests.support.identity_server import identity_server, submit_login_form
from tests.support.processes import free_port

__all__ = ["identity_server"]

pytestmark = pytest.mark.django_db(transaction=True)

LOCAL_PASSWORD = "a long local passphrase"
MY_KEYS = "/keys/"


@pytest.fixture
def hangar(live_server, identity_server, settings, monkeypatch) -> str:
    from django.db import connections

    # The live server answers each request in a thread of its own; a pooled
    # connection left in one would outlive the test and block the test database's drop.
    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", 0)
    use_sso(settings, monkeypatch, identity_server.hangar_env())
    return live_server.url


@pytest.fixture
def browser() -> requests.Session:
    return requests.Session()


def me(browser: requests.Session, hangar: str) -> dict:
    answer = browser.get(f"{hangar}/api/v1/me/", timeout=10)
    return answer.json() if answer.ok else {"status": answer.status_code}


def local_login(hangar: str, username: str, password: str) -> requests.Response:
    session = requests.Session()
    page = session.get(f"{hangar}/login/", timeout=10)
    assert page.ok
    return session.post(
        f"{hangar}/login/",
        data={
            "username": username,
            "password": password,
            "csrfmiddlewaretoken": session.cookies["csrftoken"],
        },
        allow_redirects=False,
        timeout=10,
    )


def last_login_event() -> AuditEvent:
    return AuditEvent.objects.filter(action="auth.login").order_by("-id").first()


# -- CAS ----------------------------------------------------------------------------


def test_cas_login_creates_the_user_from_the_attributes(hangar, identity_server, browser):
    page = browser.get(f"{hangar}/sso/cas/login/", timeout=10)
    assert page.url.startswith(identity_server.cas_url), "Hangar sends the browser to CAS"

    home = submit_login_form(browser, page, "alice", "alice-pw")

    # Someone with no role yet cannot see the dashboard and starts at their keys.
    assert home.ok and home.url == f"{hangar}{MY_KEYS}"
    alice = get_user_model().objects.get(username="alice")
    assert alice.get_full_name() == "Alice Anderson"
    assert alice.email == "alice@campus.test"
    assert not alice.has_usable_password()
    assert DirectoryMembership.groups_of(alice) == [
        "cas:departmentcode=cs",
        "cas:edupersonaffiliation=member",
        "cas:edupersonaffiliation=staff",
    ]
    assert me(browser, hangar)["username"] == "alice"
    event = last_login_event()
    assert (event.outcome, event.actor_name, event.changes["backend"]) == (
        "allowed",
        "alice",
        "cas",
    )
    out = StringIO()
    call_command("audit", "verify", stdout=out)
    assert "chain intact" in out.getvalue()


def test_cas_affiliation_and_department_map_to_role_bindings(hangar, browser, cluster, admin_api):
    RoleBinding.objects.create(role="operator", ldap_group="cas:departmentcode=cs", cluster=cluster)
    # Bound through the API as an administrator would type it: case does not matter.
    bound = admin_api.post(
        "/api/v1/role-bindings/",
        {"role": "viewer", "ldap_group": "cas:eduPersonAffiliation=Staff"},
        format="json",
    )
    assert bound.status_code == 201, bound.content
    RoleBinding.objects.create(role="admin", ldap_group="cas:edupersonaffiliation=student")

    page = browser.get(f"{hangar}/sso/cas/login/", timeout=10)
    submit_login_form(browser, page, "alice", "alice-pw")

    rights = me(browser, hangar)["rights"]
    assert rights["global"] == ["viewer"]
    assert rights["clusters"] == {str(cluster.pk): ["operator"]}


def test_a_cas_department_makes_its_people_members_of_a_project(hangar, browser):
    from apps.gateway.models import Project, ProjectMember
    from apps.gateway.projects import project_ids_of

    cs = Project.objects.create(name="cs-dept")
    physics = Project.objects.create(name="physics")
    ProjectMember.objects.create(project=cs, ldap_group="cas:departmentcode=cs")
    ProjectMember.objects.create(project=physics, ldap_group="cas:departmentcode=phys")

    page = browser.get(f"{hangar}/sso/cas/login/", timeout=10)
    submit_login_form(browser, page, "alice", "alice-pw")

    alice = get_user_model().objects.get(username="alice")
    assert project_ids_of(alice) == {cs.pk}


def test_cas_protocol_2_reads_the_attributes_too(hangar, browser, settings, monkeypatch):
    monkeypatch.setenv("HANGAR_CAS_VERSION", "2")
    use_sso(settings, monkeypatch, {})

    page = browser.get(f"{hangar}/sso/cas/login/", timeout=10)
    submit_login_form(browser, page, "bob", "bob-pw")

    bob = get_user_model().objects.get(username="bob")
    assert bob.get_full_name() == "张伯"
    assert "cas:edupersonaffiliation=student" in DirectoryMembership.groups_of(bob)
    assert me(browser, hangar)["username"] == "bob"


def test_a_forged_cas_ticket_is_refused(hangar, browser):
    answer = browser.get(f"{hangar}/sso/cas/login/?ticket=ST-1-forged", timeout=10)

    assert answer.status_code == 401
    assert "did not accept the login ticket" in answer.text
    assert me(browser, hangar)["status"] in (401, 403)
    event = last_login_event()
    assert (event.outcome, event.changes["reason"]) == ("denied", "ticket-refused")


def test_a_replayed_cas_ticket_is_refused(hangar, browser):
    ticket_url = cas_ticket_url(browser, hangar, "alice", "alice-pw")
    assert browser.get(ticket_url, timeout=10).url == f"{hangar}{MY_KEYS}"

    thief = requests.Session()
    replay = thief.get(ticket_url, timeout=10)

    assert replay.status_code == 401
    assert "did not accept the login ticket" in replay.text
    assert me(thief, hangar)["status"] in (401, 403)


def test_an_unreachable_cas_server_is_said_plainly_and_local_accounts_still_log_in(
    hangar, browser, settings, make_user
):
    make_user("localadmin", "admin", password=LOCAL_PASSWORD)
    ticket_url = cas_ticket_url(browser, hangar, "alice", "alice-pw")
    # The appliance loses its route to the CAS server between the browser's login
    # there and the ticket's validation (a firewall between the two, often enough).
    settings.CAS_SERVER_URL = f"http://127.0.0.1:{free_port()}/cas/"

    answer = browser.get(ticket_url, timeout=10)

    assert answer.status_code == 503
    assert UNREACHABLE in answer.text
    assert 'name="password"' in answer.text, "the local login form is right there"
    event = last_login_event()
    assert (event.outcome, event.changes["reason"]) == ("failed", "unreachable")
    assert local_login(hangar, "localadmin", LOCAL_PASSWORD).status_code == 302


def test_a_campus_account_cannot_take_over_a_local_account_of_the_same_name(
    hangar, browser, make_user
):
    make_user("admin", "admin", password=LOCAL_PASSWORD)

    page = browser.get(f"{hangar}/sso/cas/login/", timeout=10)
    answer = submit_login_form(browser, page, "admin", "campus-admin-pw")

    assert answer.status_code == 401
    assert "A local Hangar account has this username" in answer.text
    assert me(browser, hangar)["status"] in (401, 403)
    assert last_login_event().changes["reason"] == "local-account"


def test_logout_ends_the_cas_session_too(hangar, identity_server, browser):
    page = browser.get(f"{hangar}/sso/cas/login/", timeout=10)
    submit_login_form(browser, page, "alice", "alice-pw")

    back = browser.post(
        f"{hangar}/logout/",
        data={"csrfmiddlewaretoken": browser.cookies["csrftoken"]},
        headers={"Referer": f"{hangar}/"},
        timeout=10,
    )

    assert back.ok
    assert any(r.url.startswith(f"{identity_server.cas_url}logout") for r in back.history)
    assert me(browser, hangar)["status"] in (401, 403)
    # The CAS session is over: the next SSO login asks for the password again.
    again = browser.get(f"{hangar}/sso/cas/login/", timeout=10)
    assert again.url.startswith(identity_server.cas_url) and 'name="password"' in again.text
    assert AuditEvent.objects.filter(action="auth.logout").last().changes["single_logout"] == "cas"


def test_logging_out_at_the_cas_server_ends_the_hangar_session(hangar, identity_server, browser):
    page = browser.get(f"{hangar}/sso/cas/login/", timeout=10)
    submit_login_form(browser, page, "alice", "alice-pw")
    assert me(browser, hangar)["username"] == "alice"

    # Logging out at CAS directly: it posts a SAML LogoutRequest to Hangar (SLO).
    browser.get(f"{identity_server.cas_url}logout", timeout=10)

    assert me(browser, hangar)["status"] in (401, 403)
    event = AuditEvent.objects.filter(action="auth.sso-logout").last()
    assert event is not None and event.changes["backend"] == "cas"


def test_new_sso_users_wait_for_approval_when_required(
    hangar, browser, settings, admin_user, client_for
):
    settings.SSO_APPROVAL_REQUIRED = True
    page = browser.get(f"{hangar}/sso/cas/login/", timeout=10)
    answer = submit_login_form(browser, page, "bob", "bob-pw")

    assert answer.status_code == 403
    assert "waits for an administrator" in answer.text
    bob = get_user_model().objects.get(username="bob")
    assert not bob.is_active
    assert me(browser, hangar)["status"] in (401, 403)

    approved = client_for(admin_user).post(f"/api/v1/users/{bob.pk}/activate/")
    assert approved.status_code == 200 and approved.json()["is_active"] is True
    event = AuditEvent.objects.filter(action="accounts.user.activate").last()
    assert (event.actor_name, event.target_id) == ("root-admin", str(bob.pk))
    retry = browser.get(f"{hangar}/sso/cas/login/", timeout=10)  # CAS session still open
    assert retry.url == f"{hangar}{MY_KEYS}"
    assert me(browser, hangar)["username"] == "bob"


# -- OpenID Connect -----------------------------------------------------------------


def test_oidc_login_uses_pkce_and_maps_claims_and_groups(hangar, identity_server, browser):
    RoleBinding.objects.create(role="admin", ldap_group="oidc:groups=gpu-admins")
    start = browser.get(f"{hangar}/sso/oidc/login/", allow_redirects=False, timeout=10)
    request = query_of(start.headers["Location"])
    assert request["code_challenge_method"] == "S256" and len(request["code_challenge"]) >= 43
    assert request["nonce"] and request["state"]

    callback = oidc_code_url(browser, hangar, "alice", "alice-pw")
    home = browser.get(callback, timeout=10)

    assert home.url == f"{hangar}/"
    alice = get_user_model().objects.get(username="alice")
    assert (alice.get_full_name(), alice.email) == ("Alice Anderson", "alice@campus.test")
    assert DirectoryMembership.groups_of(alice) == [
        "oidc:groups=gpu-admins",
        "oidc:groups=hpc-users",
    ]
    assert me(browser, hangar)["rights"]["global"] == ["admin"]
    event = last_login_event()
    assert (event.outcome, event.actor_name, event.changes["backend"]) == (
        "allowed",
        "alice",
        "oidc",
    )


def test_an_oidc_answer_with_a_wrong_state_is_refused(hangar, browser):
    callback = oidc_code_url(browser, hangar, "bob", "bob-pw")
    parts = urlsplit(callback)
    forged = dict(query_of(callback), state="forged-state")

    answer = browser.get(urlunsplit(parts._replace(query=urlencode(forged))), timeout=10)

    assert answer.status_code == 400
    assert "does not belong to a login started in this browser" in answer.text
    assert me(browser, hangar)["status"] in (401, 403)
    assert last_login_event().changes["reason"] == "state"


def test_an_oidc_answer_with_a_wrong_nonce_is_refused(hangar, browser):
    def swap_nonce(url: str) -> str:
        parts = urlsplit(url)
        return urlunsplit(parts._replace(query=urlencode(dict(query_of(url), nonce="forged"))))

    callback = oidc_code_url(browser, hangar, "bob", "bob-pw", tamper=swap_nonce)
    answer = browser.get(callback, timeout=10)

    assert answer.status_code == 400
    assert "could not be verified" in answer.text
    assert me(browser, hangar)["status"] in (401, 403)
    assert last_login_event().changes["reason"] == "unverified"


def test_an_unreachable_oidc_provider_is_said_plainly_and_local_accounts_still_log_in(
    hangar, browser, settings, make_user
):
    make_user("localadmin", "admin", password=LOCAL_PASSWORD)
    callback = oidc_code_url(browser, hangar, "bob", "bob-pw")
    settings.OIDC_OP_TOKEN_ENDPOINT = f"http://127.0.0.1:{free_port()}/o/token/"

    answer = browser.get(callback, timeout=10)

    assert answer.status_code == 503
    assert UNREACHABLE in answer.text
    assert last_login_event().changes["reason"] == "unreachable"
    assert local_login(hangar, "localadmin", LOCAL_PASSWORD).status_code == 302


def test_logout_ends_the_oidc_session_at_the_provider(hangar, identity_server, browser):
    browser.get(oidc_code_url(browser, hangar, "alice", "alice-pw"), timeout=10)
    assert me(browser, hangar)["username"] == "alice"

    back = browser.post(
        f"{hangar}/logout/",
        data={"csrfmiddlewaretoken": browser.cookies["csrftoken"]},
        headers={"Referer": f"{hangar}/"},
        timeout=10,
    )

    assert back.ok and back.url.startswith(f"{hangar}/login/")
    assert any(r.url.startswith(f"{identity_server.url}/o/logout/") for r in back.history)
    assert me(browser, hangar)["status"] in (401, 403)
    again = browser.get(f"{hangar}/sso/oidc/login/", timeout=10)
    assert again.url.startswith(f"{identity_server.url}/accounts/login/"), "provider asks again"


# -- the login page -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "cas", "oidc"),
    [
        ("en", "Log in with Campus CAS", "Log in with Campus OIDC"),
        ("zh-hans", "使用 Campus CAS 登录", "使用 Campus OIDC 登录"),
    ],
)
def test_the_login_page_shows_both_sso_buttons(hangar, language, cas, oidc):
    page = requests.get(f"{hangar}/login/?next=/nodes/", headers={"Accept-Language": language})

    assert cas in page.text and oidc in page.text
    assert 'href="/sso/cas/login/?next=%2Fnodes%2F"' in page.text
