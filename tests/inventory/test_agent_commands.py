"""Commands reach a real agent through its own Celery queue, node.<id>."""

import json

from apps.audit.models import AuditEvent
from apps.inventory.models import Node, NodeState
from tests.inventory.test_enrollment import agent_enroll
from tests.support import processes


def test_ping_and_collect_facts_travel_through_the_node_queue_to_a_real_agent(
    daphne, admin_api, cluster, tmp_path
):
    secret = admin_api.post(
        "/api/v1/enrollment-tokens/", {"cluster": cluster.pk}, format="json"
    ).json()["secret"]
    assert agent_enroll(daphne.url, secret, tmp_path / "agent").returncode == 0
    node_id = json.loads((tmp_path / "agent" / "credential.json").read_text())["node_id"]
    agent = processes.start(
        [
            str(processes.BIN / "hangar-agent"),
            "run",
            "--state-dir",
            str(tmp_path / "agent"),
            "--simulate",
            "3",
            "--interval",
            "0.5",
        ],
        processes.console_env(),
        tmp_path / "agent.log",
    )
    try:
        processes.wait_for(
            lambda: Node.objects.get(pk=node_id).state == NodeState.ONLINE,
            what="the agent online",
            process=agent,
        )
        response = None

        def pinged():
            nonlocal response
            response = admin_api.post(f"/api/v1/nodes/{node_id}/ping/")
            return response.status_code == 200

        processes.wait_for(pinged, timeout=60, what="a ping answered", process=agent)
        assert response.json()["node_id"] == node_id
        refreshed = admin_api.post(f"/api/v1/nodes/{node_id}/collect-facts/")
        assert refreshed.status_code == 200
        assert [g["index"] for g in refreshed.json()["gpus"]] == [0, 1, 2]
    finally:
        processes.stop(agent)
    assert AuditEvent.objects.filter(action="inventory.view", target_id=str(node_id)).exists()


def test_a_node_without_an_agent_answers_504_with_a_message(admin_api, cluster, settings):
    node = Node.objects.create(cluster=cluster, hostname="silent")
    from apps.inventory import commands

    original = commands.ask_node
    commands.ask_node = lambda n, verb, timeout=10.0, kwargs=None: original(n, verb, 1.0, kwargs)
    try:
        response = admin_api.post(f"/api/v1/nodes/{node.pk}/ping/")
    finally:
        commands.ask_node = original
    assert response.status_code == 504
    assert "did not answer ping" in response.json()["detail"]
