"""Agents stream in over /ws/agent/, browsers receive over /ws/telemetry/ (real Daphne)."""

import json
import time

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from apps.audit.models import AuditEvent
from apps.inventory.models import GPU, Node, NodeState
from apps.inventory.services import create_enrollment_token, enroll_node, mark_offline_nodes
from apps.telemetry import live
from tests.support.processes import wait_for
from tests.telemetry.conftest import (
    FACTS,
    AgentSocket,
    browser_socket,
    gpu_sample,
    receive_until,
    sample,
    session_for,
)


def node_state(node):
    return Node.objects.get(pk=node.pk).state


def test_hello_brings_a_node_online_and_records_its_gpus(daphne, enrolled):
    node, credential = enrolled
    agent = AgentSocket(daphne.url, credential)
    assert agent.welcome == {"type": "welcome", "protocol": 1, "node_id": node.pk}
    agent.send({"type": "hello", "protocol": 1, "agent_version": "9.9", "facts": FACTS})
    wait_for(lambda: node_state(node) == NodeState.ONLINE, what="node online")
    agent.close()
    node.refresh_from_db()
    assert node.agent_version == "9.9" and node.simulated and node.cpu_count == 4
    assert list(GPU.objects.filter(node=node).values_list("index", "uuid")) == [
        (0, "GPU-test-0"),
        (1, "GPU-test-1"),
    ]
    transition = AuditEvent.objects.get(action="inventory.node-state", target_id=str(node.pk))
    assert transition.actor_type == "system"
    assert transition.changes["state"] == [NodeState.PENDING, NodeState.ONLINE]


def test_a_subscribed_browser_receives_each_sample_labelled_simulated(
    daphne, enrolled, make_user, cluster
):
    node, credential = enrolled
    viewer = make_user("vera", ("viewer", cluster))
    browser = browser_socket(daphne.url, session_for(viewer))
    browser.send(json.dumps({"action": "subscribe", "cluster": cluster.pk}))
    snapshot = receive_until(browser, lambda m: m["type"] == "snapshot")
    assert [n["id"] for n in snapshot["nodes"]] == [node.pk]
    agent = AgentSocket(daphne.url, credential)
    agent.send({"type": "hello", "protocol": 1, "agent_version": "1", "facts": FACTS})
    for seq in (1, 2, 3):
        agent.send(
            {"type": "telemetry", "sample": sample(seq, [gpu_sample(0, temperature=60 + seq)])}
        )
    seen = []
    while len(seen) < 3:
        message = receive_until(browser, lambda m: m["type"] == "sample")
        seen.append(
            (
                message["node"],
                message["sample"]["seq"],
                message["sample"]["gpus"][0]["temperature"],
                message["sample"]["simulated"],
            )
        )
    assert seen == [(node.pk, 1, 61, True), (node.pk, 2, 62, True), (node.pk, 3, 63, True)]
    assert live.latest_samples([node.pk])[node.pk]["seq"] == 3
    agent.close()
    browser.close()


def test_a_gpu_fault_degrades_the_node_and_a_clean_sample_restores_it(daphne, enrolled):
    node, credential = enrolled
    agent = AgentSocket(daphne.url, credential)
    agent.send({"type": "hello", "protocol": 1, "agent_version": "1", "facts": FACTS})
    wait_for(lambda: node_state(node) == NodeState.ONLINE, what="online")
    agent.send(
        {
            "type": "telemetry",
            "sample": sample(
                1,
                [gpu_sample(0), gpu_sample(1, fault="GPU is lost", temperature=None)],
                faults=["gpu 1: GPU is lost"],
            ),
        }
    )
    wait_for(lambda: node_state(node) == NodeState.DEGRADED, what="degraded")
    assert Node.objects.get(pk=node.pk).state_reason == "gpu 1: GPU is lost"
    agent.send({"type": "telemetry", "sample": sample(2)})
    wait_for(lambda: node_state(node) == NodeState.ONLINE, what="online again")
    agent.close()
    states = [
        e.changes["state"]
        for e in AuditEvent.objects.filter(action="inventory.node-state").order_by("seq")
    ]
    assert states == [["pending", "online"], ["online", "degraded"], ["degraded", "online"]]


def test_an_unknown_credential_is_refused_and_audited(daphne, enrolled):
    agent = AgentSocket.__new__(AgentSocket)
    from websockets.sync.client import connect

    ws = connect(
        daphne.url.replace("http", "ws") + "/ws/agent/",
        additional_headers={"Authorization": "Bearer hnc_forged"},
    )
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)
    assert closed.value.rcvd.code == 4401
    event = AuditEvent.objects.get(action="agent.connect")
    assert event.outcome == "denied" and event.actor_type == "node"
    del agent


