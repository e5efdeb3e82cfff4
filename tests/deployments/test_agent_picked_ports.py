"""A deployment needs no port: each worker's agent picks one (agents/workers/ports.py),
reports it, and the console keeps it for the gateway and the next start."""

from apps.deployments.models import Worker
from apps.gateway.snapshot import build as build_snapshot
from tests.deployments.test_deployments_api import deploy, queued_commands, report


def test_a_deployment_without_a_port_sends_any_port_and_stores_the_agents_pick(
    admin_api, cluster, version, gpu_node, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = deploy(admin_api, cluster, version, gpu_node, port=None)
    assert response.status_code == 201, response.json()
    assert response.json()["port"] is None
    workers = list(Worker.objects.order_by("slot"))
    assert [w.port for w in workers] == [None, None]
    assert [c[1]["spec"]["port"] for c in queued_commands(gpu_node)] == [0, 0]

    report(workers[0], "ready", pid=100, port=20000)
    report(workers[1], "starting", pid=101, port=20001)
    report(workers[1], "ready", pid=101, port=None)  # a port once known stays
    assert [w.port for w in Worker.objects.order_by("slot")] == [20000, 20001]


def test_the_port_may_be_left_out_of_the_api_body(admin_api, cluster, version, gpu_node):
    response = admin_api.post(
        "/api/v1/deployments/",
        {"name": "x", "cluster": cluster.pk, "model_version": version.pk, "engine": "reference",
         "replicas": 1, "placement": {"mode": "auto", "gpus_per_replica": 0}},
        format="json",
    )  # fmt: skip
    assert response.status_code == 201, response.json()
    assert response.json()["port"] is None


def test_a_pinned_port_is_still_honoured_and_checked(admin_api, cluster, version, gpu_node):
    assert deploy(admin_api, cluster, version, gpu_node, port=80).status_code == 400
    pinned = deploy(admin_api, cluster, version, gpu_node, port=9100)
    assert pinned.status_code == 201
    assert sorted(Worker.objects.values_list("port", flat=True)) == [9100, 9101]


def test_the_gateway_routes_to_the_port_the_agent_reported(admin_api, cluster, version, gpu_node):
    from apps.gateway.models import Route, RouteTarget

    deployment_id = deploy(admin_api, cluster, version, gpu_node, port=None, replicas=1).json()[
        "id"
    ]
    Route.objects.create(name="chat")
    RouteTarget.objects.create(route=Route.objects.get(), deployment_id=deployment_id, weight=1)
    [worker] = Worker.objects.all()
    report(worker, "ready", pid=100, port=20042)
    workers = build_snapshot()["deployments"][str(deployment_id)]["workers"]
    assert [w["url"].rsplit(":", 1)[1] for w in workers] == ["20042"]
