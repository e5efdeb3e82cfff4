"""GPU health in the console: the policy on fixture reads with injected faults,
what the ingest stores and audits, cordons, placement and the policy's evacuation."""

from __future__ import annotations

import copy
import json

import pytest

from agents.health import parse_health
from agents.protocol import validate_sample
from apps.audit.models import AuditEvent
from apps.deployments.models import DesiredState, Worker
from apps.inventory import health
from apps.inventory.models import GPU, HealthPolicy
from apps.telemetry.ingest import NodeIngest
from tests.agents.agent_helpers import FIXTURES
from tests.deployments.conftest import make_node, queued_commands, ready_version
from tests.deployments.test_deployments_api import deploy
from tests.telemetry.conftest import enrolled  # noqa: F401  (a fixture)

NOW = 1.8e9


def fixture_reads() -> list[dict]:
    """The two H200s' health, parsed and validated as the console receives it."""
    capture = json.loads((FIXTURES / "nvml_health_h200x2.json").read_text())
    reads = parse_health(capture["raw_health_reads"][0]["gpus"])
    sample = {"seq": 1, "ts": NOW, "simulated": False, "gpus": [], "faults": [], "health": reads}
    sample["host"] = {
        "cpu_percent": 1.0,
        "memory_used": 1,
        "memory_total": 2,
        "disk_used": 1,
        "disk_total": 2,
    }
    return validate_sample(sample)["health"]


@pytest.fixture
def reads():
    return fixture_reads()


@pytest.fixture
def policy(db):
    return health.current_policy()


def checks(reasons):
    return [r["check"] for r in reasons]


# --- the policy, pure ------------------------------------------------------------------


def test_both_fixture_gpus_are_healthy_under_the_default_policy(reads, policy):
    for read in reads:
        state, reasons, _memory = health.judge(read, {}, policy, NOW)
        assert (state, reasons) == ("healthy", [])


def test_an_xid_79_makes_the_gpu_unhealthy(reads, policy):
    read = copy.deepcopy(reads[0])
    read["xids"] = [79]
    state, reasons, _ = health.judge(read, {}, policy, NOW)
    assert state == "unhealthy" and reasons == [{"check": "critical_xid", "value": [79]}]


def test_an_xid_outside_the_critical_list_changes_nothing(reads, policy):
    read = copy.deepcopy(reads[0])
    read["xids"] = [13]  # a graphics engine exception: usually the program's fault
    assert health.judge(read, {}, policy, NOW)[0] == "healthy"


def test_an_uncorrectable_ecc_count_makes_the_gpu_unhealthy(reads, policy):
    read = copy.deepcopy(reads[0])
    read["ecc_volatile_uncorrected"] = 1
    state, reasons, _ = health.judge(read, {}, policy, NOW)
    assert state == "unhealthy" and checks(reasons) == ["uncorrected_ecc"]


def test_a_pending_remap_and_a_remap_failure_are_unhealthy(reads, policy):
    read = copy.deepcopy(reads[0])
    read["remapped_rows_pending"] = True
    read["remapped_rows_failure"] = True
    state, reasons, _ = health.judge(read, {}, policy, NOW)
    assert state == "unhealthy"
    assert checks(reasons) == ["remapped_row_failure", "remap_pending"]


def test_a_link_at_x8_of_x16_is_degraded(reads, policy):
    read = copy.deepcopy(reads[0])
    read["pcie_link_width"] = 8
    state, reasons, _ = health.judge(read, {}, policy, NOW)
    assert state == "degraded"
    assert reasons == [{"check": "link_width_below_max", "value": "x8 of x16"}]


def test_an_idle_link_trained_down_is_healthy_unless_the_policy_judges_generation(reads, policy):
    idle = reads[1]
    assert (idle["pcie_link_gen"], idle["pcie_link_gen_max"]) == (1, 5)
    assert health.judge(idle, {}, policy, NOW)[0] == "healthy"
    policy.degrade_on_link_gen_below_max = True
    state, reasons, _ = health.judge(idle, {}, policy, NOW)
    assert state == "degraded" and checks(reasons) == ["link_gen_below_max"]