def test_a_revoked_credential_is_disconnected_and_refused(daphne, enrolled, admin_api):
    node, credential = enrolled
    agent = AgentSocket(daphne.url, credential)
    agent.send({"type": "hello", "protocol": 1, "agent_version": "1", "facts": FACTS})
    wait_for(lambda: node_state(node) == NodeState.ONLINE, what="online")
    response = admin_api.post(f"/api/v1/nodes/{node.pk}/revoke-credential/")
    assert response.status_code == 200 and response.json()["credential_revoked"] is True
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            agent.ws.recv(timeout=10)
    assert closed.value.rcvd.code == 4401
    again = AgentSocket.__new__(AgentSocket)
    from websockets.sync.client import connect

    again = connect(
        daphne.url.replace("http", "ws") + "/ws/agent/",
        additional_headers={"Authorization": f"Bearer {credential}"},
    )
    with pytest.raises(ConnectionClosed):
        again.recv(timeout=10)
    assert AuditEvent.objects.filter(action="agent.connect", outcome="denied").count() == 1


def test_an_agent_cannot_report_for_another_node(daphne, enrolled, cluster):
    from apps.inventory.services import create_enrollment_token, enroll_node

    node, credential = enrolled
    _t, secret = create_enrollment_token(cluster, None)
    other, _ = enroll_node(secret, "other", FACTS, None)
    agent = AgentSocket(daphne.url, credential)
    forged = sample(1)
    forged["node_id"] = other.pk
    agent.send({"type": "telemetry", "node_id": other.pk, "sample": forged})
    agent.send({"type": "telemetry", "sample": sample(2)})
    wait_for(
        lambda: live.latest_samples([node.pk]).get(node.pk, {}).get("seq") == 2,
        what="the agent's own sample stored",
    )
    agent.close()
    assert live.latest_samples([other.pk]) == {}
    assert node_state(other) == NodeState.PENDING


def test_malformed_messages_get_an_error_and_do_not_close_the_stream(daphne, enrolled):
    node, credential = enrolled
    agent = AgentSocket(daphne.url, credential)
    agent.ws.send("{not json")
    assert json.loads(agent.ws.recv(timeout=10))["type"] == "error"
    bad = sample(1)
    bad["gpus"][0]["temperature"] = "hot"
    agent.send({"type": "telemetry", "sample": bad})
    error = json.loads(agent.ws.recv(timeout=10))
    assert error["type"] == "error" and "temperature" in error["detail"]
    agent.send({"type": "telemetry", "sample": sample(2)})
    wait_for(
        lambda: live.latest_samples([node.pk]).get(node.pk, {}).get("seq") == 2,
        what="a good sample after bad ones",
    )
    agent.close()


def test_browser_sockets_need_a_login_a_same_origin_and_a_cluster_in_scope(
    daphne, enrolled, make_user, cluster, other_cluster
):
    with pytest.raises(InvalidStatus):
        browser_socket(daphne.url, None)
    viewer = make_user("olga", ("viewer", other_cluster))
    with pytest.raises(InvalidStatus):
        browser_socket(daphne.url, session_for(viewer), origin="http://evil.example")
    browser = browser_socket(daphne.url, session_for(viewer))
    browser.send(json.dumps({"action": "subscribe", "cluster": cluster.pk}))
    assert receive_until(browser, lambda m: True)["type"] == "error"
    node, _ = enrolled
    browser.send(json.dumps({"action": "subscribe", "node": node.pk}))
    assert receive_until(browser, lambda m: True)["type"] == "error"
    browser.send(json.dumps({"action": "subscribe"}))
    snapshot = receive_until(browser, lambda m: m["type"] == "snapshot")
    assert snapshot["nodes"] == []  # the node is in a cluster the viewer may not see
    browser.close()


def test_silence_counts_only_while_the_console_listens(enrolled, settings):
    """A web restart slower than the grace: the nodes are not blamed for it."""
    node, _ = enrolled
    Node.objects.filter(pk=node.pk).update(state=NodeState.ONLINE)
    settings.NODE_GRACE_SECONDS = 15
    now = time.time()
    # Heard a minute ago, then the only web process died; its successor listens
    # since 3 s: the node has 12 s more to reconnect.
    assert mark_offline_nodes({node.pk: now - 60}, now, listening_since=now - 3) == []
    assert mark_offline_nodes({}, now, listening_since=now - 3) == []
    later = now + 13
    assert mark_offline_nodes({node.pk: now - 60}, later, listening_since=now - 3) == [node.pk]
    node.refresh_from_db()
    assert "73 s" in node.state_reason  # the reason says how long it was last heard


