"""The routes and keys pages, in English and Simplified Chinese, server-side."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.utils.translation import gettext, override

from apps.audit.models import AuditEvent
from apps.deployments.models import Deployment, Worker, WorkerState
from apps.gateway.keys import create_consumer_key
from apps.gateway.models import ConsumerKey, Route, RouteTarget
from apps.inventory.models import Node, NodeState
from tests.accounts.helpers import fast_password_hashing
from tests.deployments.conftest import ready_version

__all__ = ["fast_password_hashing"]

pytestmark = pytest.mark.django_db


def zh(msgid: str) -> str:
    with override("zh-hans"):
        text = gettext(msgid)
    assert text != msgid, f"no Chinese for {msgid!r}"
    return text


@pytest.fixture
def browser():
    def login(user, language: str = "en") -> Client:
        client = Client()
        client.force_login(user)
        client.cookies["django_language"] = language
        return client

    return login


@pytest.fixture
def canary(cluster):
    """A route "chat" at 95/5 over two deployments, the first with one ready worker."""
    version = ready_version()
    node = Node.objects.create(cluster=cluster, hostname="gpu-1", state=NodeState.ONLINE)
    stable, test = (
        Deployment.objects.create(
            name=name, cluster=cluster, model_version=version, engine="reference", port=9000
        )
        for name in ("chat-stable", "chat-next")
    )
    Worker.objects.create(
        deployment=stable, node=node, model_version=version, slot=0, port=9000,
        state=WorkerState.READY,
    )  # fmt: skip
    spare = Route.objects.create(name="spare")
    RouteTarget.objects.create(route=spare, deployment=test, weight=1)
    route = Route.objects.create(name="chat", fallback=spare)
    RouteTarget.objects.create(route=route, deployment=stable, weight=95)
    RouteTarget.objects.create(route=route, deployment=test, weight=5)
    return route


def text_of(response) -> str:
    return response.content.decode()


@pytest.mark.parametrize("language", ["en", "zh-hans"])
def test_the_routes_page_shows_targets_weights_ready_workers_and_fallback(
    browser, make_user, canary, language
):
    page = browser(make_user("vic", "viewer"), language).get("/routes/")

    assert page.status_code == 200
    html = text_of(page)
    row = html.split(f'data-route="{canary.pk}"')[1].split("</tr>")[0]
    assert "chat-stable" in row and "<strong>95</strong>" in row and "<strong>5</strong>" in row
    assert ">spare<" in row
    if language == "en":
        assert "1 ready worker" in row and "0 ready workers" in row
        assert "<h1>Routes</h1>" in html
    else:
        assert f"<h1>{zh('Routes')}</h1>" in html
        assert zh("No routes yet.") not in html
    assert 'action="/routes/new/"' not in html  # a viewer gets no form


def test_a_manager_creates_and_edits_a_route_through_the_form(browser, make_user, canary):
    client = browser(make_user("mira", "model-manager"))
    stable, test = (t.deployment for t in canary.targets.order_by("-weight"))

    created = client.post(
        "/routes/new/",
        {"name": "ab", "target_deployment": [stable.pk, test.pk, ""],
         "target_weight": ["50", "50", ""], "enabled": "on", "fallback": canary.pk},
    )  # fmt: skip
    route = Route.objects.get(name="ab")
    edited = client.post(
        f"/routes/{route.pk}/",
        {"name": "ab", "target_deployment": ["", test.pk], "target_weight": ["", "1000"],
         "enabled": "on"},
    )  # fmt: skip

    assert created.status_code == 302 and edited.status_code == 302
    route.refresh_from_db()
    assert [(t.deployment, t.weight) for t in route.targets.all()] == [(test, 1000)]
    assert route.fallback is None
    event = AuditEvent.objects.filter(action="gateway.manage").order_by("-seq").first()
    assert event.target_id == str(route.pk)
    assert event.changes["targets"][1] == [{"deployment": test.pk, "weight": 1000}]
    form = client.get(f"/routes/{route.pk}/")
    assert form.status_code == 200 and 'value="1000"' in text_of(form)


@pytest.mark.parametrize("language", ["en", "zh-hans"])
def test_a_bad_route_form_is_shown_again_with_the_reason_in_the_readers_language(
    browser, make_user, canary, language
):
    client = browser(make_user("mira", "model-manager"), language)
    stable = canary.targets.order_by("-weight").first().deployment

    response = client.post(
        "/routes/new/",
        {"name": "zero", "target_deployment": [stable.pk], "target_weight": ["0"], "enabled": "on"},
    )

    assert response.status_code == 400
    message = (
        "An enabled route needs at least one deployment with a weight above 0; add one or "
        "disable the route."
    )
    expected = message if language == "en" else zh(message)
    assert expected in text_of(response)
    assert 'value="zero"' in text_of(response)
    assert not Route.objects.filter(name="zero").exists()


def test_a_viewer_may_not_post_a_route(browser, make_user, canary):
    client = browser(make_user("vic", "viewer"))

    assert client.post("/routes/new/", {"name": "x"}).status_code == 403
    assert client.post(f"/routes/{canary.pk}/delete/").status_code == 403
    assert Route.objects.filter(pk=canary.pk).exists()


@pytest.mark.parametrize("language", ["en", "zh-hans"])
def test_my_keys_shows_a_new_key_once_with_a_curl_example(
    browser, make_user, canary, settings, language
):
    settings.GATEWAY_BIND_HOST, settings.GATEWAY_BIND_PORT = "gateway.campus.example", 8400
    client = browser(make_user("sam", "viewer"), language)

    created = client.post(
        "/keys/", {"name": "notebook", "days": "30", "routes": ["chat"], "source_networks": ""}
    )

    assert created.status_code == 200
    html = text_of(created)
    raw = re.search(r'<pre class="mono" id="key-secret">(hk-[^<]+)</pre>', html).group(1)
    assert "curl http://gateway.campus.example:8400/v1/chat/completions" in html
    assert f"Authorization: Bearer {raw}" in html and '"model": "chat"' in html
    once = "Copy it now: it is shown only this once. Hangar keeps only a hash of it."
    assert (once if language == "en" else zh(once)) in html
    key = ConsumerKey.objects.get()
    assert key.user.username == "sam" and [r.name for r in key.routes.all()] == ["chat"]
    again = text_of(client.get("/keys/"))
    assert raw not in again and key.key_hash not in again and f"hk-{key.prefix}_…" in again


def test_a_key_on_every_interface_is_shown_with_the_consoles_host(browser, make_user, settings):
    settings.GATEWAY_BIND_HOST, settings.GATEWAY_BIND_PORT = "0.0.0.0", 8400
    client = browser(make_user("sam", "viewer"))

    html = text_of(client.post("/keys/", {"name": "nb", "days": "3", "all_routes": "on"}))

    assert "curl http://testserver:8400/v1/chat/completions" in html


@pytest.mark.parametrize("language", ["en", "zh-hans"])
def test_a_bad_key_form_is_answered_in_the_readers_language(browser, make_user, settings, language):
    settings.GATEWAY_KEY_MAX_DAYS = 365
    client = browser(make_user("sam", "viewer"), language)

    bad_network = client.post(
        "/keys/", {"name": "nb", "days": "3", "all_routes": "on", "source_networks": "campus"}
    )
    no_routes = client.post("/keys/", {"name": "nb", "days": "3"})

    assert bad_network.status_code == 400 and no_routes.status_code == 400
    network = "%(network)s is not a network (e.g. 10.8.0.0/16)"
    routes = "Name the routes this key may use, or set all_routes."
    if language == "en":
        assert network % {"network": "campus"} in text_of(bad_network)
        assert routes in text_of(no_routes)
    else:
        assert zh(network) % {"network": "campus"} in text_of(bad_network)
        assert zh(routes) in text_of(no_routes)
    assert not ConsumerKey.objects.exists()
    event = AuditEvent.objects.filter(action="gateway.key.create").order_by("seq").first()
    assert event.outcome == "failed" and "not a network" in event.changes["reason"]


def test_revoking_from_the_page_and_another_users_key_is_404(browser, make_user):
    sam, olga = make_user("sam", "viewer"), make_user("olga", "viewer")
    mine, _ = create_consumer_key(name="mine", days=3, user=sam, all_routes=True)
    theirs, _ = create_consumer_key(name="theirs", days=3, user=olga, all_routes=True)
    client = browser(sam)

    assert client.post(f"/keys/{theirs.pk}/revoke/").status_code == 404
    assert client.post(f"/keys/{mine.pk}/revoke/").status_code == 302
    mine.refresh_from_db(), theirs.refresh_from_db()
    assert mine.state == "revoked" and theirs.state == "active"
    assert "theirs" not in text_of(client.get("/keys/"))


@pytest.mark.parametrize("language", ["en", "zh-hans"])
def test_the_all_keys_page_is_for_keys_manage(browser, make_user, admin_user, language):
    sam = make_user("sam", "viewer")
    create_consumer_key(name="sams key", days=3, user=sam, all_routes=True)
    create_consumer_key(name="other", days=3, user=admin_user, all_routes=True)

    page = browser(admin_user, language).get("/keys/all/?owner=sam")

    assert page.status_code == 200
    html = text_of(page)
    assert "sams key" in html and ">other<" not in html
    assert ("All keys" if language == "en" else zh("All keys")) in html
    assert browser(sam).get("/keys/all/").status_code == 403


@pytest.mark.parametrize("language", ["en", "zh-hans"])
def test_the_deployment_page_lists_the_routes_that_target_it(browser, make_user, canary, language):
    target = canary.targets.order_by("-weight").last()

    page = browser(make_user("vic", "viewer"), language).get(
        f"/deployments/{target.deployment_id}/"
    )

    assert page.status_code == 200
    panel = text_of(page).split('id="deployment-routes"')[1].split("</section>")[0]
    assert ">chat<" in panel and ">spare<" in panel
    heading = "Model names clients send to the gateway that reach this deployment."
    assert (heading if language == "en" else zh(heading)) in panel


def test_the_nav_has_routes_and_keys(browser, make_user):
    html = text_of(browser(make_user("vic", "viewer")).get("/keys/"))

    assert 'href="/routes/"' in html and 'href="/keys/"' in html
