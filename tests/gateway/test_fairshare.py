"""Fair share on a saturated deployment: a real gateway, a real (slow) engine.

A flooding project runs many clients at once, a quiet project a few; the
deployment takes two requests at a time. The quiet project's share of what is
served follows its weight, not its number of clients, and every request either
completes or is refused with an explicit error.
"""

from __future__ import annotations

import threading
import time

import pytest

from apps.alerts.series import deployment_series
from apps.gateway import traffic
from apps.gateway.keys import create_consumer_key
from apps.gateway.models import Project
from tests.gateway.conftest import http, published

pytestmark = pytest.mark.django_db(transaction=True)


def run_clients(url, key, clients, until, log, name):
    def loop():
        body = {
            "model": "chat",
            "messages": [{"role": "user", "content": f"a question from {name}"}],
            "max_tokens": 8,
        }
        while time.monotonic() < until:
            status, answer, headers = http("POST", url, body, key=key, timeout=60)
            log.append((time.monotonic(), name, status, answer, headers))

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    for thread in threads:
        thread.start()
    return threads


def test_a_quiet_project_gets_its_weighted_share_while_another_floods(
    start_gateway, serving, make_user
):
    deployment = serving("chat", workers=1, flags=("--token-delay", "0.02"))
    gateway = start_gateway(HANGAR_GATEWAY_WORKER_CONCURRENCY="2")
    person = make_user("researcher")
    flood = Project.objects.create(name="flood", weight=100)
    quiet = Project.objects.create(name="quiet", weight=200)
    flood_key = create_consumer_key(name="f", days=1, user=person, all_routes=True, project=flood)[
        1
    ]
    quiet_key = create_consumer_key(name="q", days=1, user=person, all_routes=True, project=quiet)[
        1
    ]
    published(gateway)
    url = f"{gateway.url}/v1/chat/completions"
    log: list = []
    started = time.monotonic()
    until = started + 16
    threads = run_clients(url, flood_key, 16, until, log, "flood")
    time.sleep(1)  # the flood first: the queue is already long when the quiet ones come
    threads += run_clients(url, quiet_key, 4, until, log, "quiet")
    # The queue is a series for alert rules and the deployment page.
    time.sleep(4)
    traffic.judge_traffic()
    time.sleep(2.5)
    traffic.judge_traffic()
    numbers = traffic.deployment_numbers(deployment.pk)
    series = deployment_series(deployment.pk, numbers)
    for thread in threads:
        thread.join()
    assert numbers["queue_length"] >= 10, numbers
    assert numbers["queue_wait_p99_ms"] > 100, numbers
    assert series[f"deployment.{deployment.pk}.queue_length"] == numbers["queue_length"]

    # Nothing lost: each answer is a completion or an explicit refusal.
    for _at, _name, status, answer, _headers in log:
        if status == 200:
            assert answer["choices"][0]["message"]["content"]
        else:
            assert status in (429, 503) and answer["error"]["message"], (status, answer)
    # While both ran (after the quiet clients settled in), the quiet project's
    # share of completions is its weight's share, within 20 %.
    window = [e for e in log if started + 3 <= e[0] <= until - 1 and e[2] == 200]
    quiet_done = sum(1 for e in window if e[1] == "quiet")
    share = quiet_done / len(window)
    assert len(window) >= 30, len(window)
    expected = 200 / 300
    assert abs(share - expected) <= 0.2 * expected, (share, quiet_done, len(window))
    # The flood waited for it, and says so.
    flood_waits = [int(e[4]["X-Hangar-Queued-Ms"]) for e in log if e[1] == "flood" and e[2] == 200]
    assert max(flood_waits) > 100
