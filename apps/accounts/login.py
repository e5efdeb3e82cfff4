"""Completing a login, shared by the password form (views.py) and single
sign-on (sso/views.py): where it lands, the second-factor step it may still
owe, and the session policy every login goes through (sessions.note_login)."""

from __future__ import annotations

from django.contrib import auth
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme

from apps.accounts import sessions, twofactor
from apps.accounts.policy import can
from apps.accounts.sso import services as sso
from apps.audit.middleware import client_address


def safe_next(request) -> str:
    target = request.POST.get("next") or request.GET.get("next") or "/"
    if url_has_allowed_host_and_scheme(target, {request.get_host()}, request.is_secure()):
        return target
    return "/"


def login_context(request, **extra) -> dict:
    """What every rendering of the login page needs, the SSO buttons included."""
    next_url = safe_next(request)
    return {"next": next_url, "sso_choices": sso.login_choices(next_url), **extra}


PENDING = "hangar_login_pending"


def finish_login(request, user, address, next_url: str, verified: bool = False):
    if request.user != user:
        auth.login(request, user)
    if verified:
        twofactor.mark_verified(request)
    sessions.note_login(request, user, address)
    gate = sessions.gate_of(request)
    if gate is not None:
        return redirect(gate)
    return redirect(landing(user, next_url))


def landing(user, next_url: str) -> str:
    """Where a login lands: `next`, but not the dashboard for someone who cannot see it."""
    if next_url == "/" and not can(user, "inventory.view"):
        # The dashboard is the inventory's: someone who only uses the gateway (the
        # consumer role, or no role) starts at their keys.
        return reverse("my-keys")
    return next_url


def finish_sso_login(request, user, next_url: str, amr=None):
    """After an identity server vouched for `user` (the library has logged them in).

    An account with its own second factor still gives its code here, unless the
    identity server asserted a second factor itself and HANGAR_SSO_MFA_TRUSTED
    says that counts. Either way the session policy (last login, session limit)
    applies as for a password login.
    """
    address = client_address(request)
    if twofactor.has_second_factor(user) and not twofactor.sso_satisfies_second_factor(amr):
        # What the single logout needs later survives the logout done here.
        kept = {key: request.session[key] for key in sso.SESSION_KEPT if key in request.session}
        backend = user.backend
        auth.logout(request)  # not logged in until the code is right
        request.session.update(kept)
        request.session[PENDING] = {"user": user.pk, "backend": backend, "next": next_url}
        return render(request, "accounts/login_code.html", {"next": next_url})
    return finish_login(
        request, user, address, next_url, verified=twofactor.sso_satisfies_second_factor(amr)
    )
