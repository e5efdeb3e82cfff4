"""Node preflight in the console: a real agent runs it, runs are kept, a failed
run blocks placement until an admin overrides it (audited)."""

from __future__ import annotations

import json

import pytest
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.inventory.models import Node, NodeState, PreflightRun
from tests.deployments.conftest import make_node, ready_version
from tests.deployments.test_deployments_api import deploy
from tests.inventory.test_enrollment import agent_enroll
from tests.support import processes


def failed_run(node, check="gpu_count") -> PreflightRun:
    return PreflightRun.objects.create(
        node=node,
        started_at=timezone.now(),
        status="fail",
        results=[
            {
                "check": check,
                "subject": "",
                "status": "fail",
                "value": "7 of 8",
                "advice": "a GPU is missing: check the host",
            }
        ],
    )


def test_a_real_agent_runs_the_preflight_and_the_run_is_kept(
    daphne, admin_api, cluster, tmp_path, settings
):
    root = tmp_path / "models"
    (root / "qwen" / "v1").mkdir(parents=True)
    (root / "qwen" / "v1" / "w.safetensors").write_bytes(b"\0" * 2**20)
    settings.MODEL_ROOTS = [str(root)]
    secret = admin_api.post(
        "/api/v1/enrollment-tokens/", {"cluster": cluster.pk}, format="json"
    ).json()["secret"]
    assert agent_enroll(daphne.url, secret, tmp_path / "agent").returncode == 0
    node_id = json.loads((tmp_path / "agent" / "credential.json").read_text())["node_id"]
    # The admin expects 4 GPUs; the simulated host has 2.
    Node.objects.filter(pk=node_id).update(labels={"hangar.io/gpu-count": "4"})
    agent = processes.start(
        [
            str(processes.BIN / "hangar-agent"),
            "run",
            "--state-dir",
            str(tmp_path / "agent"),
            "--simulate",
            "2",
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

        def answered():
            nonlocal response
            response = admin_api.post(f"/api/v1/nodes/{node_id}/preflight/")
            return response.status_code == 200

        processes.wait_for(answered, timeout=90, what="a preflight answered", process=agent)
    finally:
        processes.stop(agent)
    run = response.json()
    results = {(r["check"], r["subject"]): r for r in run["results"]}
    assert results[("gpu_count", "")]["value"] == "2 of 4"
    assert results[("gpu_count", "")]["status"] == "fail" and run["status"] == "fail"
    assert results[("read_throughput", str(root))]["value"].endswith("over 1 MiB")
    assert results[("clock", "")]["status"] in ("pass", "warn")
    history = admin_api.get(f"/api/v1/nodes/{node_id}/preflight-runs/").json()
    assert history[0]["id"] == run["id"]
    assert AuditEvent.objects.filter(target_id=str(node_id), changes__result="fail").exists()


def test_an_unreachable_agent_gives_an_error_run_and_504(admin_api, cluster, monkeypatch):
    from apps.inventory import commands

    def unreachable(node, verb, *args, **kwargs):
        raise commands.NodeUnreachable(f"{node} did not answer {verb}")

    monkeypatch.setattr(commands, "ask_node", unreachable)
    node = Node.objects.create(cluster=cluster, hostname="silent")
    response = admin_api.post(f"/api/v1/nodes/{node.pk}/preflight/")
    assert response.status_code == 504
    assert response.json()["status"] == "error" and "did not answer" in response.json()["error"]
    assert PreflightRun.objects.get(node=node).status == "error"


@pytest.fixture
def node(cluster):
    return make_node(cluster, "gpu-p", gpus=2)


def test_a_failed_preflight_blocks_pinned_and_auto_placement(node, admin_api, cluster):
    failed_run(node)
    version = ready_version()
    pinned = deploy(admin_api, cluster, version, node, replicas=1)
    assert pinned.status_code == 400 and "failed its preflight" in pinned.json()["detail"]
    auto = deploy(admin_api, cluster, version, node, 1, placement={"mode": "auto"}, name="b")
    assert auto.status_code == 400


def test_an_admin_override_lets_work_on_and_is_audited_with_the_failed_checks(
    node, admin_api, cluster
):
    run = failed_run(node)
    response = admin_api.post(
        f"/api/v1/nodes/{node.pk}/preflight-override/", {"reason": "GPU 7 is out for RMA"}
    )
    assert response.status_code == 200 and response.json()["overridden_by"] == "root-admin"
    event = AuditEvent.objects.latest("seq")
    assert event.changes["preflight_run"] == run.pk
    assert event.changes["reason"] == "GPU 7 is out for RMA"
    assert event.changes["failed"][0]["check"] == "gpu_count"
    assert deploy(admin_api, cluster, ready_version(), node, replicas=1).status_code == 201


def test_a_passing_run_after_a_failed_one_unblocks_the_node(node, admin_api, cluster):
    failed_run(node)
    PreflightRun.objects.create(node=node, started_at=timezone.now(), status="warn")
    assert deploy(admin_api, cluster, ready_version(), node, replicas=1).status_code == 201


def test_there_is_nothing_to_override_without_a_failed_run(node, admin_api):
    response = admin_api.post(f"/api/v1/nodes/{node.pk}/preflight-override/", {"reason": "x"})
    assert response.status_code == 400 and "did not fail" in response.json()["detail"]
    missing = admin_api.post(f"/api/v1/nodes/{node.pk}/preflight-override/", {})
    assert missing.status_code == 400


def test_the_node_page_shows_the_runs_with_their_checks(node, client, admin_user):
    failed_run(node)
    client.force_login(admin_user)
    page = client.get(f"/nodes/{node.pk}/").content.decode()
    assert "gpu_count" in page and "7 of 8" in page and "a GPU is missing" in page
    assert f"/nodes/{node.pk}/preflight/override/" in page
