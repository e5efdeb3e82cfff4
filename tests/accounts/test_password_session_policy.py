"""Password and session policy: one test (at least) for each setting."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.contrib.auth import password_validation
from django.core.exceptions import ValidationError
from django.utils import timezone, translation
from rest_framework.test import APIClient

from apps.accounts import sessions
from apps.accounts.models import PasswordState
from apps.accounts.services import ensure_initial_admin
from apps.audit.models import AuditEvent
from tests.accounts.helpers import login

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


def _change(client, current: str, new: str):
    return client.post(
        "/account/password/",
        {"current_password": current, "new_password": new, "new_password_again": new},
    )


@pytest.fixture(autouse=True)
def _english():
    with translation.override("en"):
        yield


def test_a_password_below_the_minimum_length_is_refused(make_user):
    with pytest.raises(ValidationError, match="at least 12"):
        password_validation.validate_password("Sh0rt pass!")


def test_a_password_needs_the_configured_kinds_of_character(settings):
    settings.PASSWORD_MIN_CLASSES = 3
    with pytest.raises(ValidationError, match="at least 3 of these kinds"):
        password_validation.validate_password("only lower case words here")
    password_validation.validate_password("Lower and Upper and 42 digits")


def test_the_generated_admin_password_must_be_changed_at_first_login(settings):
    password = ensure_initial_admin()
    client = APIClient()

    first = login(client, "admin", password)

    assert first["Location"] == "/account/password/"
    assert client.get("/nodes/")["Location"] == "/account/password/"
    assert client.get("/api/v1/nodes/").status_code == 403
    assert _change(client, password, "My own Admin passphrase 7")["Location"] == "/"
    assert client.get("/nodes/").status_code == 200
    assert AuditEvent.objects.filter(action="accounts.password.change").get().outcome == "allowed"


def test_a_gated_pages_own_fragments_get_nothing_rather_than_the_gate_page(settings):
    # The gate page's nav asks for the alert count with htmx; answering with a
    # redirect would swap the gate page into the nav, which asks again, without end.
    password = ensure_initial_admin()
    client = APIClient()
    login(client, "admin", password)

    fragment = client.get("/alerts/count/", HTTP_HX_REQUEST="true")

    assert fragment.status_code == 204
    assert fragment.content == b""
    assert client.get("/alerts/count/")["Location"] == "/account/password/"


def test_an_idle_sessions_fragment_poll_sends_the_whole_page_to_the_login(make_user, settings):
    settings.IDLE_LOGOUT_MINUTES = 15
    make_user("ann", "viewer", password=PASSWORD)
    client = APIClient()
    login(client, "ann", PASSWORD)
    sessions.note_activity(client.session.session_key, time.time() - 16 * 60)

    poll = client.get("/alerts/count/", HTTP_HX_REQUEST="true", HTTP_X_HANGAR_BACKGROUND="1")

    assert poll.status_code == 204
    assert poll["HX-Redirect"] == "/login/"
    assert client.get("/nodes/")["Location"].startswith("/login/")


def test_an_expired_password_must_be_changed(make_user, settings):
    settings.PASSWORD_MAX_AGE_DAYS = 90
    user = make_user("ann", "viewer", password=PASSWORD)
    PasswordState.objects.create(user=user, changed_at=timezone.now() - timedelta(days=91))
    client = APIClient()

    assert login(client, "ann", PASSWORD)["Location"] == "/account/password/"
    assert _change(client, PASSWORD, "A fresh Passphrase for ann")["Location"] == "/"


def test_the_last_passwords_cannot_be_reused(make_user, settings):
    settings.PASSWORD_HISTORY = 2
    make_user("ann", "viewer", password=PASSWORD)
    client = APIClient()
    login(client, "ann", PASSWORD)
    assert _change(client, PASSWORD, "Second Passphrase of ann").status_code == 302

    again = _change(client, "Second Passphrase of ann", PASSWORD)

    assert again.status_code == 400
    assert "not used for your last 2 passwords" in again.content.decode()
    assert _change(client, "Second Passphrase of ann", "Third Passphrase of ann").status_code == 302


def test_an_idle_session_is_logged_out(make_user, settings):
    settings.IDLE_LOGOUT_MINUTES = 15
    make_user("ann", "viewer", password=PASSWORD)
    client = APIClient()
    login(client, "ann", PASSWORD)
    assert client.get("/nodes/").status_code == 200

    sessions.note_activity(client.session.session_key, time.time() - 16 * 60)

    assert client.get("/nodes/")["Location"].startswith("/login/")
    assert client.get("/api/v1/me/").status_code in (401, 403)
    assert AuditEvent.objects.filter(action="auth.idle-logout").count() == 1


def test_activity_renews_the_idle_clock_but_background_polls_do_not(make_user, settings):
    make_user("ann", "viewer", password=PASSWORD)
    client = APIClient()
    login(client, "ann", PASSWORD)
    key = client.session.session_key
    sessions.note_activity(key, time.time() - 10 * 60)

    client.get("/alerts/count/", HTTP_X_HANGAR_BACKGROUND="1")
    assert time.time() - sessions.last_activity(key) > 9 * 60
    client.get("/nodes/")
    assert time.time() - sessions.last_activity(key) < 60


def test_sessions_beyond_the_limit_end_oldest_first(make_user, settings):
    settings.MAX_SESSIONS_PER_USER = 2
    make_user("ann", "viewer", password=PASSWORD)
    clients = [APIClient() for _ in range(3)]
    for client in clients:
        assert login(client, "ann", PASSWORD).status_code == 302

    assert clients[0].get("/nodes/")["Location"].startswith("/login/")
    assert clients[1].get("/nodes/").status_code == 200
    assert clients[2].get("/nodes/").status_code == 200


def test_the_last_login_time_and_address_are_shown_after_login(make_user):
    make_user("ann", "viewer", password=PASSWORD)
    login(APIClient(), "ann", PASSWORD, address="192.0.2.7")
    client = APIClient()

    login(client, "ann", PASSWORD, address="192.0.2.8")
    page = client.get("/nodes/").content.decode()

    assert "Your last login was at" in page
    assert "192.0.2.7" in page


def test_the_security_policy_page_shows_each_setting(make_user, settings, client_for):
    settings.PASSWORD_MAX_AGE_DAYS = 90
    admin = make_user("root", "admin", password=PASSWORD)
    client = APIClient()
    client.force_login(admin)

    page = client.get("/security/policy/").content.decode()

    for variable in (
        "HANGAR_PASSWORD_MIN_LENGTH",
        "HANGAR_PASSWORD_MIN_CLASSES",
        "HANGAR_PASSWORD_MAX_AGE_DAYS",
        "HANGAR_PASSWORD_HISTORY",
        "HANGAR_IDLE_LOGOUT_MINUTES",
        "HANGAR_MAX_SESSIONS_PER_USER",
        "HANGAR_REQUIRE_2FA",
    ):
        assert variable in page