def test_the_offline_sweep_judges_nobody_while_no_web_process_listens(daphne, enrolled, settings):
    """Daphne beats into Redis while it runs (apps/telemetry/listening.py); killed,
    its beat goes stale, and the sweep then marks no node offline."""
    import signal

    from apps.inventory.tasks import mark_offline_nodes_task
    from apps.telemetry import listening
    from tests.support import processes

    node, _ = enrolled
    Node.objects.filter(pk=node.pk).update(state=NodeState.ONLINE)
    settings.NODE_GRACE_SECONDS = 1
    wait_for(lambda: listening.listening_since(), what="Daphne's beat")
    assert time.time() - 120 < listening.listening_since() <= time.time()
    processes.stop(daphne, signal.SIGKILL)
    wait_for(
        lambda: listening.listening_since() is None,
        timeout=listening.STALE_S + 10,
        what="the killed Daphne's beat going stale",
    )
    # The dead process's field stays, the newest of the dead: "none listens".
    assert len(live.client().hgetall(listening.KEY)) == 1
    assert mark_offline_nodes_task() == []
    assert node_state(node) == NodeState.ONLINE
    # No web process ever beat here (all of a release before this one): judge as always.
    live.client().delete(listening.KEY)
    assert listening.listening_since() == 0.0
    assert mark_offline_nodes_task() == [node.pk]


def test_a_silent_node_goes_offline_after_the_grace_period(enrolled, settings):
    node, _ = enrolled
    Node.objects.filter(pk=node.pk).update(state=NodeState.ONLINE)
    settings.NODE_GRACE_SECONDS = 15
    now = time.time()
    assert mark_offline_nodes({node.pk: now - 5}, now) == []
    assert mark_offline_nodes({node.pk: now - 16}, now) == [node.pk]
    node.refresh_from_db()
    assert node.state == NodeState.OFFLINE and "16 s" in node.state_reason


def test_a_large_snapshot_arrives_in_pieces_under_the_websocket_payload_limit(
    daphne, make_user, cluster
):
    nodes = Node.objects.bulk_create(
        [Node(cluster=cluster, hostname=f"bulk-{i}", state=NodeState.ONLINE) for i in range(420)]
    )
    eight = sample(1, [gpu_sample(i) for i in range(8)])
    pipe = live.client().pipeline()
    for node in nodes:
        pipe.set(live.latest_key(node.pk), json.dumps(eight))
    pipe.execute()
    assert len(json.dumps(eight)) * len(nodes) > 2**20  # one message would be too big
    browser = browser_socket(daphne.url, session_for(make_user("wide", "viewer")))
    browser.send(json.dumps({"action": "subscribe", "cluster": cluster.pk}))
    seen, pieces = set(), 0
    while True:
        raw = browser.recv(timeout=15)
        message = json.loads(raw)
        if message["type"] != "snapshot":
            continue
        assert len(raw) < 2**20
        pieces += 1
        seen |= {n["id"] for n in message["nodes"] if n["sample"]["gpus"][7]["index"] == 7}
        if message["last"]:
            break
    browser.close()
    assert seen == {n.pk for n in nodes} and pieces == 5


