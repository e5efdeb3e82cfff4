"""A request waiting on a node's answer holds up nothing else in its Daphne process."""

from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import redis
from django.conf import settings

from apps.accounts.tokens import create_api_token
from apps.inventory import broker, commands
from apps.inventory.models import Node, NodeState
from tests.support.processes import wait_for
from tests.telemetry.conftest import FACTS, AgentSocket, gpu_sample, sample


def call(url: str, secret: str, method: str = "GET") -> tuple[int, dict]:
    request = urllib.request.Request(
        url, method=method, headers={"Authorization": f"Bearer {secret}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def node_queue(node) -> tuple[redis.Redis, str]:
    """The node's queue as its agent sees it: under its own key prefix."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    return client, broker.key_prefix(node.pk) + broker.node_queue(node.pk)


def answer_as_the_agent(node, task_id: str, result: dict) -> None:
    """What the agent's result backend does: store the JSON result and announce it."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    key = broker.key_prefix(node.pk) + commands.RESULT_KEY + task_id
    meta = json.dumps({"status": "SUCCESS", "result": result, "task_id": task_id})
    client.set(key, meta)
    client.publish(key, meta)


def queued_task_ids(node) -> list[str]:
    """The commands waiting on the node's queue: the test plays its silent agent."""
    client, queue = node_queue(node)
    return [json.loads(raw)["headers"]["id"] for raw in client.lrange(queue, 0, -1)]


def test_ingest_and_pages_answer_while_a_collect_facts_waits_on_a_silent_node(
    daphne, enrolled, admin_user
):
    node, credential = enrolled
    _token, secret = create_api_token(admin_user, "test", 1)
    client, queue = node_queue(node)
    client.delete(queue)  # left by an earlier run's node of the same id
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(
            call, f"{daphne.url}/api/v1/nodes/{node.pk}/collect-facts/", secret, "POST"
        )
        wait_for(lambda: queued_task_ids(node), what="collect_facts queued for the node")

        # While it waits: the agent's socket is served, database writes included...
        agent = AgentSocket(daphne.url, credential)
        agent.send({"type": "hello", "protocol": 1, "agent_version": "1", "facts": FACTS})
        agent.send({"type": "telemetry", "sample": sample(1, [gpu_sample(0)])})
        wait_for(
            lambda: Node.objects.get(pk=node.pk).state == NodeState.ONLINE,
            timeout=60,
            what="the hello applied",
        )
        # ...and so are other requests of the same process.
        listed = call(f"{daphne.url}/api/v1/nodes/", secret)
        assert not slow.done()
        assert listed[0] == 200 and [n["id"] for n in listed[1]["results"]] == [node.pk]

        # The node answers at last, and the waiting request completes with it.
        (task_id,) = queued_task_ids(node)
        answer_as_the_agent(node, task_id, {**FACTS, "kernel": "6.9-late"})
        status, body = slow.result(timeout=60)
    agent.close()
    assert status == 200 and body["kernel"] == "6.9-late"
