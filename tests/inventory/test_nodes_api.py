"""Node, GPU and cluster endpoints: filters, scope, people-editable fields, query count."""

from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.audit.models import AuditEvent
from apps.inventory.models import GPU, Node, NodeState


def make_node(cluster, hostname, gpus=2, **fields):
    node = Node.objects.create(cluster=cluster, hostname=hostname, **fields)
    for index in range(gpus):
        GPU.objects.create(node=node, index=index, uuid=f"GPU-{hostname}-{index}", name="H100")
    return node


def test_node_list_costs_the_same_queries_for_one_node_or_twenty(admin_user, client_for, cluster):
    def fresh_client():  # a new user object each time: rights are cached per request user
        return client_for(type(admin_user).objects.get(pk=admin_user.pk))

    make_node(cluster, "n0")
    with CaptureQueriesContext(connection) as one:
        assert len(fresh_client().get("/api/v1/nodes/").json()["results"]) == 1
    for i in range(1, 20):
        make_node(cluster, f"n{i}", gpus=8)
    with CaptureQueriesContext(connection) as twenty:
        results = fresh_client().get("/api/v1/nodes/").json()["results"]
    assert len(results) == 20 and len(results[5]["gpus"]) == 8
    assert len(twenty) == len(one)


def test_nodes_filter_by_cluster_state_and_label(admin_api, cluster, other_cluster):
    a = make_node(cluster, "a", state=NodeState.ONLINE, labels={"rack": "r1"})
    make_node(cluster, "b", state=NodeState.OFFLINE, labels={"rack": "r2"})
    c = make_node(other_cluster, "c", state=NodeState.ONLINE, labels={"rack": "r1"})

    def hosts(query):
        return sorted(
            n["hostname"] for n in admin_api.get(f"/api/v1/nodes/?{query}").json()["results"]
        )

    assert hosts(f"cluster={cluster.pk}") == ["a", "b"]
    assert hosts("state=online") == ["a", "c"]
    assert hosts("label=rack:r1") == ["a", "c"]
    assert hosts(f"label=rack:r1&cluster={other_cluster.pk}") == ["c"]
    response = admin_api.get("/api/v1/nodes/?state=exploded")
    assert response.status_code == 400 and "state" in response.json()["fields"]
    assert a.pk != c.pk


def test_a_scoped_viewer_sees_only_their_cluster_and_gets_404_elsewhere(
    client_for, make_user, cluster, other_cluster
):
    mine = make_node(cluster, "mine")
    theirs = make_node(other_cluster, "theirs")
    api = client_for(make_user("val", ("viewer", cluster)))
    assert [n["hostname"] for n in api.get("/api/v1/nodes/").json()["results"]] == ["mine"]
    assert [c["name"] for c in api.get("/api/v1/clusters/").json()["results"]] == ["campus-a"]
    assert api.get(f"/api/v1/nodes/{theirs.pk}/").status_code == 404
    assert {g["node"] for g in api.get("/api/v1/gpus/").json()["results"]} == {mine.pk}
    response = api.patch(f"/api/v1/nodes/{mine.pk}/", {"name": "x"}, format="json")
    assert response.status_code == 403


def test_people_edit_only_name_labels_and_cluster_and_each_edit_is_audited(
    admin_api, cluster, other_cluster
):
    node = make_node(cluster, "gpu01", driver_version="550.1")
    response = admin_api.patch(
        f"/api/v1/nodes/{node.pk}/",
        {
            "name": "Rack 3 box",
            "labels": {"rack": "3"},
            "cluster": other_cluster.pk,
            "driver_version": "forged",
            "state": "retired",
        },
        format="json",
    )
    assert response.status_code == 200
    node.refresh_from_db()
    assert (node.name, node.labels, node.cluster_id) == (
        "Rack 3 box",
        {"rack": "3"},
        other_cluster.pk,
    )
    assert node.driver_version == "550.1" and node.state == NodeState.PENDING
    event = AuditEvent.objects.get(action="inventory.change", target_id=str(node.pk))
    assert event.changes["name"] == ["", "Rack 3 box"]
    bad = admin_api.patch(
        f"/api/v1/nodes/{node.pk}/", {"labels": ["not", "a", "dict"]}, format="json"
    )
    assert bad.status_code == 400 and "labels" in bad.json()["fields"]


def test_drain_and_retire_are_person_transitions_on_the_record(admin_api, cluster):
    node = make_node(cluster, "gpu02", state=NodeState.ONLINE, credential_hash="x" * 64)
    assert admin_api.post(f"/api/v1/nodes/{node.pk}/drain/").json()["state"] == "draining"
    retired = admin_api.post(f"/api/v1/nodes/{node.pk}/retire/").json()
    assert retired["state"] == "retired" and retired["credential_revoked"] is True
    events = AuditEvent.objects.filter(target_id=str(node.pk), actor_type="user").order_by("seq")
    assert [(e.action, e.changes.get("state")) for e in events] == [
        ("inventory.change", ["online", "draining"]),
        ("inventory.enroll", ["draining", "retired"]),
    ]
    assert admin_api.post(f"/api/v1/nodes/{node.pk}/drain/").status_code == 400


def test_only_global_admins_create_clusters(client_for, make_user, cluster, admin_api):
    local_admin = client_for(make_user("lad", ("admin", cluster)))
    assert local_admin.post("/api/v1/clusters/", {"name": "new"}, format="json").status_code == 403
    created = admin_api.post("/api/v1/clusters/", {"name": "new", "site": "B2"}, format="json")
    assert created.status_code == 201 and created.json()["site"] == "B2"
    duplicate = admin_api.post("/api/v1/clusters/", {"name": "new"}, format="json")
    assert duplicate.status_code == 400
    make_node(cluster, "keep")
    refused = admin_api.delete(f"/api/v1/clusters/{cluster.pk}/")
    assert refused.status_code == 400 and "nodes" in refused.json()["detail"]
