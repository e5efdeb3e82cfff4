from django.utils.translation import gettext as _
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from apps.accounts.tokens import user_for_api_token


class ApiTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer hgr_...` for integrations and scripts."""

    keyword = "Bearer"

    def authenticate(self, request):
        header = request.headers.get("Authorization", "")
        scheme, _sep, raw = header.partition(" ")
        if scheme != self.keyword or not raw:
            return None
        user = user_for_api_token(raw.strip())
        if user is None:
            raise exceptions.AuthenticationFailed(
                _("The API token is unknown, expired or revoked.")
            )
        return user, None

    def authenticate_header(self, request):
        return self.keyword


class ApiTokenScheme(OpenApiAuthenticationExtension):
    """Describes API tokens in the OpenAPI schema (Swagger's Authorize button)."""

    target_class = "apps.accounts.authentication.ApiTokenAuthentication"
    name = "apiToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "bearerFormat": "hgr_<prefix>_<secret>"}
