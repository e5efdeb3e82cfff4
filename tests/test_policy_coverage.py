"""Deny by default: every route declares the policy action of every method it serves."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import Resolver404, resolve

from apps.accounts.permissions import PolicyPermission
from apps.accounts.policy import declared
from tests.endpoints import all_routes

ROUTES = all_routes()


def _drf_keys(route) -> dict[str, str]:
    """Method -> the key its policy is looked up by (viewset action or method)."""
    actions = getattr(route.callback, "actions", None)
    if actions:
        return {method: action for method, action in actions.items() if method != "options"}
    cls = route.drf_class
    return {m: m for m in ("get", "post", "put", "patch", "delete") if hasattr(cls, m)}


@pytest.mark.parametrize("route", ROUTES, ids=[r.route or "/" for r in ROUTES])
def test_every_route_declares_a_known_policy_for_each_method(route):
    cls = route.drf_class
    if cls is not None:
        policy = getattr(cls, "policy", None) or {}
        keys = _drf_keys(route)
        missing = sorted(
            key for method, key in keys.items() if method != "head" and key not in policy
        )
        assert not missing, f"{cls.__name__} declares no policy for {missing}"
        assert declared(policy[k] for m, k in keys.items() if m != "head"), policy
        assert PolicyPermission in cls.permission_classes, (
            f"{cls.__name__} does not let apps.accounts.policy decide"
        )
    else:
        action = getattr(route.callback, "policy_action", None)
        assert action is not None, (
            f"{route.callback.__module__}.{route.callback.__name__} has no policy: "
            "decorate it with @requires(action) or public_view"
        )
        assert declared([action]), action


def test_an_undeclared_viewset_action_is_refused(admin_user):
    from apps.accounts.api.views import RoleBindingViewSet

    view = RoleBindingViewSet()
    view.action = "something_new"
    view.post = lambda request: None  # as DRF maps a method to a new, undeclared action
    request = type("Request", (), {"method": "POST", "user": admin_user})()

    assert PolicyPermission().has_permission(request, view) is False


def test_an_unknown_action_is_refused_even_to_an_admin(admin_user):
    from apps.accounts.policy import can

    assert can(admin_user, "inventory.view")
    assert not can(admin_user, "inventory.everything")


def test_there_is_no_django_admin():
    with pytest.raises(Resolver404):
        resolve("/admin/")
    assert "django.contrib.admin" not in __import__("django.conf").conf.settings.INSTALLED_APPS


@pytest.mark.django_db
def test_admin_path_is_a_plain_404():
    assert Client().get("/admin/").status_code == 404
