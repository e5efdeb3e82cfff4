"""Limits through two real gateway processes sharing one real Redis, to real engines.

The reference engine counts a word as a token (agents/reference_engine.py), so
every test knows what each answer costs and can check the limits to the token.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import threading
import time
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from zoneinfo import ZoneInfo

import pytest
from django.conf import settings

from apps.gateway import usage
from apps.gateway.keys import create_consumer_key
from apps.gateway.models import Limit, Project, UsageMinute
from apps.gateway.proxy.limits import estimate_tokens
from tests.gateway.conftest import http, published

pytestmark = pytest.mark.django_db(transaction=True)

PROMPT = "count these five words"


def ask(gateway, key, max_tokens=8, prompt=PROMPT, headers=None):
    body = {
        "model": "chat",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
    }
    return http("POST", f"{gateway.url}/v1/chat/completions", body, key=key, headers=headers)


@pytest.fixture
def two_gateways(start_gateway, serving):
    serving("chat", workers=1)
    first, second = start_gateway(), start_gateway()
    return first, second


@pytest.fixture
def project_key(make_user):
    """project_key(**limit fields) -> (raw key, key row, limit) in a new project."""
    person = make_user("limited")

    def make(scope="key", route=None, **values):
        project = Project.objects.create(name=f"p-{Project.objects.count()}", weight=100)
        key, raw = create_consumer_key(
            name="limited", days=5, user=person, all_routes=True, project=project
        )
        subject = {"key": {"key": key}, "user": {"user": person}}.get(scope, {"project": project})
        limit = Limit.objects.create(scope=scope, route=route, **subject, **values)
        return raw, key, limit

    return make


def publish_to(*gateways):
    for gateway in gateways:
        published(gateway)


def test_a_token_budget_per_minute_holds_across_two_gateways_and_resets_on_time(
    two_gateways, project_key
):
    first, second = two_gateways
    raw, _key, _limit = project_key(tokens_per_minute=400)
    publish_to(first, second)
    # Start early in a minute, so the whole burst falls in one window.
    while datetime.now().second > 40:
        time.sleep(1)
    spent, refused, headers = 0, [], None
    for i in range(60):
        status, body, got = ask(first if i % 2 else second, raw)
        if status == 200:
            spent += body["usage"]["total_tokens"]
        else:
            refused.append((status, body, got))
            headers = got
    assert refused, "a budget of 400 tokens must run out within 60 requests"
    estimate = estimate_tokens(
        {"messages": [], "max_tokens": 8},
        len(
            b'{"model": "chat", "messages": [{"role": "user", "content": "count these five '
            b'words"}], "max_tokens": 8}'
        ),
    )
    # With max_tokens set the estimate covers every answer: no overrun at all, and
    # the budget is used up to within one estimate.
    assert 400 - estimate <= spent <= 400
    status, body, got = refused[0]
    assert status == 429
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert "400 tokens per minute" in body["error"]["message"]
    assert got["x-hangar-limit"] == "key:tokens_per_minute"
    assert got["x-ratelimit-limit-tokens"] == "400"
    retry_after = int(headers["Retry-After"])
    assert 1 <= retry_after <= 60
    # After the window ends (Retry-After says when), the same key works again, on both.
    time.sleep(retry_after + 0.5)
    assert ask(first, raw)[0] == 200
    assert ask(second, raw)[0] == 200


def test_a_weekly_budget_stops_a_key_and_says_when_it_resets(two_gateways, project_key):
    first, second = two_gateways
    raw, _key, _limit = project_key(scope="project", tokens_per_week=120)
    publish_to(first, second)
    answers = [ask(first, raw) for _ in range(12)]
    statuses = [a[0] for a in answers]
    served = statuses.count(200)
    assert served >= 2 and statuses == [200] * served + [429] * (12 - served)
    assert sum(a[1]["usage"]["total_tokens"] for a in answers[:served]) <= 120
    status, body, got = ask(second, raw)
    assert status == 429
    zone = ZoneInfo(settings.TIME_ZONE)
    now = datetime.now(zone)
    monday = (now - timedelta(days=now.weekday())).replace(
        hour=0, minute=0, second=0, microsecond=0
    ) + timedelta(days=7)
    assert monday.strftime("%Y-%m-%d %H:%M") in body["error"]["message"]
    assert "per week" in body["error"]["message"]
    assert body["error"]["type"] == "insufficient_quota"
    assert got["x-hangar-limit"] == "project:tokens_per_week"
    expected = (monday - now).total_seconds()
    assert abs(int(got["Retry-After"]) - expected) < 120
    # In Chinese for a reader who asks for it.
    status, body, _got = ask(first, raw, headers={"Accept-Language": "zh-CN,zh;q=0.9"})
    assert status == 429 and "每周" in body["error"]["message"]


def test_concurrent_requests_are_held_to_the_limit_across_gateways(
    start_gateway, serving, project_key
):
    serving("chat", workers=1, flags=("--token-delay", "0.1"))
    first, second = start_gateway(), start_gateway()
    raw, _key, _limit = project_key(scope="key", concurrent_requests=2)
    publish_to(first, second)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda i: ask(first if i % 2 else second, raw, max_tokens=10), range(8))
        )
    ok = [a for a in answers if a[0] == 200]
    refused = [a for a in answers if a[0] == 429]
    assert len(ok) == 2 and len(refused) == 6, [a[0] for a in answers]
    assert all(r[2]["x-hangar-limit"] == "key:concurrent_requests" for r in refused)
    assert "2 at a time" in refused[0][1]["error"]["message"]
    # Their leases went with them: two more fit again.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        again = list(pool.map(lambda g: ask(g, raw, max_tokens=2), (first, second)))
    assert [a[0] for a in again] == [200, 200]


def test_a_request_larger_than_the_whole_budget_is_told_so(two_gateways, project_key):
    first, _second = two_gateways
    raw, _key, _limit = project_key(tokens_per_minute=100)
    publish_to(first)
    status, body, _got = ask(first, raw, max_tokens=500)
    assert status == 429
    assert body["error"]["code"] == "request_too_large"
    assert "lower max_tokens" in body["error"]["message"]


def test_a_limit_on_one_route_leaves_the_others_alone(start_gateway, serving, project_key):
    serving("chat")
    serving("embed")
    gateway = start_gateway()
    from apps.gateway.models import Route

    raw, _key, _limit = project_key(
        scope="key", route=Route.objects.get(name="chat"), requests_per_minute=1
    )
    published(gateway)
    assert ask(gateway, raw)[0] == 200
    assert ask(gateway, raw)[0] == 429
    status, _body, _got = http(
        "POST", f"{gateway.url}/v1/embeddings", {"model": "embed", "input": "x"}, key=raw
    )
    assert status == 200


def test_usage_accounts_equal_what_was_sent_token_for_token(two_gateways, project_key):
    first, second = two_gateways
    raw, key, _limit = project_key(scope="key", requests_per_minute=1000)
    publish_to(first, second)
    expected = {"requests": 0, "prompt": 0, "completion": 0}
    for i in range(24):
        gateway = first if i % 2 else second
        prompt = f"prompt number {i} " + "word " * (i % 5)
        stream = i % 3 == 0
        body = {
            "model": "chat",
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 6 + i % 4,
        }
        if stream:
            # Streams that did not ask for usage: the gateway asks, and keeps it from them.
            status, text, _got = http(
                "POST", f"{gateway.url}/v1/chat/completions", {**body, "stream": True}, key=raw
            )
            assert status == 200 and text.rstrip().endswith("[DONE]")
            events = [
                json.loads(line[len("data: ") :])
                for line in text.splitlines()
                if line.startswith("data: {")
            ]
            assert events and all(e["choices"] and not e.get("usage") for e in events)
            status, answer, _got = http(
                "POST", f"{gateway.url}/v1/chat/completions", body, key=raw
            )  # the same prompt costs the same: the count to expect
            expected["requests"] += 1
        else:
            status, answer, _got = http("POST", f"{gateway.url}/v1/chat/completions", body, key=raw)
        assert status == 200
        expected["requests"] += 1
        factor = 2 if stream else 1
        expected["prompt"] += answer["usage"]["prompt_tokens"] * factor
        expected["completion"] += answer["usage"]["completion_tokens"] * factor
    # Stopping a gateway writes its last counts; then the minutes are moved.
    from tests.support import processes

    for gateway in (first, second):
        processes.stop(gateway.proc)
    usage.flush_usage(now=time.time() + 3600)
    rows = UsageMinute.objects.filter(key=key)
    assert sum(r.requests for r in rows) == expected["requests"]
    assert sum(r.prompt_tokens for r in rows) == expected["prompt"]
    assert sum(r.completion_tokens for r in rows) == expected["completion"]
    assert {r.status for r in rows} == {"2xx"}
    assert {r.project_id for r in rows} == {key.project_id}
    assert {r.user_id for r in rows} == {key.user_id}
    assert all(r.route == "chat" and r.deployment_id and r.worker_id for r in rows)
    assert sum(r.streams for r in rows) == 8  # the streams' time to first token is kept
    # Moved once: a second run writes nothing more.
    assert usage.flush_usage(now=time.time() + 3600) == 0


def test_refusals_are_accounted_too(two_gateways, project_key):
    first, _second = two_gateways
    raw, key, _limit = project_key(scope="key", requests_per_minute=2)
    publish_to(first)
    statuses = [ask(first, raw)[0] for _ in range(5)]
    assert statuses == [200, 200, 429, 429, 429]
    from tests.support import processes

    processes.stop(first.proc)
    usage.flush_usage(now=time.time() + 3600)
    by_status = {}
    for row in UsageMinute.objects.filter(key=key):
        by_status[row.status] = by_status.get(row.status, 0) + row.requests
    assert by_status == {"2xx": 2, "429": 3}


def test_the_estimate_is_an_upper_bound_for_english_and_chinese():
    english = "The quick brown fox jumps over the lazy dog " * 20
    chinese = "我们在校园里部署了大模型推理服务" * 20
    for text, tokens in ((english, len(english.split())), (chinese, len(chinese))):
        body = f'{{"model":"m","messages":[{{"role":"user","content":"{text}"}}]}}'
        estimate = estimate_tokens({"messages": [], "max_tokens": 1}, len(body.encode()))
        # One token per word in English, one per character in Chinese: both covered.
        assert estimate - 1 >= math.ceil(tokens * 0.99)


class _CrlfEngine(BaseHTTPRequestHandler):
    """An engine that ends its event lines with CRLF (as SSE allows) and sends usage last."""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for word in ("one", "two", "three"):
            chunk = {"choices": [{"index": 0, "delta": {"content": word}}], "usage": None}
            self.wfile.write(f"data: {json.dumps(chunk)}\r\n\r\n".encode())
            self.wfile.flush()
        usage = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}
        self.wfile.write(f"data: {json.dumps(usage)}\r\n\r\ndata: [DONE]\r\n\r\n".encode())

    def log_message(self, *args):
        pass


def test_a_stream_with_crlf_line_ends_is_relayed_and_its_usage_counted(
    start_gateway, serving, project_key
):
    from apps.deployments.models import Worker
    from tests.support import processes

    server = ThreadingHTTPServer(("127.0.0.1", 0), _CrlfEngine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        deployment = serving("chat")
        Worker.objects.filter(deployment=deployment).update(port=server.server_address[1])
        gateway = start_gateway()
        raw, key, _limit = project_key(scope="key", requests_per_minute=100)
        published(gateway)
        status, text, _got = http(
            "POST",
            f"{gateway.url}/v1/chat/completions",
            {"model": "chat", "messages": [{"role": "user", "content": "x"}], "stream": True},
            key=raw,
        )
        assert status == 200
        events = [line for line in text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        contents = [json.loads(e[6:])["choices"][0]["delta"]["content"] for e in events[:-1]]
        assert contents == ["one", "two", "three"]  # and no usage-only chunk
        processes.stop(gateway.proc)
        usage.flush_usage(now=time.time() + 3600)
        row = UsageMinute.objects.get(key=key)
        assert (row.prompt_tokens, row.completion_tokens) == (7, 3)
    finally:
        server.shutdown()
