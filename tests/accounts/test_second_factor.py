"""TOTP second factor: enrolment, login with a code, lockout, replay, recovery codes."""

from __future__ import annotations

import re
import time

import pyotp
import pytest
from rest_framework.test import APIClient

from apps.accounts import lockout, twofactor
from apps.accounts.models import SecondFactor
from apps.audit.models import AuditEvent
from tests.accounts.helpers import login

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


def _code(user, offset_steps: int = 0) -> str:
    secret = SecondFactor.objects.get(user=user).secret
    return pyotp.TOTP(secret).at(time.time() + offset_steps * twofactor.STEP_SECONDS)


def _enrol(client: APIClient, user) -> list[str]:
    page = client.get("/account/second-factor/")
    assert page.status_code == 200
    body = page.content.decode()
    assert "<svg" in body, "the QR code is drawn on the server, inline"
    secret = SecondFactor.objects.get(user=user).secret
    assert secret in body
    done = client.post("/account/second-factor/", {"code": pyotp.TOTP(secret).now()})
    assert done.status_code == 200
    return re.findall(r"<li><code>([0-9a-f]{10})</code></li>", done.content.decode())


@pytest.fixture
def enrolled(make_user):
    """ann with a confirmed second factor and her recovery codes."""
    user = make_user("ann", "operator", password=PASSWORD)
    client = APIClient()
    client.force_login(user)
    codes = _enrol(client, user)
    # The enrolment used the current step: move it back so the login may use "now".
    SecondFactor.objects.filter(user=user).update(last_used_step=0)
    return user, codes


def test_enrolment_confirms_with_a_code_and_gives_ten_recovery_codes(make_user):
    user = make_user("ann", password=PASSWORD)
    client = APIClient()
    client.force_login(user)

    codes = _enrol(client, user)

    assert len(set(codes)) == twofactor.RECOVERY_CODES
    assert twofactor.has_second_factor(user)
    event = AuditEvent.objects.get(action="accounts.second-factor.enrol")
    assert event.outcome == "allowed"
    assert all(code not in str(event.changes) for code in codes)


def test_enrolment_refuses_a_wrong_code(make_user):
    user = make_user("ann", password=PASSWORD)
    client = APIClient()
    client.force_login(user)
    client.get("/account/second-factor/")

    refused = client.post("/account/second-factor/", {"code": "000000"})

    assert refused.status_code == 400
    assert not twofactor.has_second_factor(user)


def test_login_asks_for_the_code_after_the_password_and_logs_in_with_it(enrolled):
    user, _codes = enrolled
    client = APIClient()

    asked = login(client, "ann", PASSWORD)
    assert asked.status_code == 200
    assert 'name="code"' in asked.content.decode()
    assert client.get("/api/v1/me/").status_code in (401, 403), "not logged in yet"

    done = client.post("/login/code/", {"code": _code(user)})

    assert done.status_code == 302
    assert client.get("/api/v1/me/").status_code == 200
    event = AuditEvent.objects.filter(action="auth.login.second-factor").get()
    assert (event.outcome, event.changes["second_factor"]) == ("allowed", "totp")


def test_a_wrong_code_counts_toward_the_lockout(enrolled, settings):
    settings.LOGIN_FAILURE_LIMIT = 2
    user, _codes = enrolled
    client = APIClient()
    login(client, "ann", PASSWORD)

    first = client.post("/login/code/", {"code": "123456"}, REMOTE_ADDR="10.9.0.1")
    assert first.status_code == 401
    assert lockout.failures("username", "ann")[0] == 1
    client.post("/login/code/", {"code": "654321"}, REMOTE_ADDR="10.9.0.2")

    locked = client.post("/login/code/", {"code": _code(user)}, REMOTE_ADDR="10.9.0.3")
    assert locked.status_code == 429
    assert AuditEvent.objects.filter(action="auth.lock").count() == 1


def test_a_code_used_once_is_refused_the_second_time(enrolled):
    user, _codes = enrolled
    code = _code(user)
    first = APIClient()
    login(first, "ann", PASSWORD)
    assert first.post("/login/code/", {"code": code}).status_code == 302

    second = APIClient()
    login(second, "ann", PASSWORD)
    replayed = second.post("/login/code/", {"code": code})

    assert replayed.status_code == 401
    assert "already used" in replayed.content.decode()


def test_a_recovery_code_works_once(enrolled):
    _user, codes = enrolled
    first = APIClient()
    login(first, "ann", PASSWORD)
    assert first.post("/login/code/", {"code": codes[0]}).status_code == 302
    assert (
        AuditEvent.objects.filter(action="auth.login.second-factor").last().changes["second_factor"]
        == "recovery"
    )

    second = APIClient()
    login(second, "ann", PASSWORD)
    assert second.post("/login/code/", {"code": codes[0]}).status_code == 401
    assert second.post("/login/code/", {"code": codes[1]}).status_code == 302


def test_the_policy_sends_an_admin_without_a_second_factor_to_enrol(make_user, settings):
    settings.REQUIRE_2FA = "admins"
    make_user("root", "admin", password=PASSWORD)
    client = APIClient()

    logged_in = login(client, "root", PASSWORD)

    assert logged_in.status_code == 302
    assert logged_in["Location"] == "/account/second-factor/"
    assert client.get("/nodes/")["Location"] == "/account/second-factor/"
    assert client.get("/api/v1/nodes/").status_code == 403


def test_the_policy_leaves_a_viewer_and_api_tokens_alone(make_user, settings):
    settings.REQUIRE_2FA = "admins"
    make_user("vera", "viewer", password=PASSWORD)
    client = APIClient()
    assert login(client, "vera", PASSWORD)["Location"] == "/"

    from apps.accounts.tokens import create_api_token

    admin = make_user("root", "admin", password=PASSWORD)
    _token, secret = create_api_token(admin, "ci", 30)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert api.get("/api/v1/nodes/").status_code == 200


def test_sso_mfa_counts_only_when_trusted_and_asserted(settings):
    settings.SSO_MFA_TRUSTED = False
    assert not twofactor.sso_satisfies_second_factor(["mfa"])
    settings.SSO_MFA_TRUSTED = True
    assert twofactor.sso_satisfies_second_factor(["pwd", "otp"])
    assert not twofactor.sso_satisfies_second_factor(["pwd"])
    assert not twofactor.sso_satisfies_second_factor(None)


def test_the_admins_policy_names_the_administrators_and_audit_readers(settings):
    settings.REQUIRE_2FA = "admins"
    required = twofactor.roles_requiring_second_factor()

    assert {"admin", "system-admin", "security-admin", "audit-admin", "auditor"} <= required
    assert not required & {"viewer", "operator", "model-manager", "consumer"}