def test_the_grid_view_sends_compact_tiles_that_changed_and_only_nodes_in_scope(
    daphne, enrolled, make_user, cluster, other_cluster
):
    node, credential = enrolled
    _token, secret = create_enrollment_token(other_cluster, None)
    stranger, stranger_credential = enroll_node(secret, "gpu-other", FACTS, None)
    viewer = make_user("gina", ("viewer", cluster))
    browser = browser_socket(daphne.url, session_for(viewer))
    browser.send(json.dumps({"action": "subscribe", "view": "grid"}))
    snapshot = receive_until(browser, lambda m: m["type"] == "snapshot")
    assert [(n["id"], n["tiles"]) for n in snapshot["nodes"]] == [(node.pk, [])]
    browser.send(json.dumps({"action": "subscribe", "node": node.pk}))  # same view: fine
    receive_until(browser, lambda m: m["type"] == "snapshot")
    browser.send(json.dumps({"action": "subscribe", "view": "full"}))
    assert receive_until(browser, lambda m: m["type"] == "error")["detail"] == (
        "this socket already streams the grid view"
    )

    agent = AgentSocket(daphne.url, credential)
    other = AgentSocket(daphne.url, stranger_credential)
    for socket in (agent, other):
        socket.send({"type": "hello", "protocol": 1, "agent_version": "1", "facts": FACTS})
        socket.send({"type": "telemetry", "sample": sample(1)})
    first = receive_until(browser, lambda m: m["type"] == "grid")
    assert first["nodes"] == [
        [
            node.pk,
            1,
            [[0, 40, 50, 954, 76294, 200, 700, None], [1, 41, 50, 954, 76294, 200, 700, None]],
        ]
    ]
    # GPU 0 unchanged, GPU 1 hotter: only GPU 1's tile travels; the other
    # cluster's node never does.
    other.send({"type": "telemetry", "sample": sample(2, [gpu_sample(0, temperature=90)])})
    agent.send(
        {"type": "telemetry", "sample": sample(2, [gpu_sample(0), gpu_sample(1, temperature=77)])}
    )
    changed = receive_until(browser, lambda m: m["type"] == "grid")
    assert changed["nodes"] == [[node.pk, 2, [[1, 77, 50, 954, 76294, 200, 700, None]]]]
    for socket in (agent, other):
        socket.close()
    browser.close()
    assert stranger.cluster_id == other_cluster.pk


def test_a_browser_asking_for_an_unknown_view_gets_an_error(
    daphne, make_user, cluster, other_cluster
):
    browser = browser_socket(daphne.url, session_for(make_user("vic", ("viewer", cluster))))
    browser.send(json.dumps({"action": "subscribe", "view": "everything"}))
    assert receive_until(browser, lambda m: True) == {
        "type": "error",
        "detail": "view must be one of full, grid",
    }
    # A subscription refused for scope does not settle the socket's view either.
    browser.send(json.dumps({"action": "subscribe", "view": "grid", "cluster": other_cluster.pk}))
    assert receive_until(browser, lambda m: True)["type"] == "error"
    browser.send(json.dumps({"action": "subscribe", "view": "full", "cluster": cluster.pk}))
    assert receive_until(browser, lambda m: True)["type"] == "snapshot"
    browser.close()


def test_a_node_undrained_while_its_agent_streams_comes_back_online(daphne, enrolled, admin_api):
    """The socket's copy of the node follows people's changes (a `node.changed` push)."""
    node, credential = enrolled
    agent = AgentSocket(daphne.url, credential)
    agent.send({"type": "hello", "protocol": 1, "agent_version": "1", "facts": FACTS})
    wait_for(lambda: node_state(node) == NodeState.ONLINE, what="online")
    assert admin_api.post(f"/api/v1/nodes/{node.pk}/drain/").status_code == 200
    assert admin_api.post(f"/api/v1/nodes/{node.pk}/undrain/").status_code == 200
    assert node_state(node) == NodeState.OFFLINE  # until the next heartbeat
    seq = iter(range(1, 10**6))

    def heartbeat_brings_it_online():
        agent.send({"type": "telemetry", "sample": sample(next(seq))})
        return node_state(node) == NodeState.ONLINE

    wait_for(heartbeat_brings_it_online, what="online after the undrain")
    agent.close()


def test_a_node_moved_to_another_cluster_streams_to_that_cluster(
    daphne, enrolled, admin_api, make_user, other_cluster
):
    node, credential = enrolled
    agent = AgentSocket(daphne.url, credential)
    agent.send({"type": "hello", "protocol": 1, "agent_version": "1", "facts": FACTS})
    wait_for(lambda: node_state(node) == NodeState.ONLINE, what="online")
    viewer = make_user("olga", ("viewer", other_cluster))
    browser = browser_socket(daphne.url, session_for(viewer))
    browser.send(json.dumps({"action": "subscribe", "cluster": other_cluster.pk}))
    receive_until(browser, lambda m: m["type"] == "snapshot")

    moved = admin_api.patch(
        f"/api/v1/nodes/{node.pk}/", {"cluster": other_cluster.pk}, format="json"
    )
    assert moved.status_code == 200
    seq = iter(range(1, 10**6))

    def a_sample_reaches_the_new_cluster():
        agent.send({"type": "telemetry", "sample": sample(next(seq))})
        try:
            message = receive_until(browser, lambda m: m["type"] == "sample", timeout=1)
        except (AssertionError, TimeoutError):
            return False
        return message["node"] == node.pk

    wait_for(a_sample_reaches_the_new_cluster, what="samples in the new cluster's group")
    agent.close()
    browser.close()
