"""A key made over the console's API works at a real `hangar-gateway` and stops
working there once revoked over the API: the console's API, the snapshot in
Redis, the gateway process and a real reference engine, nothing stood in for."""

from __future__ import annotations

from apps.gateway import snapshot
from tests.gateway.conftest import http, published

CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hello through the gateway"}]}


def test_a_key_created_over_the_api_works_until_it_is_revoked_over_the_api(
    start_gateway, serving, make_user, client_for
):
    gateway = start_gateway()
    serving("chat")
    serving("embed")
    api = client_for(make_user("sam", "viewer"))

    created = api.post(
        "/api/v1/consumer-keys/", {"name": "notebook", "days": 1, "routes": ["chat"]}, format="json"
    )
    assert created.status_code == 201, created.json()
    raw, key_id = created.json()["key"], created.json()["id"]
    published(gateway)

    models = http("GET", f"{gateway.url}/v1/models", key=raw)[1]
    assert [m["id"] for m in models["data"]] == ["chat"]
    status, body, _ = http("POST", f"{gateway.url}/v1/chat/completions", CHAT, raw)
    assert status == 200, body
    assert body["choices"][0]["message"]["role"] == "assistant"
    status, body, _ = http(
        "POST", f"{gateway.url}/v1/chat/completions", {**CHAT, "model": "embed"}, raw
    )
    assert (status, body["error"]["code"]) == (403, "model_not_allowed")

    revoked = api.post(f"/api/v1/consumer-keys/{key_id}/revoke/")
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    # The revocation published a snapshot on commit; wait for the gateway to hold it.
    after_revoke = snapshot.publish()
    gateway.wait_for_generation(after_revoke)

    status, body, _ = http("POST", f"{gateway.url}/v1/chat/completions", CHAT, raw)
    assert (status, body["error"]["code"]) == (401, "invalid_api_key")
    assert http("GET", f"{gateway.url}/v1/models", key=raw)[0] == 401
