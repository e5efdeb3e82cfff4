"""How views declare the action they need; enforcement asks apps.accounts.policy.

DRF views declare `policy = {"list": "inventory.view", "create": ...}` keyed by
viewset action (or lower-case HTTP method for plain APIViews). Django views
use `@requires("action")` or `PolicyRequiredMixin`. An undeclared action is
denied, and tests/test_policy_coverage.py fails for any route without one.
"""

from __future__ import annotations

from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from rest_framework.permissions import BasePermission

from apps.accounts.policy import PUBLIC, can
from apps.audit import recorder


def declared_action(view, request) -> str | None:
    policy = getattr(view, "policy", None) or {}
    key = getattr(view, "action", None) or request.method.lower()
    return policy.get(key)


class PolicyPermission(BasePermission):
    message = "Your roles do not allow this."

    def has_permission(self, request, view) -> bool:
        action = declared_action(view, request)
        if action is None:
            return False
        recorder.describe(action=action)
        return can(request.user, action)

    def has_object_permission(self, request, view, obj) -> bool:
        action = declared_action(view, request)
        if action is None:
            return False
        recorder.describe(target=obj)
        return can(request.user, action, obj)


def public_view(view):
    """Mark a view as open to anyone (health, schema, login)."""
    view.policy_action = PUBLIC
    if hasattr(view, "cls"):
        view.cls.policy = {m: PUBLIC for m in ("get", "head", "options", "post")}
        view.cls.permission_classes = [PolicyPermission]
    return view


def requires(action: str):
    """Decorator for function views: log in first, then the policy decides."""

    def decorate(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if action != PUBLIC and not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            recorder.describe(action=action)
            if not can(request.user, action):
                raise PermissionDenied
            return view(request, *args, **kwargs)

        wrapper.policy_action = action
        return wrapper

    return decorate