def test_hardware_slowdown_is_degraded_but_the_power_cap_is_not(reads, policy):
    read = copy.deepcopy(reads[0])
    assert read["throttle_reasons"] == ["sw_power_cap"]  # the busy GPU of the fixture
    assert health.judge(read, {}, policy, NOW)[0] == "healthy"
    read["throttle_reasons"] = ["sw_power_cap", "hw_thermal_slowdown"]
    state, reasons, _ = health.judge(read, {}, policy, NOW)
    assert state == "degraded" and reasons[0]["value"] == ["hw_thermal_slowdown"]


def test_rising_corrected_errors_hold_the_gpu_degraded_then_let_go(reads, policy):
    read = copy.deepcopy(reads[0])
    _, _, memory = health.judge(read, {}, policy, NOW)
    read["ecc_volatile_corrected"] = 3
    state, reasons, memory = health.judge(read, memory, policy, NOW + 10)
    assert state == "degraded" and checks(reasons) == ["corrected_errors_rising"]
    # No new errors, but within the hold: still degraded.
    state, _, memory = health.judge(read, memory, policy, NOW + 600)
    assert state == "degraded"
    state, _, _ = health.judge(read, memory, policy, NOW + 10 + health.RISE_HOLD_S + 1)
    assert state == "healthy"


def test_a_counter_that_falls_was_reset_and_is_no_rise(reads, policy):
    read = copy.deepcopy(reads[0])
    read["pcie_replay_counter"] = 50
    _, _, memory = health.judge(read, {}, policy, NOW)
    read["pcie_replay_counter"] = 0  # the driver reloaded
    assert health.judge(read, memory, policy, NOW + 10)[0] == "healthy"


def test_an_unsupported_field_judges_nothing(reads, policy):
    read = copy.deepcopy(reads[0])
    assert read["retired_pages_pending"] is None  # unsupported on the H200
    assert "retired_page_pending" not in checks(health.judge(read, {}, policy, NOW)[1])


def test_a_switched_off_check_does_not_degrade(reads, policy):
    read = copy.deepcopy(reads[0])
    read["pcie_link_width"] = 8
    policy.degrade_on_link_width_below_max = False
    assert health.judge(read, {}, policy, NOW)[0] == "healthy"


# --- the ingest stores, audits and cordons ----------------------------------------------


@pytest.fixture
def node(cluster):
    return make_node(cluster, "gpu-h", gpus=2)


def test_a_health_read_is_stored_and_the_change_audited_with_evidence(node, reads):
    NodeIngest(node).take_health([reads])
    gpus = list(node.gpus.order_by("index"))
    assert [g.health for g in gpus] == ["healthy", "healthy"]
    assert gpus[1].health_reading["read"]["pcie_link_gen"] == 1
    faulty = copy.deepcopy(reads)
    faulty[1]["ecc_volatile_uncorrected"] = 2
    NodeIngest(node).take_health([faulty])
    gpu = GPU.objects.get(node=node, index=1)
    assert gpu.health == "unhealthy" and not gpu.cordoned  # ECC: no Xid, no cordon
    event = AuditEvent.objects.filter(action="inventory.gpu-health").latest("seq")
    assert event.changes["health"] == ["healthy", "unhealthy"]
    assert event.changes["reasons"] == [{"check": "uncorrected_ecc", "value": 2}]


def test_an_unchanged_read_writes_nothing_and_audits_nothing(node, reads):
    ingest = NodeIngest(node)
    ingest.take_health([reads])
    before = AuditEvent.objects.count()
    ingest.take_health([reads])
    assert AuditEvent.objects.count() == before


def test_a_critical_xid_cordons_the_gpu_until_a_person_returns_it(node, reads, admin_api):
    ingest = NodeIngest(node)
    faulty = copy.deepcopy(reads)
    faulty[0]["xids"] = [79]
    ingest.take_health([faulty])
    gpu = GPU.objects.get(node=node, index=0)
    assert gpu.health == "unhealthy" and gpu.cordoned
    assert gpu.cordon_reason == "Xid [79] (health policy)"
    assert AuditEvent.objects.filter(action="inventory.gpu-cordon").count() == 1
    # The next read has no Xid: healthy again, but still cordoned (reset, then return).
    ingest.take_health([reads])
    gpu.refresh_from_db()
    assert gpu.health == "healthy" and gpu.cordoned
    response = admin_api.post(f"/api/v1/gpus/{gpu.pk}/uncordon/")
    assert response.status_code == 200 and response.json()["cordoned"] is False


