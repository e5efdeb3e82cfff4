"""The role x endpoint matrix: every route, every role, exactly what roles.py says.

The rows live in tests/endpoints.py (one per route and method); the expected
status comes from apps/accounts/roles.py through endpoints.expected_status.
Each case also checks the audit log (tests/audit/checks.py): a mutating request,
allowed or refused, wrote exactly one event with the right outcome; a read none.
"""

from __future__ import annotations

import pytest

from apps.accounts.policy import PUBLIC
from tests.accounts.helpers import fast_password_hashing
from tests.audit.checks import assert_audited
from tests.endpoints import (
    ENDPOINTS,
    LOGIN_REDIRECT,
    OUTSIDE_NAMES,
    SEPARATION_SUBJECTS,
    SUBJECTS,
    all_routes,
    expected_status,
    perform,
    route_of,
    wheres,
)
from tests.support.responses import body_of

__all__ = ["fast_password_hashing"]

# Public routes never consult roles: one visitor and one logged-in subject suffice.
PUBLIC_SUBJECTS = ("anonymous", "viewer")

CASES = [
    pytest.param(
        row,
        subject,
        where,
        separated,
        id=f"{row.id} [{where or '-'}] as {subject}{' (separated)' if separated else ''}",
    )
    for separated in (False, True)
    for row in ENDPOINTS
    for where in wheres(row)
    for subject in (SEPARATION_SUBJECTS if separated else SUBJECTS)
    if row.action != PUBLIC or subject in PUBLIC_SUBJECTS
]


@pytest.mark.django_db
@pytest.mark.parametrize(("row", "subject", "where", "separated"), CASES)
def test_role_matrix(row, subject, where, separated, make_user, monkeypatch, settings):
    settings.SEPARATION_OF_DUTIES = separated
    _world, response, events = perform(row, subject, where, make_user, monkeypatch, settings)
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
        body = body_of(response)
        for name in OUTSIDE_NAMES:
            assert name.encode() not in body, f"{row.id} shows {name} outside the caller's scope"
    assert_audited(row, subject, expected, response, events)


def test_every_route_and_method_has_a_matrix_row():
    covered = {(route_of(row.path), row.method) for row in ENDPOINTS}
    served = {(r.route, m) for r in all_routes() for m in r.methods()}

    missing = sorted(served - covered)
    assert not missing, f"add rows to tests/endpoints.py for: {missing}"
    stale = sorted(covered - served)
    assert not stale, f"rows for routes or methods that no longer exist: {stale}"


def test_each_route_and_method_has_one_row_only():
    from collections import Counter

    counts = Counter((route_of(row.path), row.method) for row in ENDPOINTS)
    assert [key for key, n in counts.items() if n > 1] == []


def test_every_row_declares_an_action_roles_know_or_a_marker():
    from apps.accounts.policy import declared

    unknown = [row.id for row in ENDPOINTS if not declared([row.action])]
    assert not unknown
