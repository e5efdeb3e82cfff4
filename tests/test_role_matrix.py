"""The role x endpoint matrix: every route, every role, exactly what roles.py says.

The rows live in tests/endpoints.py (one per route and method); the expected
status comes from apps/accounts/roles.py through endpoints.expected_status.
"""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from tests.accounts.helpers import fast_password_hashing
from tests.endpoints import (
    ENDPOINTS,
    LOGIN_REDIRECT,
    OUTSIDE_NAMES,
    SUBJECTS,
    all_routes,
    build_world,
    expected_status,
    make_subject,
    route_of,
    wheres,
)

__all__ = ["fast_password_hashing"]

CASES = [
    pytest.param(row, subject, where, id=f"{row.id} [{where or '-'}] as {subject}")
    for row in ENDPOINTS
    for where in wheres(row)
    for subject in SUBJECTS
]


def call(row, subject, where, make_user, monkeypatch):
    """Build the world, log `subject` in, and make the row's request."""
    if row.setup is not None:
        row.setup(monkeypatch)
    world = build_world(None)
    user = make_subject(subject, world, make_user)
    if user is not None:
        world = _with_caller_token(world, user)
    client = APIClient()
    if user is not None:
        # A real session, as a browser has, so pages and the API see the same login.
        client.force_login(user)
    body = world.body(row, where)
    kwargs = {"format": "json"} if body is not None and not row.page else {}
    response = client.generic(row.method, world.path(row, where), **_encode(body, row.page, kwargs))
    return world, response


def _with_caller_token(world, user):
    world.token.user = user
    world.token.save(update_fields=["user"])
    return world


def _encode(body, page: bool, kwargs: dict) -> dict:
    import json
    from urllib.parse import urlencode

    if body is None:
        return {}
    if page:
        return {"data": urlencode(body), "content_type": "application/x-www-form-urlencoded"}
    return {"data": json.dumps(body), "content_type": "application/json"}


@pytest.mark.django_db
@pytest.mark.parametrize(("row", "subject", "where"), CASES)
def test_role_matrix(row, subject, where, make_user, monkeypatch):
    _world, response = call(row, subject, where, make_user, monkeypatch)
    expected = expected_status(row, subject, where)

    if expected == LOGIN_REDIRECT:
        assert response.status_code == 302, response.content[:300]
        assert response["Location"].startswith("/login/?next="), response["Location"]
    else:
        assert response.status_code == expected, (
            f"{row.id} as {subject} ({where}): expected {expected}, got "
            f"{response.status_code}: {getattr(response, 'content', b'')[:300]!r}"
        )
    if subject == "cluster-operator" and response.status_code == 200 and not row.page:
        body = b"".join(response.streaming_content) if response.streaming else response.content
        for name in OUTSIDE_NAMES:
            assert name.encode() not in body, f"{row.id} shows {name} outside the caller's scope"


def test_every_route_and_method_has_a_matrix_row():
    covered = {(route_of(row.path), row.method) for row in ENDPOINTS}
    served = {(r.route, m) for r in all_routes() for m in r.methods()}

    missing = sorted(served - covered)
    assert not missing, f"add rows to tests/endpoints.py for: {missing}"
    stale = sorted(covered - served)
    assert not stale, f"rows for routes or methods that no longer exist: {stale}"


def test_every_row_declares_an_action_roles_know_or_a_marker():
    from apps.accounts.policy import declared

    unknown = [row.id for row in ENDPOINTS if not declared([row.action])]
    assert not unknown
