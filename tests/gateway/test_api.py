"""Routes, service accounts and consumer keys over the REST API: what is accepted,
every refusal (400 with a reason, in the request's language), what is audited,
and that a key is shown once and never again."""

from __future__ import annotations

import pytest
from django.db.models import ProtectedError
from django.utils.translation import gettext, override

from apps.audit.models import AuditEvent
from apps.deployments.models import Deployment, DesiredState, Worker, WorkerState
from apps.gateway.keys import create_consumer_key, hash_key
from apps.gateway.models import ConsumerKey, Route, RouteTarget, ServiceAccount
from apps.inventory.models import Node, NodeState
from tests.deployments.conftest import ready_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def deployments(cluster):
    """deployments("a", "b") -> deployments of the reference engine in `cluster`."""
    version = ready_version()

    def make(*names: str) -> list[Deployment]:
        return [
            Deployment.objects.create(
                name=name, cluster=cluster, model_version=version, engine="reference", port=9000
            )
            for name in names
        ]

    return make


@pytest.fixture
def manager_api(make_user, client_for):
    return client_for(make_user("mira", "model-manager"))


def fields(response, name: str) -> list[str]:
    errors = response.json()["fields"][name]
    return [str(e) for e in (errors if isinstance(errors, list) else [errors])]


def route_body(name="chat", targets=(), **extra) -> dict:
    return {"name": name, "targets": [{"deployment": d, "weight": w} for d, w in targets], **extra}


def last_event(action: str) -> AuditEvent:
    return AuditEvent.objects.filter(action=action).order_by("-seq").first()


# --- routes --------------------------------------------------------------------------


def test_a_model_manager_creates_a_canary_route_and_it_is_audited(manager_api, deployments):
    stable, canary = deployments("chat-v1", "chat-v2")

    response = manager_api.post(
        "/api/v1/routes/",
        route_body(targets=[(stable.pk, 95), (canary.pk, 5)], description="course assistant"),
        format="json",
    )

    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["name"] == "chat" and body["enabled"] is True and body["fallback"] is None
    assert [(t["deployment_name"], t["weight"]) for t in body["targets"]] == [
        ("chat-v1", 95),
        ("chat-v2", 5),
    ]
    route = Route.objects.get(name="chat")
    assert route.created_by.username == "mira"
    event = last_event("gateway.manage")
    assert (event.outcome, event.target_type, event.target_id) == (
        "allowed",
        "gateway.route",
        str(route.pk),
    )
    assert event.changes["created"]["targets"] == [
        {"deployment": stable.pk, "weight": 95},
        {"deployment": canary.pk, "weight": 5},
    ]


def test_targets_are_replaced_as_a_whole_and_the_audit_shows_the_weights_that_moved(
    manager_api, deployments
):
    a, b, c = deployments("a", "b", "c")
    route = manager_api.post(
        "/api/v1/routes/", route_body(targets=[(a.pk, 50), (b.pk, 50)]), format="json"
    ).json()

    response = manager_api.patch(
        f"/api/v1/routes/{route['id']}/",
        {"targets": [{"deployment": b.pk, "weight": 10}, {"deployment": c.pk}]},
        format="json",
    )

    assert response.status_code == 200, response.json()
    assert [(t["deployment"], t["weight"]) for t in response.json()["targets"]] == [
        (c.pk, 100),
        (b.pk, 10),
    ]
    assert RouteTarget.objects.filter(route_id=route["id"]).count() == 2
    changes = last_event("gateway.manage").changes
    assert changes["targets"] == [
        [{"deployment": a.pk, "weight": 50}, {"deployment": b.pk, "weight": 50}],
        [{"deployment": b.pk, "weight": 10}, {"deployment": c.pk, "weight": 100}],
    ]


def test_a_patch_without_targets_keeps_them(manager_api, deployments):
    (a,) = deployments("a")
    route = manager_api.post("/api/v1/routes/", route_body(targets=[(a.pk, 7)]), format="json")

    response = manager_api.patch(
        f"/api/v1/routes/{route.json()['id']}/", {"description": "now described"}, format="json"
    )

    assert response.status_code == 200
    assert [t["weight"] for t in response.json()["targets"]] == [7]
    assert last_event("gateway.manage").changes["description"] == ["", "now described"]


