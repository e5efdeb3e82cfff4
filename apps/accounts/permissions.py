"""How views declare the action they need; enforcement asks apps.accounts.policy.

DRF views declare `policy = {"list": "inventory.view", "create": ...}` keyed by
viewset action (or lower-case HTTP method for plain APIViews). Django views
use `@requires("action", methods=...)`. An undeclared action is denied, and
tests/test_policy_coverage.py fails for any route without one.
"""

from __future__ import annotations

from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseNotAllowed
from django.shortcuts import render
from django.urls import Resolver404, resolve
from django.utils.translation import gettext_lazy as _
from rest_framework.permissions import BasePermission

from apps.accounts.policy import AUTHENTICATED, PUBLIC, can
from apps.audit import recorder

# Markers that say who may call a view, not what is done: the audit event is
# named by the view (recorder.describe) or after the route instead.
_NOT_AN_ACTION = {PUBLIC, AUTHENTICATED}


def declared_action(view, request) -> str | None:
    policy = getattr(view, "policy", None) or {}
    key = getattr(view, "action", None) or request.method.lower()
    return policy.get(key)


class PolicyPermission(BasePermission):
    message = _("Your roles do not allow this.")

    def has_permission(self, request, view) -> bool:
        if getattr(view, request.method.lower(), None) is None:
            return True  # no handler for the method: nothing to allow, DRF answers 405
        action = declared_action(view, request)
        if action is None:
            return False
        if action not in _NOT_AN_ACTION:
            recorder.describe(action=action)
        if can(request.user, action):
            return True
        _describe_url_target(view)
        return False

    def has_object_permission(self, request, view, obj) -> bool:
        action = declared_action(view, request)
        if action is None:
            return False
        recorder.describe(target=obj)
        return can(request.user, action, obj)


def _describe_url_target(view) -> None:
    """Name the object a refused request was aimed at, from the URL alone (the
    object is not loaded: a refusal must not depend on, or reveal, its existence)."""
    lookup = getattr(view, "lookup_url_kwarg", None) or getattr(view, "lookup_field", None)
    value = getattr(view, "kwargs", {}).get(lookup) if lookup else None
    queryset = getattr(view, "queryset", None)
    if value is not None and queryset is not None:
        recorder.describe(target=(queryset.model._meta.label_lower, value, ""))


def public_view(view, methods: tuple[str, ...] = ("GET", "HEAD")):
    """Mark a view as open to anyone (health, schema, API docs) for `methods`."""
    if not hasattr(view, "cls"):
        return requires(PUBLIC, methods)(view)
    view.policy_action = PUBLIC
    view.cls.policy = {m.lower(): PUBLIC for m in (*methods, "OPTIONS")}
    view.cls.permission_classes = [PolicyPermission]
    return view


def nearest_page(path: str) -> str:
    """The closest address above `path` that is a page: /deployments/new/ -> /deployments/,
    /alerts/5/acknowledge/ -> /alerts/ (there is no /alerts/5/)."""
    parts = [p for p in path.split("/") if p]
    while parts:
        parts.pop()
        candidate = "/" + "".join(f"{p}/" for p in parts)
        try:
            match = resolve(candidate)
        except Resolver404:
            continue
        if "GET" in getattr(match.func, "policy_methods", ("GET",)):
            return candidate
    return "/"


def post_only_page(request, methods: tuple[str, ...]):
    """A GET of an address that only takes a form (a bookmarked or reloaded action
    URL): a page saying so, with a link to where the form is, not an empty 405."""
    response = render(
        request,
        "errors/405.html",
        {"page": nearest_page(request.path), "methods": ", ".join(methods)},
        status=405,
    )
    response["Allow"] = ", ".join(methods)
    return response


def requires(action: str, methods: tuple[str, ...] = ("GET", "HEAD")):
    """Decorator for function views: the HTTP methods they answer, then log in
    first, then the policy decides. Pages are GET-only unless they say otherwise."""
    methods = tuple(m.upper() for m in methods)

    def decorate(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if request.method not in methods:
                if request.method in ("GET", "HEAD"):
                    return post_only_page(request, methods)
                return HttpResponseNotAllowed(methods)
            if action not in _NOT_AN_ACTION:
                recorder.describe(action=action)
            if action != PUBLIC and not request.user.is_authenticated:
                recorder.describe(outcome=recorder.Outcome.DENIED)
                return redirect_to_login(request.get_full_path())
            if not can(request.user, action):
                raise PermissionDenied
            return view(request, *args, **kwargs)

        wrapper.policy_action = action
        wrapper.policy_methods = methods
        return wrapper

    return decorate
