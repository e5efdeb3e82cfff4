"""API tokens: shown once, stored hashed, usable as Bearer, refused once revoked or expired."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from apps.accounts.models import ApiToken
from apps.audit.models import AuditEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def ann(make_user):
    return make_user("ann", "viewer")


def _create(client, name="ci", days=30) -> dict:
    response = client.post("/api/v1/tokens/", {"name": name, "days": days}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def _bearer(secret: str) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return api


def test_the_secret_is_returned_once_at_creation(ann, client_for):
    api = client_for(ann)
    created = _create(api)

    assert created["secret"].startswith(f"hgr_{created['prefix']}_")
    assert created["state"] == "active"
    listed = api.get("/api/v1/tokens/").json()["results"]
    fetched = api.get(f"/api/v1/tokens/{created['id']}/").json()
    assert [t["id"] for t in listed] == [created["id"]]
    assert "secret" not in listed[0] and "secret" not in fetched
    assert created["secret"] not in api.get("/api/v1/tokens/").content.decode()


def test_only_a_hash_of_the_secret_is_stored(ann, client_for):
    created = _create(client_for(ann))
    # hgr_<prefix>_<secret>: the prefix is hex, the secret may hold "_" itself.
    secret_part = created["secret"].split("_", 2)[2]

    token = ApiToken.objects.get(pk=created["id"])
    stored = " ".join(str(v) for v in ApiToken.objects.filter(pk=token.pk).values().get().values())
    assert secret_part not in stored
    assert len(token.secret_hash) == 64
    assert secret_part not in str(list(AuditEvent.objects.values_list("changes", flat=True)))


def test_a_bearer_token_authenticates_as_its_owner(
    ann, client_for, django_capture_on_commit_callbacks
):
    created = _create(client_for(ann))

    with django_capture_on_commit_callbacks(execute=True):  # last use is written on commit
        me = _bearer(created["secret"]).get("/api/v1/me/")

    assert me.status_code == 200
    assert me.json()["username"] == "ann"
    assert me.json()["rights"]["global"] == ["viewer"]
    assert ApiToken.objects.get(pk=created["id"]).last_used_at is not None


def test_a_revoked_token_is_refused_with_401(ann, client_for):
    api = client_for(ann)
    created = _create(api)

    assert api.delete(f"/api/v1/tokens/{created['id']}/").status_code == 204
    response = _bearer(created["secret"]).get("/api/v1/me/")

    assert response.status_code == 401
    assert response.json()["detail"] == "The API token is unknown, expired or revoked."
    assert response["WWW-Authenticate"] == "Bearer"
    assert api.get(f"/api/v1/tokens/{created['id']}/").json()["state"] == "revoked"


def test_an_expired_token_is_refused_with_401(ann, client_for):
    created = _create(client_for(ann))
    ApiToken.objects.filter(pk=created["id"]).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )

    response = _bearer(created["secret"]).get("/api/v1/me/")

    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


@pytest.mark.parametrize(
    "presented",
    ["hgr_", "hgr_abc", "hgr_abc_def", "not-a-token", "hgr_{prefix}_wrong-secret"],
)
def test_a_malformed_or_guessed_token_is_refused(ann, client_for, presented):
    created = _create(client_for(ann))

    response = _bearer(presented.format(prefix=created["prefix"])).get("/api/v1/me/")

    assert response.status_code == 401


def test_a_deactivated_users_tokens_stop_working(ann, client_for, admin_api):
    created = _create(client_for(ann))

    assert admin_api.delete(f"/api/v1/users/{ann.pk}/").status_code == 204

    assert _bearer(created["secret"]).get("/api/v1/me/").status_code == 401
    assert ApiToken.objects.get(pk=created["id"]).revoked_at is not None


def test_users_see_and_revoke_only_their_own_tokens(ann, make_user, client_for):
    bob = make_user("bob", "admin")
    anns = _create(client_for(ann), name="ann's")
    bobs = _create(client_for(bob), name="bob's")

    bob_api = client_for(bob)
    assert [t["name"] for t in bob_api.get("/api/v1/tokens/").json()["results"]] == ["bob's"]
    assert bob_api.get(f"/api/v1/tokens/{anns['id']}/").status_code == 404
    assert bob_api.delete(f"/api/v1/tokens/{anns['id']}/").status_code == 404
    assert ApiToken.objects.get(pk=anns["id"]).revoked_at is None
    assert bobs["id"] != anns["id"]


def test_token_expiry_is_bounded(ann, client_for, settings):
    api = client_for(ann)

    too_long = api.post(
        "/api/v1/tokens/", {"name": "x", "days": settings.API_TOKEN_MAX_DAYS + 1}, format="json"
    )

    assert too_long.status_code == 400
    assert str(settings.API_TOKEN_MAX_DAYS) in str(too_long.json()["fields"]["days"])


def test_anonymous_callers_cannot_create_tokens():
    assert APIClient().post("/api/v1/tokens/", {"name": "x"}, format="json").status_code == 401
