from rest_framework import authentication, exceptions

from apps.accounts.tokens import user_for_api_token


class ApiTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer hgr_...` for integrations and scripts."""

    keyword = "Bearer"

    def authenticate(self, request):
        header = request.headers.get("Authorization", "")
        scheme, _, raw = header.partition(" ")
        if scheme != self.keyword or not raw:
            return None
        user = user_for_api_token(raw.strip())
        if user is None:
            raise exceptions.AuthenticationFailed("The API token is unknown, expired or revoked.")
        return user, None

    def authenticate_header(self, request):
        return self.keyword