def test_a_fallback_is_named_by_route_name_or_id(manager_api, deployments):
    a, b = deployments("a", "b")
    spare = manager_api.post(
        "/api/v1/routes/", route_body("spare", [(b.pk, 1)]), format="json"
    ).json()

    by_name = manager_api.post(
        "/api/v1/routes/", route_body("one", [(a.pk, 1)], fallback="spare"), format="json"
    )
    by_id = manager_api.post(
        "/api/v1/routes/", route_body("two", [(a.pk, 1)], fallback=spare["id"]), format="json"
    )

    assert (by_name.status_code, by_name.json()["fallback"]) == (201, "spare")
    assert (by_id.status_code, by_id.json()["fallback"]) == (201, "spare")


def test_ready_workers_are_counted_per_target_as_the_gateway_counts_them(
    admin_api, deployments, cluster
):
    a, b = deployments("a", "b")
    node = Node.objects.create(cluster=cluster, hostname="gpu-1", state=NodeState.ONLINE)
    version = a.model_version
    for slot, state in enumerate((WorkerState.READY, WorkerState.READY, WorkerState.STARTING)):
        Worker.objects.create(
            deployment=a, node=node, model_version=version, slot=slot, port=9000 + slot, state=state
        )
    Worker.objects.create(
        deployment=b,
        node=node,
        model_version=version,
        slot=0,
        port=9100,
        state=WorkerState.READY,
        desired_state=DesiredState.STOPPED,
    )
    admin_api.post("/api/v1/routes/", route_body(targets=[(a.pk, 1), (b.pk, 1)]), format="json")

    [route] = admin_api.get("/api/v1/routes/").json()["results"]

    assert {t["deployment_name"]: t["ready_workers"] for t in route["targets"]} == {"a": 2, "b": 0}


def test_a_route_can_be_deleted_and_the_deletion_is_audited(manager_api, deployments):
    (a,) = deployments("a")
    route = manager_api.post("/api/v1/routes/", route_body(targets=[(a.pk, 1)]), format="json")

    response = manager_api.delete(f"/api/v1/routes/{route.json()['id']}/")

    assert response.status_code == 204
    assert not Route.objects.exists()
    deleted = last_event("gateway.manage").changes["deleted"]
    assert deleted["name"] == "chat" and deleted["targets"] == [{"deployment": a.pk, "weight": 1}]


def test_a_deployment_behind_a_route_cannot_be_deleted(deployments):
    (a,) = deployments("a")
    route = Route.objects.create(name="chat")
    RouteTarget.objects.create(route=route, deployment=a)

    with pytest.raises(ProtectedError):
        a.delete()


def _refused(api, path, body, method="post", language="en"):
    response = getattr(api, method)(path, body, format="json", HTTP_ACCEPT_LANGUAGE=language)
    assert response.status_code == 400, (response.status_code, response.content)
    return response


@pytest.mark.parametrize(
    ("case", "field", "message"),
    [
        ("unknown deployment", "targets", 'Invalid pk "999999" - object does not exist.'),
        ("weight above 1000", "targets", "Ensure this value is less than or equal to 1000."),
        ("negative weight", "targets", "Ensure this value is greater than or equal to 0."),
        ("the same deployment twice", "targets", "Name each deployment once in a route."),
        (
            "enabled with every weight 0",
            "targets",
            "An enabled route needs at least one deployment with a weight above 0; add one or "
            "disable the route.",
        ),
        (
            "enabled without targets",
            "targets",
            "An enabled route needs at least one deployment with a weight above 0; add one or "
            "disable the route.",
        ),
        ("unknown fallback", "fallback", "There is no route nowhere."),
        ("a bad name", "name", None),
        ("a name in use", "name", "route with this name already exists."),
    ],
)
def test_a_bad_route_is_refused_with_a_reason(manager_api, deployments, case, field, message):
    (a,) = deployments("a")
    Route.objects.create(name="taken")
    bodies = {
        "unknown deployment": route_body(targets=[(999999, 1)]),
        "weight above 1000": route_body(targets=[(a.pk, 1001)]),
        "negative weight": route_body(targets=[(a.pk, -1)]),
        "the same deployment twice": route_body(targets=[(a.pk, 1), (a.pk, 2)]),
        "enabled with every weight 0": route_body(targets=[(a.pk, 0)]),
        "enabled without targets": route_body(),
        "unknown fallback": route_body(targets=[(a.pk, 1)], fallback="nowhere"),
        "a bad name": route_body(name="has space", targets=[(a.pk, 1)]),
        "a name in use": route_body(name="taken", targets=[(a.pk, 1)]),
    }

    response = _refused(manager_api, "/api/v1/routes/", bodies[case])

    assert response.json()["detail"] == "The request has invalid fields."
    text = " ".join(fields(response, field))
    assert message is None or message in text, text
    assert Route.objects.count() == 1
    assert last_event("gateway.manage").outcome == "failed"


