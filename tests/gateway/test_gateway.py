"""The gateway end to end: real `hangar-gateway`, real reference engines behind routes."""

from __future__ import annotations

import json
import socket
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.deployments.models import Worker, WorkerState
from apps.gateway.keys import revoke_consumer_key
from apps.gateway.models import ConsumerKey, Route
from tests.gateway.conftest import http, published
from tests.support import processes

CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hello there gateway"}]}


def test_a_chat_completion_goes_through_to_a_worker_and_back(gateway, serving, consumer_key):
    serving("chat")
    key = consumer_key()
    published(gateway)
    status, body, _ = http("POST", f"{gateway.url}/v1/chat/completions", CHAT, key)
    assert status == 200, body
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["total_tokens"] == (
        body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )
    status, body, _ = http(
        "POST", f"{gateway.url}/v1/embeddings", {"model": "chat", "input": ["a", "b"]}, key
    )
    assert status == 200 and len(body["data"]) == 2


def test_a_stream_arrives_chunk_by_chunk_and_ends_with_done(gateway, serving, consumer_key):
    serving("chat")
    key = consumer_key()
    published(gateway)
    request = urllib.request.Request(
        f"{gateway.url}/v1/chat/completions",
        data=json.dumps({**CHAT, "stream": True}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = [line for line in response.read().decode().split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: ") :]) for e in events[:-1]]
    assert len(chunks) > 3
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    plain = http("POST", f"{gateway.url}/v1/chat/completions", CHAT, key)[1]
    assert text == plain["choices"][0]["message"]["content"]


def test_models_lists_only_the_routes_a_key_may_use(gateway, serving, consumer_key):
    serving("chat")
    serving("embed")
    all_key = consumer_key()
    one_key = consumer_key(all_routes=False, routes=[Route.objects.get(name="embed")])
    published(gateway)
    assert [m["id"] for m in http("GET", f"{gateway.url}/v1/models", key=all_key)[1]["data"]] == [
        "chat",
        "embed",
    ]
    listed = http("GET", f"{gateway.url}/v1/models", key=one_key)[1]
    assert listed["object"] == "list" and [m["id"] for m in listed["data"]] == ["embed"]
    status, body, _ = http("POST", f"{gateway.url}/v1/chat/completions", CHAT, one_key)
    assert status == 403 and body["error"]["code"] == "model_not_allowed"


def _refusal(gateway, key, body=CHAT, headers=None):
    status, answer, _ = http(
        "POST", f"{gateway.url}/v1/chat/completions", body, key, headers=headers
    )
    assert set(answer["error"]) == {"message", "type", "param", "code"}, answer
    return status, answer["error"]["code"]


def test_missing_expired_revoked_wrong_route_and_outside_network_keys_are_refused(
    gateway, serving, consumer_key
):
    serving("chat")
    serving("embed")
    expired = consumer_key(name="expired")
    revoked = consumer_key(name="revoked")
    wrong_route = consumer_key(all_routes=False, routes=[Route.objects.get(name="embed")])
    outside = consumer_key(source_networks=["10.99.0.0/16"])
    inside = consumer_key(source_networks=["127.0.0.0/8"])
    ConsumerKey.objects.filter(name="expired").update(expires_at=timezone.now() - timedelta(1))
    revoke_consumer_key(ConsumerKey.objects.get(name="revoked"))
    published(gateway)
    assert _refusal(gateway, None) == (401, "missing_api_key")
    assert _refusal(gateway, "hk-nothing_real") == (401, "invalid_api_key")
    assert _refusal(gateway, expired) == (401, "invalid_api_key")
    assert _refusal(gateway, revoked) == (401, "invalid_api_key")
    assert _refusal(gateway, wrong_route) == (403, "model_not_allowed")
    assert _refusal(gateway, outside) == (403, "network_not_allowed")
    # X-Forwarded-For is not trusted from a peer nobody declared a proxy.
    forged = {"X-Forwarded-For": "10.99.1.1"}
    assert _refusal(gateway, outside, headers=forged) == (403, "network_not_allowed")
    assert http("POST", f"{gateway.url}/v1/chat/completions", CHAT, inside)[0] == 200
    assert _refusal(gateway, inside, {**CHAT, "model": "nope"}) == (404, "model_not_found")
    assert _refusal(gateway, inside, b"not json") == (400, "invalid_json")


def test_a_key_in_the_url_is_refused(gateway, serving, consumer_key):
    serving("chat")
    key = consumer_key()
    published(gateway)
    status, body, _ = http("GET", f"{gateway.url}/v1/models?api_key={key}", key=key)
    assert status == 400 and body["error"]["code"] == "key_in_url"


@pytest.mark.parametrize(
    "path",
    [
        "//v1/models",
        "/v1//models",
        "/v1/../v1/models",
        "/v1/%2e%2e/v1/models",
        "/v1/%2E%2E/admin",
        "/V1/models",
        "/v1/Models",
        "/v1/models/",
        "/v1/chat/completions%2F",
        "/v1/chat%2Fcompletions",
        "/./v1/models",
        "/v1/files",
        "/healthz",
        "/metrics",
    ],
)
def test_paths_that_are_not_declared_reach_nothing(gateway, serving, consumer_key, path):
    serving("chat")
    key = consumer_key()
    published(gateway)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        # Raw bytes: no client library gets to normalise the path first.
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _sep, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404"), head
    assert json.loads(body)["error"]["code"] == "unknown_url"


def test_canary_weights_hold_over_2000_requests(gateway, serving, consumer_key):
    serving("chat", deployment_name="stable", weight=95)
    serving("chat", deployment_name="canary", weight=5)
    key = consumer_key()
    published(gateway)
    body = {"model": "chat", "input": "x"}

    def one(_):
        status, answer, headers = http("POST", f"{gateway.url}/v1/embeddings", body, key)
        assert status == 200, answer
        return headers.get("X-Hangar-Deployment")

    with ThreadPoolExecutor(8) as pool:
        counts = Counter(pool.map(one, range(2000)))
    assert set(counts) == {"stable", "canary"}
    # 5 % of 2,000 is 100; binomial sd ~9.7: 60..140 is more than 4 sd either side.
    assert 60 <= counts["canary"] <= 140, counts


def test_a_route_without_ready_workers_falls_back(gateway, serving, consumer_key):
    backup = serving("backup")
    serving("chat", fallback=Route.objects.get(name="backup"))
    key = consumer_key()
    published(gateway)
    assert (
        http("POST", f"{gateway.url}/v1/chat/completions", CHAT, key)[2]["X-Hangar-Deployment"]
        == "chat-deployment"
    )
    Worker.objects.filter(deployment__name="chat-deployment").update(state=WorkerState.STOPPED)
    published(gateway)
    status, _body, headers = http("POST", f"{gateway.url}/v1/chat/completions", CHAT, key)
    assert status == 200 and headers["X-Hangar-Deployment"] == backup.name
    Worker.objects.filter(deployment=backup).update(state=WorkerState.STOPPED)
    published(gateway)
    assert _refusal(gateway, key) == (503, "no_ready_worker")


def test_a_worker_that_refuses_connections_is_tried_once_and_another_answers(
    gateway, serving, consumer_key
):
    deployment = serving("chat", workers=1)
    live = Worker.objects.get(deployment=deployment)
    Worker.objects.create(
        deployment=deployment, node=live.node, model_version=live.model_version, slot=1,
        port=processes.free_port(), state=WorkerState.READY,
    )  # fmt: skip
    key = consumer_key()
    published(gateway)
    for _ in range(20):
        status, body, _ = http("POST", f"{gateway.url}/v1/chat/completions", CHAT, key)
        assert status == 200, body
    metrics = http("GET", f"{gateway.admin}/metrics")[1]
    retries = next(
        line for line in metrics.splitlines() if line.startswith("hangar_gateway_upstream_retries")
    )
    assert int(retries.split()[-1]) >= 1


def test_a_client_that_leaves_a_stream_cancels_the_upstream(gateway, serving, consumer_key):
    deployment = serving("chat", flags=("--token-delay", "0.2"))
    port = Worker.objects.get(deployment=deployment).port
    key = consumer_key()
    published(gateway)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        body = json.dumps({**CHAT, "stream": True, "max_tokens": 50}).encode()
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while received.count(b"data: ") < 3:
            received += sock.recv(65536)
    # The gateway dropped its upstream request when the client went: the engine says so...
    cancelled = 'hangar_reference_streams_cancelled_total{endpoint="/v1/chat/completions"} 1'
    processes.wait_for(
        lambda: cancelled in http("GET", f"http://127.0.0.1:{port}/metrics")[1],
        what="the engine to see its stream cancelled",
    )
    # ...and stopped generating long before the 50 tokens asked for.
    metrics = http("GET", f"http://127.0.0.1:{port}/metrics")[1]
    prefix = 'hangar_reference_completion_tokens_total{endpoint="/v1/chat/completions"} '
    sent = next(line for line in metrics.splitlines() if line.startswith(prefix))
    assert int(sent.split()[-1]) < 50


def test_a_request_straight_to_a_worker_port_is_refused(gateway, serving, consumer_key):
    deployment = serving("chat")
    worker = Worker.objects.get(deployment=deployment)
    key = consumer_key()
    published(gateway)
    direct = f"http://127.0.0.1:{worker.port}/v1/chat/completions"
    # Neither with no key nor with the consumer's own key: only the gateway holds the secret.
    assert http("POST", direct, CHAT)[0] == 401
    assert http("POST", direct, CHAT, key)[0] == 401
    assert http("POST", f"{gateway.url}/v1/chat/completions", CHAT, key)[0] == 200


def test_a_body_over_the_limit_is_refused_with_413(start_gateway, serving, consumer_key):
    serving("chat")
    key = consumer_key()
    gateway = start_gateway(HANGAR_GATEWAY_MAX_BODY_BYTES="2048")
    published(gateway)
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 4096}]}
    status, body, _ = http("POST", f"{gateway.url}/v1/chat/completions", big, key)
    assert status == 413 and body["error"]["code"] == "body_too_large"
    assert http("POST", f"{gateway.url}/v1/chat/completions", CHAT, key)[0] == 200


def test_refusals_speak_the_readers_language(gateway, serving, consumer_key):
    serving("chat")
    published(gateway)
    zh = {"Accept-Language": "zh-CN,zh;q=0.9"}
    status, body, _ = http("POST", f"{gateway.url}/v1/chat/completions", CHAT, headers=zh)
    assert status == 401 and body["error"]["message"].startswith("请以")
    status, body, _ = http("POST", f"{gateway.url}/v1/chat/completions", CHAT)
    assert status == 401 and body["error"]["message"].startswith("Send a key")
