"""Session policy (docs/identity.md): idle logout, concurrent-session limit, the
last login shown, and the gates a logged-in session must pass before it may use
the console (a forced password change, a second factor the policy requires).

`SessionPolicyMiddleware` runs on every HTTP request after authentication. Only
HTTP requests renew the idle clock: the live websocket (apps/telemetry) does not
pass through Django's middleware, and a page's own polls (htmx `every`, sent
with the header X-Hangar-Background) do not count, so a page left open with its
live charts running still ends after HANGAR_IDLE_LOGOUT_MINUTES without a click. API calls
with a token carry no session and are not touched here.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.contrib import auth, messages
from django.contrib.sessions.models import Session
from django.core.cache import cache
from django.http import HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.utils import formats, timezone
from django.utils.translation import gettext as _

from apps.accounts import passwords, twofactor
from apps.accounts.models import LoginRecord
from apps.audit import recorder


def _activity_key(session_key: str) -> str:
    return f"session-activity:{session_key}"


def last_activity(session_key: str | None) -> float | None:
    """When the person behind this session last made a request (Unix time).

    Kept in the cache (Redis), not the session: renewing it on every request
    would otherwise be a database write per request.
    """
    return cache.get(_activity_key(session_key)) if session_key else None


def note_activity(session_key: str | None, when: float | None = None) -> None:
    if session_key:
        cache.set(_activity_key(session_key), when or time.time(), settings.SESSION_COOKIE_AGE)


# Paths a gated session may still reach: the gates themselves, logout, the
# language switch, static files and the health check.
OPEN_PREFIXES = ("/account/", "/logout/", "/login/", "/sso/", "/i18n/", "/static/", "/healthz")


def note_login(request, user, address: str | None) -> None:
    """After auth.login: tell the user about their previous login, remember this
    one, start the idle clock and end the oldest sessions beyond the limit."""
    previous = LoginRecord.objects.filter(user=user).first()
    if previous is not None:
        messages.info(
            request,
            _("Your last login was at %(time)s from %(address)s.")
            % {
                "time": formats.date_format(timezone.localtime(previous.time), "DATETIME_FORMAT"),
                "address": previous.address or _("an unknown address"),
            },
        )
    if not request.session.session_key:
        request.session.save()
    LoginRecord.objects.create(user=user, address=address, session_key=request.session.session_key)
    note_activity(request.session.session_key)
    # Accounts older than the password policy start their expiry clock here.
    if user.has_usable_password():
        passwords.state_of(user)
    ended = end_sessions_beyond_limit(user)
    if ended:
        recorder.describe(changes={"sessions_ended": ended})


def end_sessions_beyond_limit(user) -> int:
    """Keep the newest HANGAR_MAX_SESSIONS_PER_USER sessions; returns how many ended."""
    limit = settings.MAX_SESSIONS_PER_USER
    if not limit:
        return 0
    records = list(
        LoginRecord.objects.filter(user=user)
        .exclude(session_key="")
        .values_list("pk", "session_key")
    )
    alive = set(
        Session.objects.filter(
            session_key__in=[key for _pk, key in records], expire_date__gt=timezone.now()
        ).values_list("session_key", flat=True)
    )
    live = [(pk, key) for pk, key in records if key in alive]
    beyond = live[limit:]
    Session.objects.filter(session_key__in=[key for _pk, key in beyond]).delete()
    # Records of ended or expired sessions stay as login history, without a key.
    ended = [pk for pk, key in records if key not in alive] + [pk for pk, _key in beyond]
    LoginRecord.objects.filter(pk__in=ended).update(session_key="")
    return len(beyond)


def gate_of(request) -> str | None:
    """The page a logged-in session must visit first, or None."""
    user = request.user
    if passwords.password_change_required(user):
        return "password-change"
    if (
        twofactor.second_factor_required(user)
        and not twofactor.has_second_factor(user)
        and not twofactor.is_verified(request)  # an SSO login whose server asserted MFA
    ):
        return "second-factor"
    return None


class SessionPolicyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            return self.get_response(request)
        now = time.time()
        last = last_activity(request.session.session_key)
        if last is not None and now - last > settings.IDLE_LOGOUT_MINUTES * 60:
            recorder.record(
                "auth.idle-logout",
                target=user,
                actor_type=recorder.Actor.SYSTEM,
                changes={"idle_minutes": int((now - last) // 60)},
            )
            auth.logout(request)
            return self._refuse(request, _("You were logged out after a time without activity."))
        # Polls a page makes by itself (htmx `every`, marked with this header) are
        # not the person's activity.
        if not request.headers.get("X-Hangar-Background") or last is None:
            note_activity(request.session.session_key, now)
        if not request.path.startswith(OPEN_PREFIXES):
            gate = gate_of(request)
            if gate is not None:
                if request.path.startswith("/api/"):
                    return JsonResponse(
                        {"detail": _("Finish logging in on the console page first.")},
                        status=403,
                    )
                if request.headers.get("HX-Request"):
                    # A fragment the gate page itself asks for (the nav's alert
                    # count): a redirect would swap the whole gate page into it,
                    # which asks again, without end. Nothing to show instead.
                    return HttpResponse(status=204)
                return redirect(gate)
        return self.get_response(request)

    @staticmethod
    def _refuse(request, message: str):
        if request.path.startswith("/api/"):
            return JsonResponse({"detail": message}, status=401)
        messages.info(request, message)
        if request.headers.get("HX-Request"):
            # A fragment's poll: the whole page goes to the login, not the fragment.
            response = HttpResponse(status=204)
            response["HX-Redirect"] = settings.LOGIN_URL
            return response
        return redirect(f"{settings.LOGIN_URL}?next={request.path}")