def test_a_disabled_route_may_have_no_weight(manager_api, deployments):
    (a,) = deployments("a")

    response = manager_api.post(
        "/api/v1/routes/", route_body(targets=[(a.pk, 0)], enabled=False), format="json"
    )

    assert response.status_code == 201, response.json()


def test_a_route_cannot_fall_back_to_itself_or_into_a_cycle(manager_api, deployments):
    (a,) = deployments("a")
    ids = {}
    for name, fallback in (("c", None), ("b", "c"), ("a", "b")):
        body = route_body(name, [(a.pk, 1)], **({"fallback": fallback} if fallback else {}))
        ids[name] = manager_api.post("/api/v1/routes/", body, format="json").json()["id"]

    itself = _refused(manager_api, f"/api/v1/routes/{ids['a']}/", {"fallback": "a"}, "patch")
    cycle = _refused(manager_api, f"/api/v1/routes/{ids['c']}/", {"fallback": "a"}, "patch")

    assert fields(itself, "fallback") == ["A route cannot fall back to itself."]
    assert fields(cycle, "fallback") == ["That makes a fallback cycle: c → a → b → c."]
    assert Route.objects.get(name="c").fallback is None


def test_disabling_a_route_checks_weights_against_its_stored_targets(manager_api, deployments):
    (a,) = deployments("a")
    route = manager_api.post(
        "/api/v1/routes/", route_body(targets=[(a.pk, 0)], enabled=False), format="json"
    ).json()

    response = _refused(manager_api, f"/api/v1/routes/{route['id']}/", {"enabled": True}, "patch")

    assert "weight above 0" in fields(response, "targets")[0]


def test_route_refusals_are_in_the_language_the_client_asks_for(manager_api, deployments):
    (a,) = deployments("a")

    response = _refused(
        manager_api,
        "/api/v1/routes/",
        route_body(targets=[(a.pk, 1), (a.pk, 1)]),
        language="zh-Hans",
    )

    with override("zh-hans"):
        expected = gettext("Name each deployment once in a route.")
    assert expected != "Name each deployment once in a route."
    assert fields(response, "targets") == [expected]


def test_viewers_read_routes_and_may_not_change_them(make_user, client_for, deployments):
    (a,) = deployments("a")
    route = Route.objects.create(name="chat")
    RouteTarget.objects.create(route=route, deployment=a)
    viewer = client_for(make_user("vic", "viewer"))

    assert viewer.get(f"/api/v1/routes/{route.pk}/").status_code == 200
    assert viewer.patch(f"/api/v1/routes/{route.pk}/", {"enabled": False}).status_code == 403
    assert viewer.post("/api/v1/routes/", route_body("x", [(a.pk, 1)])).status_code == 403


# --- service accounts ----------------------------------------------------------------


def test_a_service_account_is_created_deactivated_and_audited(manager_api):
    created = manager_api.post(
        "/api/v1/service-accounts/", {"name": "library-search"}, format="json"
    )
    assert created.status_code == 201, created.json()
    account = ServiceAccount.objects.get(name="library-search")
    assert account.created_by.username == "mira"
    assert last_event("gateway.manage").changes["created"]["name"] == "library-search"

    response = manager_api.patch(
        f"/api/v1/service-accounts/{account.pk}/", {"is_active": False}, format="json"
    )

    assert (response.status_code, response.json()["is_active"]) == (200, False)
    assert last_event("gateway.manage").changes == {
        "is_active": [True, False],
        "status": 200,
        "path": f"/api/v1/service-accounts/{account.pk}/",
    }


def test_a_service_account_name_is_unique(manager_api):
    ServiceAccount.objects.create(name="library-search")

    response = _refused(manager_api, "/api/v1/service-accounts/", {"name": "library-search"})

    assert fields(response, "name")


