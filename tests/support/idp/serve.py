"""Start the test identity server: `python -m tests.support.idp.serve PORT HANGAR_URL`.

Creates its database and the campus accounts, registers Hangar as an OpenID
Connect client, then serves HTTP until it is stopped.
"""

import os
import sys
from pathlib import Path


def main() -> None:
    port, hangar_url = int(sys.argv[1]), sys.argv[2].rstrip("/")
    state = Path(os.environ["IDP_STATE_DIR"])
    key = state / "oidc-key.pem"
    if not key.exists():
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.support.idp.settings"
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.core.servers.basehttp import run
    from django.core.wsgi import get_wsgi_application
    from oauth2_provider.models import Application

    from tests.support.idp.people import PEOPLE

    call_command("migrate", verbosity=0)
    for username, person in PEOPLE.items():
        user, _ = get_user_model().objects.get_or_create(username=username)
        user.set_password(person["password"])
        user.save()
    Application.objects.filter(client_id="hangar").delete()
    Application.objects.create(
        name="Hangar",
        client_id="hangar",
        client_secret="hangar-client-secret",
        client_type=Application.CLIENT_CONFIDENTIAL,
        authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
        redirect_uris=f"{hangar_url}/sso/oidc/callback/",
        post_logout_redirect_uris=f"{hangar_url}/login/",
        algorithm=Application.RS256_ALGORITHM,
        skip_authorization=True,
    )
    print(f"identity server on 127.0.0.1:{port}", flush=True)
    run("127.0.0.1", port, get_wsgi_application(), threading=True)


if __name__ == "__main__":
    main()
