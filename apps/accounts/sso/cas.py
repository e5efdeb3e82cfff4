"""CAS 2.0/3.0 login: django-cas-ng validates the ticket, Hangar maps the attributes."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.utils.translation import gettext_lazy as _
from django_cas_ng.utils import get_cas_client

from apps.accounts.sso import identity


class HangarCASBackend(ModelBackend):
    """Validates a service ticket at the CAS server (serviceValidate, with attributes).

    A refusal is left on the request (`request.sso_refusal`) for the view to show;
    an unreachable server raises requests.RequestException, which the view shows too.
    """

    def authenticate(self, request, ticket=None, service=None, **kwargs):
        if ticket is None or service is None or not settings.SSO_CAS:
            return None
        client = get_cas_client(service_url=service, request=request)
        username, attributes, _pgtiou = client.verify_ticket(ticket)
        if not username:
            request.sso_refusal = identity.Refused(
                "ticket-refused",
                _(
                    "The CAS server did not accept the login ticket (it may have been used "
                    "already or have expired). Log in again."
                ),
            )
            return None
        found = identity.identity_from("cas", username, attributes or {}, settings.SSO_CAS)
        try:
            return identity.user_for(found)
        except identity.Refused as refusal:
            request.sso_refusal = refusal
            request.sso_username = found.username
            return None