# --- consumer keys -------------------------------------------------------------------


@pytest.fixture
def student(make_user):
    return make_user("sam", "viewer")


@pytest.fixture
def student_api(student, client_for):
    return client_for(student)


def test_a_key_is_shown_once_at_creation_and_never_again(student_api, student):
    Route.objects.create(name="chat")

    created = student_api.post(
        "/api/v1/consumer-keys/",
        {"name": "notebook", "days": 30, "routes": ["chat"], "source_networks": ["10.8.1.7/16"]},
        format="json",
    )

    assert created.status_code == 201, created.json()
    body = created.json()
    raw = body["key"]
    assert raw.startswith(f"hk-{body['prefix']}_")
    assert (body["owner"], body["user"], body["routes"]) == ("sam", "sam", ["chat"])
    assert body["source_networks"] == ["10.8.0.0/16"] and body["state"] == "active"
    stored = ConsumerKey.objects.get()
    assert stored.key_hash == hash_key(raw) and stored.key_hash != raw
    assert stored.user == student and stored.created_by == student
    listed = student_api.get("/api/v1/consumer-keys/")
    one = student_api.get(f"/api/v1/consumer-keys/{stored.pk}/")
    revoked = student_api.post(f"/api/v1/consumer-keys/{stored.pk}/revoke/")
    for response in (listed, one, revoked):
        assert response.status_code == 200
        assert raw not in response.content.decode()
        assert stored.key_hash not in response.content.decode()
        assert b'"key"' not in response.content and b"key_hash" not in response.content
    assert "key_hash" not in body and stored.key_hash not in created.content.decode()


def test_creating_and_revoking_a_key_is_audited_without_the_key_or_its_hash(student_api):
    created = student_api.post(
        "/api/v1/consumer-keys/", {"name": "nb", "days": 1, "all_routes": True}, format="json"
    ).json()
    key = ConsumerKey.objects.get()

    revoked = student_api.post(f"/api/v1/consumer-keys/{key.pk}/revoke/")

    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    create_event, revoke_event = (
        last_event("gateway.key.create"),
        last_event("gateway.key.revoke"),
    )
    assert (create_event.outcome, create_event.actor_name) == ("allowed", "sam")
    assert create_event.target_id == str(key.pk)
    assert create_event.changes["created"]["routes"] == "all"
    assert create_event.changes["created"]["owner"] == "sam"
    assert (revoke_event.target_id, revoke_event.changes["revoked"]) == (str(key.pk), True)
    for event in AuditEvent.objects.all():
        text = str(event.changes)
        assert created["key"] not in text and key.key_hash not in text


def test_revoking_twice_keeps_the_first_revocation(student_api):
    student_api.post("/api/v1/consumer-keys/", {"name": "nb", "days": 1, "all_routes": True})
    key = ConsumerKey.objects.get()
    first = student_api.post(f"/api/v1/consumer-keys/{key.pk}/revoke/").json()["revoked_at"]

    again = student_api.post(f"/api/v1/consumer-keys/{key.pk}/revoke/")

    assert (again.status_code, again.json()["revoked_at"]) == (200, first)


def test_a_user_can_neither_see_nor_revoke_another_users_key(student_api, make_user, client_for):
    other = make_user("olga", "viewer")
    theirs, _raw = create_consumer_key(name="theirs", days=5, user=other, all_routes=True)

    assert student_api.get("/api/v1/consumer-keys/").json()["results"] == []
    assert student_api.get(f"/api/v1/consumer-keys/{theirs.pk}/").status_code == 404
    response = student_api.post(f"/api/v1/consumer-keys/{theirs.pk}/revoke/")

    assert response.status_code == 404
    theirs.refresh_from_db()
    assert theirs.revoked_at is None
    event = last_event("gateway.key.revoke")
    assert (event.outcome, event.target_id) == ("denied", str(theirs.pk))


def test_keys_manage_sees_every_key_filters_by_owner_and_revokes_any(admin_api, make_user, student):
    other = make_user("olga", "viewer")
    mine, _ = create_consumer_key(name="a", days=5, user=student, all_routes=True)
    create_consumer_key(name="b", days=5, user=other, all_routes=True)

    everything = admin_api.get("/api/v1/consumer-keys/").json()["results"]
    sams = admin_api.get("/api/v1/consumer-keys/?owner=sam").json()["results"]
    revoked = admin_api.post(f"/api/v1/consumer-keys/{mine.pk}/revoke/")

    assert sorted(k["owner"] for k in everything) == ["olga", "sam"]
    assert [k["name"] for k in sams] == ["a"]
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    assert [
        k["name"] for k in admin_api.get("/api/v1/consumer-keys/?state=active").json()["results"]
    ] == ["b"]


