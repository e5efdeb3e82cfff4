"""Users, role bindings and /me through the API."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from apps.accounts.models import RoleBinding
from apps.accounts.services import deactivate_user
from apps.audit.models import AuditEvent
from tests.accounts.helpers import login

pytestmark = pytest.mark.django_db

STRONG = "a long passphrase nobody guesses"


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("short1", "too short"),
        ("password1234", "too common"),
        ("839274619283746", "entirely numeric"),
        (("newperson123", "too similar")),
    ],
)
def test_local_passwords_go_through_django_validators(admin_api, password, message):
    response = admin_api.post(
        "/api/v1/users/", {"username": "newperson", "password": password}, format="json"
    )

    assert response.status_code == 400
    assert message in " ".join(response.json()["fields"]["password"])
    assert not get_user_model().objects.filter(username="newperson").exists()


def test_admin_creates_a_local_user_who_can_log_in(admin_api, browser):
    response = admin_api.post(
        "/api/v1/users/", {"username": "newperson", "password": STRONG}, format="json"
    )

    assert response.status_code == 201
    assert response.json()["source"] == "local"
    assert "password" not in response.json()
    user = get_user_model().objects.get(username="newperson")
    assert user.password.startswith(("pbkdf2_", "md5$", "argon2", "bcrypt"))
    assert STRONG not in user.password
    assert login(browser, "newperson", STRONG).status_code == 302
    event = AuditEvent.objects.get(action="accounts.manage")
    assert event.changes["created"]["password"] == "[redacted]"


def test_changing_a_password_is_validated_and_redacted_in_the_audit_log(admin_api, make_user):
    ann = make_user("ann")

    weak = admin_api.patch(f"/api/v1/users/{ann.pk}/", {"password": "abc"}, format="json")
    ok = admin_api.patch(f"/api/v1/users/{ann.pk}/", {"password": STRONG}, format="json")

    assert weak.status_code == 400
    assert ok.status_code == 200
    changed = AuditEvent.objects.filter(outcome="allowed").get()
    assert changed.changes["password"] == "[redacted]"
    assert STRONG not in str(changed.changes)


def test_deleting_a_user_deactivates_them(admin_api, make_user, browser):
    ann = make_user("ann", password=STRONG)

    assert admin_api.delete(f"/api/v1/users/{ann.pk}/").status_code == 204

    ann.refresh_from_db()
    assert ann.is_active is False
    assert login(browser, "ann", STRONG).status_code == 401


def test_role_binding_needs_exactly_one_subject(admin_api, make_user, cluster):
    ann = make_user("ann")

    both = admin_api.post(
        "/api/v1/role-bindings/",
        {"role": "viewer", "user": ann.pk, "ldap_group": "cn=x,dc=y"},
        format="json",
    )
    neither = admin_api.post("/api/v1/role-bindings/", {"role": "viewer"}, format="json")
    not_a_dn = admin_api.post(
        "/api/v1/role-bindings/", {"role": "viewer", "ldap_group": "gpu-ops"}, format="json"
    )

    assert both.status_code == neither.status_code == not_a_dn.status_code == 400
    assert "full DN" in str(not_a_dn.json()["fields"])
    assert not RoleBinding.objects.filter(user=ann).exists()


def test_a_new_role_binding_takes_effect_on_the_next_request(admin_api, make_user, client_for):
    ann = make_user("ann")
    ann_api = client_for(ann)
    assert ann_api.get("/api/v1/clusters/").status_code == 403

    response = admin_api.post(
        "/api/v1/role-bindings/", {"role": "viewer", "user": ann.pk}, format="json"
    )

    assert response.status_code == 201
    assert (
        client_for(get_user_model().objects.get(pk=ann.pk)).get("/api/v1/clusters/").status_code
        == 200
    )


def test_duplicate_role_binding_is_refused(admin_api, make_user):
    ann = make_user("ann", "viewer")

    response = admin_api.post(
        "/api/v1/role-bindings/", {"role": "viewer", "user": ann.pk}, format="json"
    )

    assert response.status_code == 400
    assert "exists already" in str(response.json())


def test_me_describes_rights_additively(make_user, client_for, cluster, other_cluster):
    ann = make_user("ann", "viewer", ("operator", cluster), ("admin", other_cluster))

    rights = client_for(ann).get("/api/v1/me/").json()["rights"]

    assert rights["global"] == ["viewer"]
    assert "inventory.view" in rights["actions"]
    assert rights["cluster_actions"][str(cluster.pk)] == [
        "alerts.acknowledge",
        "deployments.operate",
    ]
    # A cluster-scoped admin never gets the global-only rights (users, audit log, settings).
    scoped_admin = set(rights["cluster_actions"][str(other_cluster.pk)])
    assert "inventory.change" in scoped_admin
    assert not scoped_admin & {"accounts.manage", "audit.view", "settings.manage"}


def test_logout_ends_the_session(make_user, browser):
    make_user("ann", "viewer", password=STRONG)
    login(browser, "ann", STRONG)
    assert browser.get("/api/v1/me/").status_code == 200

    assert browser.post("/logout/").status_code == 302

    assert browser.get("/api/v1/me/").status_code in (401, 403)
    assert AuditEvent.objects.filter(action="auth.logout").get().actor_name == "ann"


def test_the_login_form_redirects_only_to_this_site(make_user, browser):
    make_user("ann", "viewer", password=STRONG)

    response = browser.post(
        "/login/", {"username": "ann", "password": STRONG, "next": "https://evil.example/"}
    )

    assert response.status_code == 302
    assert response["Location"] == "/"


def test_the_login_form_requires_a_csrf_token(make_user):
    from django.test import Client

    make_user("ann", password=STRONG)
    strict = Client(enforce_csrf_checks=True)

    assert strict.post("/login/", {"username": "ann", "password": STRONG}).status_code == 403
    page = strict.get("/login/")
    token = page.cookies["csrftoken"].value
    response = strict.post(
        "/login/", {"username": "ann", "password": STRONG, "csrfmiddlewaretoken": token}
    )
    assert response.status_code == 302


def test_session_cookie_flags_follow_https_and_the_session_lifetime(make_user, browser, settings):
    make_user("ann", password=STRONG)
    settings.SESSION_COOKIE_SECURE = True

    response = login(browser, "ann", STRONG)

    cookie = response.cookies[settings.SESSION_COOKIE_NAME]
    assert cookie["httponly"] and cookie["secure"]
    assert cookie["samesite"] == "Lax"
    assert int(cookie["max-age"]) == settings.SESSION_COOKIE_AGE == 8 * 3600


def test_an_edit_in_flight_does_not_reactivate_a_user_deactivated_meanwhile(admin_api, make_user):
    """The edit loaded the user before another admin deactivated them (done here
    right after the edit's read of the row); its save must not undo that."""
    ann = make_user("ann", password=STRONG)
    deactivated = []

    def deactivate_after_the_edit_reads_ann(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if not deactivated and sql.startswith('SELECT "auth_user"') and ann.pk in params:
            deactivated.append(True)
            deactivate_user(get_user_model().objects.get(pk=ann.pk))
        return result

    with connection.execute_wrapper(deactivate_after_the_edit_reads_ann):
        edit = admin_api.patch(f"/api/v1/users/{ann.pk}/", {"first_name": "Ann"}, format="json")

    assert edit.status_code == 200 and deactivated
    ann.refresh_from_db()
    assert (ann.first_name, ann.is_active) == ("Ann", False)
