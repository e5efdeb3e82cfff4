"""Every mutating request writes exactly one audit event, whatever its outcome.

Every route and method served has a row in tests/endpoints.py (the role matrix's
coverage test enforces it), and the role matrix checks with tests.audit.checks
that each of those requests, by every role and anonymously, allowed or refused,
writes exactly one event with the right outcome. Here: the methods a route does
NOT serve, and paths that match no route, are on record too.
"""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from apps.audit.models import AuditEvent
from tests.endpoints import ENDPOINTS, MUTATING, PLACEHOLDERS, all_routes, route_of

pytestmark = pytest.mark.django_db


def _unserved():
    """(path, method, declared) for every mutating method a route does not serve;
    declared: the view says which methods it serves (DRF, @requires, public_view)."""
    paths = {route_of(row.path): row.path for row in ENDPOINTS}
    cases = []
    for route in all_routes():
        if route.route not in paths:
            continue  # no row yet: test_every_route_and_method_has_a_matrix_row says so
        served = set(route.methods())
        declared = route.drf_class is not None or hasattr(route.callback, "policy_methods")
        path = paths[route.route].split("?")[0].format(**dict.fromkeys(PLACEHOLDERS, 1))
        cases += [
            pytest.param(path, method, declared, id=f"{method} {path}")
            for method in MUTATING
            if method not in served
        ]
    return cases


@pytest.mark.parametrize(("path", "method", "declared"), _unserved())
def test_a_method_a_route_does_not_serve_is_refused_and_still_audited(
    path, method, declared, admin_api
):
    response = admin_api.generic(method, path)

    events = list(AuditEvent.objects.order_by("seq"))
    assert len(events) == 1
    if declared:
        assert response.status_code == 405
        assert (events[0].outcome, events[0].changes["status"]) == ("failed", 405)
    else:
        # A plain function view without declared methods (e.g. /healthz) may answer
        # anything; its request is on record all the same.
        assert events[0].changes["status"] == response.status_code


def test_an_anonymous_post_to_an_unknown_path_is_audited():
    response = APIClient().post("/no/such/place/")

    assert response.status_code == 404
    event = AuditEvent.objects.get()
    assert (event.action, event.actor_type, event.outcome) == (
        "http.post.unknown-route",
        "anonymous",
        "failed",
    )