def test_a_service_account_key_is_made_by_a_route_manager_only(manager_api, student_api):
    ServiceAccount.objects.create(name="course-assistant")
    body = {"name": "prod", "days": 90, "all_routes": True, "service_account": "course-assistant"}

    refused = student_api.post("/api/v1/consumer-keys/", body, format="json")
    made = manager_api.post("/api/v1/consumer-keys/", body, format="json")

    assert refused.status_code == 403
    assert last_event("gateway.key.create").outcome == "allowed"  # the manager's, after
    assert AuditEvent.objects.filter(action="gateway.key.create", outcome="denied").count() == 1
    assert made.status_code == 201, made.json()
    assert (made.json()["owner"], made.json()["user"]) == ("service:course-assistant", None)
    key = ConsumerKey.objects.get()
    assert key.service_account.name == "course-assistant" and key.created_by.username == "mira"
    assert [k["name"] for k in manager_api.get("/api/v1/consumer-keys/").json()["results"]] == [
        "prod"
    ]
    assert student_api.get("/api/v1/consumer-keys/").json()["results"] == []


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"days": 30, "all_routes": True}, "name", "This field is required."),
        ({"name": "k", "all_routes": True}, "days", "This field is required."),
        ({"name": "k", "days": "soon", "all_routes": True}, "days", "A valid integer is required."),
        (
            {"name": "k", "days": 0, "all_routes": True},
            None,
            "expiry must be between 1 and 365 days",
        ),
        (
            {"name": "k", "days": 366, "all_routes": True},
            None,
            "expiry must be between 1 and 365 days",
        ),
        (
            {"name": "k", "days": 3},
            "routes",
            "Name the routes this key may use, or set all_routes.",
        ),
        (
            {"name": "k", "days": 3, "all_routes": True, "routes": ["chat"]},
            "routes",
            "Give either a list of routes or all_routes, not both.",
        ),
        ({"name": "k", "days": 3, "routes": ["nowhere"]}, "routes", "There is no route nowhere."),
        (
            {"name": "k", "days": 3, "all_routes": True, "source_networks": ["campus"]},
            None,
            "campus is not a network (e.g. 10.8.0.0/16)",
        ),
        (
            {"name": "k", "days": 3, "all_routes": True, "service_account": "ghost"},
            "service_account",
            "There is no service account ghost.",
        ),
        (
            {"name": "k", "days": 3, "all_routes": True, "service_account": "retired-app"},
            "service_account",
            "Service account retired-app is deactivated.",
        ),
    ],
)
def test_a_bad_key_request_is_refused_with_a_reason(admin_api, settings, body, field, message):
    settings.GATEWAY_KEY_MAX_DAYS = 365
    Route.objects.create(name="chat")
    ServiceAccount.objects.create(name="retired-app", is_active=False)

    response = _refused(admin_api, "/api/v1/consumer-keys/", body)

    if field is None:
        assert response.json()["detail"] == message
    else:
        assert message in " ".join(fields(response, field)), response.json()
    assert not ConsumerKey.objects.exists()
    assert last_event("gateway.key.create").outcome == "failed"


def test_a_refused_expiry_is_answered_in_chinese(student_api, settings):
    settings.GATEWAY_KEY_MAX_DAYS = 365
    response = _refused(
        student_api,
        "/api/v1/consumer-keys/",
        {"name": "k", "days": 9999, "all_routes": True},
        language="zh-Hans",
    )

    with override("zh-hans"):
        expected = gettext("expiry must be between 1 and %(max)d days") % {"max": 365}
    assert "365" in expected and expected != "expiry must be between 1 and 365 days"
    assert response.json()["detail"] == expected


def test_a_bad_state_filter_is_refused(student_api):
    response = student_api.get("/api/v1/consumer-keys/?state=lost")

    assert response.status_code == 400
    assert fields(response, "state") == ["Choose one of active, pending, expired, revoked."]
