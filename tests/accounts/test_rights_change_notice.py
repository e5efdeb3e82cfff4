"""Closing a user's live sockets never undoes or fails the change that caused it."""

from __future__ import annotations

import pytest

from tests.support import processes


@pytest.mark.django_db(transaction=True)
def test_a_deactivation_succeeds_while_the_channel_layer_is_unreachable(
    admin_api, make_user, settings
):
    # The sockets are told after the commit (apps/accounts/signals.py); an
    # unreachable channel layer must not turn a committed deactivation into a 500.
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [f"redis://127.0.0.1:{processes.free_port()}/0"]},
        }
    }
    user = make_user("leaving", "viewer")

    assert admin_api.delete(f"/api/v1/users/{user.pk}/").status_code == 204

    user.refresh_from_db()
    assert user.is_active is False
