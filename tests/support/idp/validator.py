from oauth2_provider.oauth2_validators import OAuth2Validator

from tests.support.idp.people import PEOPLE


class CampusValidator(OAuth2Validator):
    # Every claim for every scope: the test wants them all in userinfo and the ID token.
    oidc_claim_scope = None

    def get_additional_claims(self, request):
        person = PEOPLE.get(request.user.get_username(), {})
        return {
            "preferred_username": request.user.get_username(),
            "name": person.get("displayName", ""),
            "email": person.get("mail", ""),
            "groups": person.get("groups", []),
        }