# --- cordon through the API and the page -------------------------------------------------


def test_cordon_and_uncordon_through_the_api_are_audited(node, admin_api):
    gpu = GPU.objects.get(node=node, index=1)
    response = admin_api.post(f"/api/v1/gpus/{gpu.pk}/cordon/", {"reason": "fan swap"})
    assert response.status_code == 200
    assert response.json()["cordoned"] is True and response.json()["cordon_reason"] == "fan swap"
    event = AuditEvent.objects.latest("seq")
    assert event.target_id == str(gpu.pk) and event.changes["cordoned"] == [False, True]
    assert admin_api.post(f"/api/v1/gpus/{gpu.pk}/uncordon/").status_code == 200
    again = admin_api.post(f"/api/v1/gpus/{gpu.pk}/uncordon/")
    assert again.status_code == 400 and "not cordoned" in again.json()["detail"]


def test_the_node_page_shows_health_reasons_and_unsupported_fields(node, reads, client, admin_user):
    faulty = copy.deepcopy(reads)
    faulty[0]["pcie_link_width"] = 8
    NodeIngest(node).take_health([faulty])
    client.force_login(admin_user)
    page = client.get(f"/nodes/{node.pk}/").content.decode()
    assert "PCIe link narrower than its maximum: x8 of x16" in page
    assert "retired_pages_pending" in page  # listed as not supported, not shown as 0
    response = client.post(f"/nodes/{node.pk}/gpus/0/cordon/", {"reason": "reseat"})
    assert response.status_code == 302
    assert GPU.objects.get(node=node, index=0).cordon_reason == "reseat"


# --- placement ---------------------------------------------------------------------------


def test_auto_placement_skips_cordoned_and_unhealthy_gpus(node, admin_api, cluster):
    version = ready_version()
    GPU.objects.filter(node=node, index=0).update(cordoned=True)
    auto = {"mode": "auto", "gpus_per_replica": 1}
    first = deploy(admin_api, cluster, version, node, replicas=1, placement=auto)
    assert first.status_code == 201, first.json()
    assert Worker.objects.get().gpus == [1]
    GPU.objects.filter(node=node, index=1).update(health="unhealthy")
    Worker.objects.all().delete()
    second = deploy(admin_api, cluster, version, node, replicas=1, placement=auto, name="b")
    assert second.status_code == 400


def test_pinning_a_cordoned_gpu_is_refused_naming_it(node, admin_api, cluster):
    GPU.objects.filter(node=node, index=1).update(cordoned=True)
    response = deploy(admin_api, cluster, ready_version(), node, replicas=2)
    assert response.status_code == 400
    assert "GPUs [1]" in response.json()["detail"] and "cordoned" in response.json()["detail"]


# --- the policy's evacuation -------------------------------------------------------------


def test_by_policy_an_unhealthy_gpu_s_worker_moves_to_a_healthy_gpu(
    node, reads, admin_api, cluster, django_capture_on_commit_callbacks
):
    health.current_policy()
    HealthPolicy.objects.filter(pk=1).update(stop_workers_when_unhealthy=True)
    auto = {"mode": "auto", "gpus_per_replica": 1}
    with django_capture_on_commit_callbacks(execute=True):
        assert (
            deploy(admin_api, cluster, ready_version(), node, 1, placement=auto).status_code == 201
        )
    (worker,) = Worker.objects.all()
    faulty = copy.deepcopy(reads)
    faulty[worker.gpus[0]]["ecc_volatile_uncorrected"] = 1
    with django_capture_on_commit_callbacks(execute=True):
        NodeIngest(node).take_health([faulty])
    worker.refresh_from_db()
    assert worker.desired_state == DesiredState.STOPPED
    replacement = Worker.objects.get(desired_state=DesiredState.RUNNING)
    assert replacement.slot == worker.slot and replacement.gpus != worker.gpus
    assert [verb for verb, _ in queued_commands(node)][-2:] == ["stop_worker", "start_worker"]
    event = AuditEvent.objects.get(action="deployments.evacuate")
    assert event.changes["outcome"] == "moved"
    assert event.changes["evidence"] == [{"check": "uncorrected_ecc", "value": 1}]


