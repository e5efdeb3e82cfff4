"""The first-run demo (apps/gateway/demo.py): offered once, declinable, named `demo`
wherever it shows, removable in one audited action. tests/ui/test_first_five_minutes.py
follows it from a real `make run` in a browser."""

from __future__ import annotations

import json
import stat

import pytest

from apps.accounts.models import RoleBinding
from apps.audit.models import AuditEvent
from apps.deployments.models import Deployment, Worker
from apps.gateway import demo
from apps.gateway.models import ConsumerKey, Route
from apps.inventory.models import Node, NodeState
from apps.registry.models import ModelVersion


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    settings.DATA_DIR = str(tmp_path)
    return tmp_path


@pytest.fixture
def admin(make_user):
    """The `admin` of a first start (ensure_initial_admin's name), who owns the demo key."""
    user = make_user("admin")
    RoleBinding.objects.get_or_create(user=user, role="admin", cluster=None)
    return user


def browser(user):
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def node(cluster):
    return Node.objects.create(cluster=cluster, hostname="this-machine", state=NodeState.ONLINE)


def test_the_demo_is_offered_on_the_first_start_only(data_dir):
    assert demo.decide_on_first_start(first_start=True) is True
    assert json.loads((data_dir / "demo.json").read_text())["offered"] is True
    assert demo.decide_on_first_start(first_start=True) is False  # remembered


def test_hangar_demo_false_declines_it_for_good(settings, data_dir):
    settings.DEMO = False
    assert demo.decide_on_first_start(first_start=True) is False
    settings.DEMO = True
    assert demo.decide_on_first_start(first_start=True) is False
    assert json.loads((data_dir / "demo.json").read_text())["declined"] is True


def test_a_data_directory_in_use_before_gets_no_demo(data_dir):
    assert demo.decide_on_first_start(first_start=False) is False
    assert demo.decide_on_first_start(first_start=True) is False


def test_installing_makes_model_deployment_route_and_key_named_demo(admin, node, data_dir):
    state = demo.install(node)

    version = ModelVersion.objects.get(pk=state["version"])
    assert (version.model.name, version.label, version.state) == ("demo", "demo", "ready")
    assert version.path == str(demo.VERSION_DIR) and {f["path"] for f in version.files} == {
        "README.md",
        "config.json",
    }
    deployment = Deployment.objects.get(pk=state["deployment"])
    assert (deployment.name, deployment.engine, deployment.model_version) == (
        "demo", "reference", version,
    )  # fmt: skip
    [worker] = Worker.objects.filter(deployment=deployment)
    assert (worker.node, worker.gpus) == (node, [])  # the reference engine needs no GPU
    route = Route.objects.get(pk=state["route"])
    assert route.name == "demo" and "Demo" in route.description
    assert list(route.targets.values_list("deployment", flat=True)) == [deployment.pk]
    key = ConsumerKey.objects.get(pk=state["consumer_key"])
    assert (key.name, key.user, key.all_routes) == ("demo", admin, False)
    assert list(key.routes.all()) == [route]
    assert state["key"].startswith("hk-") and key.key_hash != state["key"]
    mode = stat.S_IMODE((data_dir / "demo.json").stat().st_mode)
    assert mode == 0o600  # it holds the key
    event = AuditEvent.objects.get(action="demo.install")
    assert (event.actor_type, event.target_id) == ("system", str(deployment.pk))


def test_the_snippets_name_the_gateway_the_key_and_the_model(admin, node):
    state = demo.install(node)
    text = demo.snippets(state, "http://127.0.0.1:8400/v1")
    assert f'-H "Authorization: Bearer {state["key"]}"' in text
    assert "curl -N http://127.0.0.1:8400/v1/chat/completions" in text
    assert f'OpenAI(base_url="http://127.0.0.1:8400/v1", api_key="{state["key"]}")' in text
    assert '"model": "demo"' in text and 'model="demo"' in text


def test_an_administrator_removes_the_demo_in_one_audited_call(admin, node, client_for):
    state = demo.install(node)
    api = client_for(admin)

    assert api.get("/api/v1/demo/").json()["installed"] is True
    response = api.post("/api/v1/demo/remove/")

    assert response.status_code == 200, response.content
    assert response.json()["removed"] == {
        "deployment": "stopped", "route": "deleted", "key": "revoked",
    }  # fmt: skip
    assert Deployment.objects.get(pk=state["deployment"]).desired_state == "stopped"
    assert not Route.objects.filter(name="demo").exists()
    assert ConsumerKey.objects.get(pk=state["consumer_key"]).revoked_at is not None
    event = AuditEvent.objects.filter(action="demo.remove").get()
    assert event.actor_name == "admin" and event.changes["removed"]["route"] == "deleted"
    assert "key" not in json.loads(demo.state_path().read_text())  # the secret goes too
    again = api.post("/api/v1/demo/remove/")
    assert again.status_code == 409 and again.json()["detail"] == "There is no demo to remove."
    assert demo.decide_on_first_start(first_start=True) is False  # not offered again


def test_operators_cannot_remove_the_demo(make_user, client_for, node, admin):
    demo.install(node)
    operator = make_user("op", "operator")
    assert client_for(operator).post("/api/v1/demo/remove/").status_code == 403
    assert Route.objects.filter(name="demo").exists()


def test_the_dashboard_marks_the_demo_and_offers_removal_to_administrators(admin, node, make_user):
    state = demo.install(node)
    page = browser(admin).get("/").content.decode()
    assert 'id="demo-banner"' in page and 'id="demo-remove"' in page
    assert f'href="/deployments/{state["deployment"]}/" id="demo-deployment"' in page
    viewer_page = browser(make_user("v", "viewer")).get("/").content.decode()
    assert 'id="demo-banner"' in viewer_page and 'id="demo-remove"' not in viewer_page
    detail = browser(admin).get(f"/deployments/{state['deployment']}/").content.decode()
    assert 'id="demo-mark"' in detail

    response = browser(admin).post("/demo/remove/")
    assert response.status_code == 302
    assert 'id="demo-banner"' not in browser(admin).get("/").content.decode()


def test_the_dashboard_in_chinese_calls_it_a_demo(admin, node):
    demo.install(node)
    client = browser(admin)
    client.cookies["django_language"] = "zh-hans"
    page = client.get("/").content.decode()
    assert "首次启动时的演示" in page and "移除演示" in page