def test_without_the_policy_an_unhealthy_gpu_s_worker_keeps_running(
    node, reads, admin_api, cluster
):
    auto = {"mode": "auto", "gpus_per_replica": 1}
    assert deploy(admin_api, cluster, ready_version(), node, 1, placement=auto).status_code == 201
    (worker,) = Worker.objects.all()
    faulty = copy.deepcopy(reads)
    faulty[worker.gpus[0]]["ecc_volatile_uncorrected"] = 1
    NodeIngest(node).take_health([faulty])
    worker.refresh_from_db()
    assert worker.desired_state == DesiredState.RUNNING
    assert not AuditEvent.objects.filter(action="deployments.evacuate").exists()


# --- the policy through the API -----------------------------------------------------------


def test_an_admin_changes_the_policy_and_the_change_is_audited(admin_api, db):
    response = admin_api.patch(
        "/api/v1/health-policy/", {"critical_xids": [95, 48, 79, 48]}, format="json"
    )
    assert response.status_code == 200 and response.json()["critical_xids"] == [48, 79, 95]
    event = AuditEvent.objects.latest("seq")
    assert event.changes["critical_xids"] == [[48, 79], [48, 79, 95]]
    assert health.current_policy().critical_xids == [48, 79, 95]


def test_a_bad_xid_list_is_refused_with_a_reason(admin_api, db):
    response = admin_api.patch("/api/v1/health-policy/", {"critical_xids": ["x"]}, format="json")
    assert response.status_code == 400
    assert response.json()["fields"]["critical_xids"] == [
        "Each Xid code is a positive whole number."
    ]


def test_a_viewer_reads_the_policy_but_cannot_change_it(make_user, client_for):
    viewer = client_for(make_user("vera", "viewer"))
    assert viewer.get("/api/v1/health-policy/").json()["critical_xids"] == [48, 79]
    assert viewer.patch("/api/v1/health-policy/", {}, format="json").status_code == 403


# --- end to end: an agent's health read over the real websocket ---------------------------


def test_a_health_read_streamed_by_an_agent_marks_the_gpu_unhealthy(
    daphne,
    enrolled,  # noqa: F811
    reads,
):
    from apps.inventory.models import Node, NodeState
    from tests.support.processes import wait_for
    from tests.telemetry.conftest import FACTS, AgentSocket, sample

    node, credential = enrolled
    agent = AgentSocket(daphne.url, credential)
    agent.send({"type": "hello", "protocol": 1, "agent_version": "1", "facts": FACTS})
    wait_for(lambda: Node.objects.get(pk=node.pk).state == NodeState.ONLINE, what="online")
    faulty = copy.deepcopy(reads)
    faulty[0]["xids"] = [79]
    with_health = sample(1)
    with_health["health"] = faulty
    agent.send({"type": "telemetry", "sample": with_health})
    gpu = GPU.objects.filter(node=node, index=0)
    wait_for(lambda: gpu.get().health == "unhealthy", what="GPU 0 unhealthy")
    assert gpu.get().cordoned
    assert GPU.objects.get(node=node, index=1).health == "healthy"
    agent.send({"type": "telemetry", "sample": sample(2)})  # no health: nothing re-judged
    agent.close()
    assert gpu.get().health == "unhealthy"


# --- accelerators: the vendor is shown and placement knows which engines run on it ----------


def test_an_ascend_node_takes_no_engine_its_vendor_does_not_run(
    node, admin_api, cluster, client, admin_user
):
    from apps.inventory.models import Node

    Node.objects.filter(pk=node.pk).update(accelerator="ascend")
    version = ready_version()
    refused = deploy(admin_api, cluster, version, node, replicas=1, engine="sglang")
    assert refused.status_code == 400
    assert "sglang does not run on gpu-h's ascend accelerators" in refused.json()["detail"]
    auto = {"mode": "auto", "gpus_per_replica": 1}
    assert (
        deploy(
            admin_api, cluster, version, node, 1, engine="sglang", placement=auto, name="b"
        ).status_code
        == 400
    )
    assert deploy(admin_api, cluster, version, node, replicas=1, name="c").status_code == 201
    client.force_login(admin_user)
    assert 'id="node-accelerator">ascend<' in client.get(f"/nodes/{node.pk}/").content.decode()
