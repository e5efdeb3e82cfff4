"""The console in a real headless Chromium against a real Daphne: what an IT
person does in a day, and what the live parts do without a reload."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import urllib.request
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from apps.audit import recorder
from apps.inventory.models import GPU, Node, NodeState
from apps.inventory.services import create_enrollment_token, enroll_node
from apps.telemetry.models import NodeMetricMinute
from tests.support import processes
from tests.telemetry.conftest import FACTS, AgentSocket, gpu_sample, sample
from tests.ui.conftest import console_env, csrf_headers, log_in, screenshot

pytestmark = pytest.mark.timeout(120)


def enrolled_node(cluster, hostname: str = "gpu-test") -> tuple[Node, str]:
    _token, secret = create_enrollment_token(cluster, None)
    return enroll_node(secret, hostname, FACTS, None)


def tile(page, node: Node, index: int):
    return page.locator(f'.gpu-tile[data-node="{node.pk}"][data-gpu="{index}"]')


def connected_agent(console, credential: str) -> AgentSocket:
    agent = AgentSocket(console.url, credential)
    agent.send({"type": "hello", "protocol": 1, "agent_version": "1", "facts": FACTS})
    return agent


def test_log_in_and_see_the_dashboard(open_browser, make_user, cluster):
    user = make_user("ann", "viewer")
    node, _credential = enrolled_node(cluster)

    page = open_browser(user)

    expect(page.locator("h1")).to_have_text("Dashboard")
    expect(page.locator(f'.cluster[data-cluster="{cluster.pk}"] h2')).to_have_text("campus-a")
    expect(page.locator(".gpu-tile")).to_have_count(2)
    expect(tile(page, node, 0)).to_contain_text("simulated")
    page.click("#user-menu summary")
    expect(page.locator("#my-roles")).to_contain_text("Viewer everywhere")


def test_a_gpu_tile_changes_live_when_the_agent_sends_samples(
    open_browser, console, make_user, cluster
):
    user = make_user("ann", "viewer")
    node, credential = enrolled_node(cluster)
    page = open_browser()
    frames = []  # what the dashboard's socket receives: compact grid deltas, no full samples
    page.on("websocket", lambda ws: ws.on("framereceived", lambda frame: frames.append(frame)))
    log_in(page, user.username)
    expect(page.locator("body")).to_have_attribute("data-live", "connected")
    page.evaluate("window.notReloaded = true")
    agent = connected_agent(console, credential)

    agent.send({"type": "telemetry", "sample": sample(1, [gpu_sample(0, temperature=61)])})
    temperature = tile(page, node, 0).locator('[data-metric="temperature"] .v')
    expect(temperature).to_have_text("61 °C")
    expect(tile(page, node, 0).locator('[data-metric="memory"] .v')).to_have_text("0.9 / 75 GiB")
    expect(tile(page, node, 0)).to_have_class(re.compile(r"\bok\b"))

    agent.send({"type": "telemetry", "sample": sample(2, [gpu_sample(0, temperature=93)])})
    expect(temperature).to_have_text("93 °C")
    expect(tile(page, node, 0)).to_have_class(re.compile(r"\bbad\b"))
    assert page.evaluate("window.notReloaded") is True
    kinds = [json.loads(frame)["type"] for frame in frames]
    assert "grid" in kinds and "sample" not in kinds, kinds
    screenshot(page, "dashboard")
    agent.close()


def test_the_banner_shows_while_the_live_connection_is_down(open_browser, console, make_user):
    page = open_browser(make_user("ann", "viewer"))
    banner = page.locator("#live-banner")
    expect(page.locator("body")).to_have_attribute("data-live", "connected")
    expect(banner).to_be_hidden()

    console.stop()
    expect(banner).to_be_visible()
    expect(banner).to_have_text("Live connection lost; reconnecting…")

    console.start()
    expect(banner).to_be_hidden(timeout=30_000)
    expect(page.locator("body")).to_have_attribute("data-live", "connected")


def test_a_viewer_sees_no_admin_buttons_and_is_refused_when_posting_anyway(
    open_browser, make_user, cluster
):
    node, _credential = enrolled_node(cluster)
    page = open_browser(make_user("ann", "viewer"))

    page.goto(f"/nodes/{node.pk}/")
    expect(page.locator("h1")).to_contain_text("gpu-test")
    expect(page.locator("#node-actions")).to_have_count(0)
    for link in ("Enrollment", "Audit log", "Users"):
        expect(page.locator("nav").get_by_text(link, exact=True)).to_have_count(0)

    for action in ("drain", "retire", "revoke-credential"):
        response = page.request.post(f"/nodes/{node.pk}/{action}/", headers=csrf_headers(page))
        assert response.status == 403, action
    node.refresh_from_db()
    assert node.state != NodeState.DRAINING and node.credential_revoked_at is None


def test_an_admin_drains_a_node_from_its_page(open_browser, make_user, cluster):
    node, _credential = enrolled_node(cluster)
    page = open_browser(make_user("root", "admin"))
    page.goto(f"/nodes/{node.pk}/")

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#drain")

    expect(page.locator(f'[data-node-state="{node.pk}"]')).to_have_text("draining")
    expect(page.locator(".messages")).to_contain_text("is draining")
    node.refresh_from_db()
    assert node.state == NodeState.DRAINING


def test_node_detail_draws_history_and_live_charts(open_browser, console, make_user, cluster):
    node, credential = enrolled_node(cluster)
    now = timezone.now().replace(second=0, microsecond=0)
    NodeMetricMinute.objects.bulk_create(
        NodeMetricMinute(
            node=node,
            minute=now - timedelta(minutes=m),
            samples=60,
            series={f"gpu.{g}.temperature": [50, 55 + g, 60] for g in (0, 1)},
        )
        for m in range(1, 30)
    )
    page = open_browser(make_user("ann", "viewer"))

    with page.expect_response(lambda r: "/metrics/?metric=gpu.0.temperature" in r.url) as seen:
        page.goto(f"/nodes/{node.pk}/")
    assert seen.value.status == 200
    assert len(seen.value.json()["points"]) >= 14
    expect(page.locator("#charts")).to_have_attribute("data-loading", "false")
    expect(page.locator("#charts .uplot")).to_have_count(4)
    expect(page.locator("#node-facts")).to_contain_text("Debian GNU/Linux 12")

    agent = connected_agent(console, credential)
    agent.send({"type": "telemetry", "sample": sample(1, [gpu_sample(0, temperature=71)])})
    expect(tile(page, node, 0).locator('[data-metric="temperature"] .v')).to_have_text("71 °C")
    with page.expect_response(lambda r: "metric=gpu.1.power_draw" in r.url):
        page.click("#chart-ranges [data-range='604800']")
    expect(page.locator("#chart-ranges [data-range='604800']")).to_have_attribute(
        "aria-pressed", "true"
    )
    expect(page.locator("#charts")).to_have_attribute("data-loading", "false")
    screenshot(page, "node-detail", full_page=True)
    agent.close()


def test_the_language_switch_shows_chinese_and_it_sticks(open_browser, make_user):
    page = open_browser(make_user("ann", "viewer"))
    expect(page.locator("nav")).to_contain_text("Nodes")

    page.select_option("form.lang select", "zh-hans")

    expect(page.locator("nav")).to_contain_text("节点")
    expect(page.locator("h1")).to_have_text("仪表盘")
    page.goto("/nodes/")
    expect(page.locator("h1")).to_contain_text("节点")
    expect(page.locator("html")).to_have_attribute("lang", "zh-hans")
    screenshot(page, "nodes-zh")

    page.select_option("form.lang select", "en")
    expect(page.locator("h1")).to_contain_text("Nodes")


def test_the_browser_language_picks_chinese_first(open_browser):
    page = open_browser(locale="zh-CN")

    page.goto("/login/")

    expect(page.locator("h1")).to_have_text("登录 Hangar")


def test_enrollment_shows_the_exact_command_and_it_enrolls_a_live_node(
    open_browser, console, make_user, cluster, tmp_path
):
    page = open_browser(make_user("root", "admin"))
    page.goto("/enroll/")
    page.select_option("select[name=cluster]", str(cluster.pk))
    page.fill("input[name=description]", "rack 3")
    page.click("#enroll-form button[type=submit]")

    command = page.locator("#enroll-command").inner_text().strip()
    assert command.startswith(f"hangar-agent enroll --console {console.url} --token hge_")
    screenshot(page, "enrollment")
    argv = shlex.split(command)
    state = tmp_path / "agent"
    argv[0] = str(processes.BIN / "hangar-agent")
    done = subprocess.run(
        [*argv, "--state-dir", str(state), "--simulate", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    node = Node.objects.get(pk=json.loads((state / "credential.json").read_text())["node_id"])
    page.goto("/enroll/")
    expect(page.locator("#enroll-command")).to_have_count(0)
    expect(page.locator("#enrollment-tokens")).to_contain_text("used")

    agent = processes.start(
        [
            str(processes.BIN / "hangar-agent"),
            "run",
            "--state-dir",
            str(state),
            "--simulate",
            "2",
            "--no-celery",
            "--interval",
            "0.5",
        ],
        console_env(),
        tmp_path / "agent.log",
    )
    try:
        page.goto("/")
        expect(tile(page, node, 1).locator('[data-metric="temperature"] .v')).to_have_text(
            re.compile(r"^\d+ °C$"), timeout=30_000
        )
        expect(page.locator(f'.gpu-tile[data-node="{node.pk}"]')).to_have_count(2)
    finally:
        processes.stop(agent)


def test_an_api_token_secret_is_shown_once_and_works(open_browser, console, make_user):
    page = open_browser(make_user("ann", "viewer"))
    page.click("#user-menu summary")
    page.click("text=API tokens")
    page.fill("input[name=name]", "monitoring")
    page.fill("input[name=days]", "7")
    page.click("#token-form button[type=submit]")

    secret = page.locator("#token-secret").inner_text().strip()
    assert secret.startswith("hgr_")
    request = urllib.request.Request(
        f"{console.url}/api/v1/me/", headers={"Authorization": f"Bearer {secret}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.load(response)["username"] == "ann"
    screenshot(page, "api-tokens")

    page.goto("/tokens/")
    expect(page.locator("#token-secret")).to_have_count(0)
    assert secret not in page.content()
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#token-table button.danger")
    expect(page.locator("#token-table")).to_contain_text("revoked")


def test_the_audit_page_filters_and_shows_the_chain_intact(open_browser, make_user, cluster):
    node = Node.objects.create(cluster=cluster, hostname="gpu-audit")
    GPU.objects.create(node=node, index=0)
    recorder.record("inventory.node-state", target=node, changes={"state": ["a", "b"]})
    recorder.record("accounts.initial-admin")
    page = open_browser(make_user("audra", "auditor"))

    page.goto("/audit/")
    expect(page.locator("#chain-state")).to_have_attribute("data-state", "ok")
    expect(page.locator("#audit-table")).to_contain_text("accounts.initial-admin")

    page.fill("input[name=action_prefix]", "inventory.")
    page.click("#audit-filters button[type=submit]")

    expect(page.locator("#audit-table")).not_to_contain_text("accounts.initial-admin")
    expect(page.locator("#audit-table")).to_contain_text("inventory.node-state")
    assert "action_prefix=inventory." in page.url
    href = page.locator("#export-csv").get_attribute("href")
    assert href.startswith("/api/v1/audit-events/export/?as=csv") and "action_prefix" in href
    screenshot(page, "audit-log")


def test_an_admin_binds_an_ldap_group_from_the_users_page(open_browser, make_user, cluster):
    page = open_browser(make_user("root", "admin"))
    page.goto("/users/")
    page.select_option("#binding-form select[name=role]", "operator")
    page.fill("#binding-form input[name=ldap_group]", "cn=gpu-ops,ou=groups,dc=example,dc=org")
    page.select_option("#binding-form select[name=cluster]", str(cluster.pk))
    page.click("#binding-form button[type=submit]")

    expect(page.locator("#group-table")).to_contain_text("cn=gpu-ops,ou=groups,dc=example,dc=org")
    expect(page.locator("#group-table")).to_contain_text("campus-a")
    screenshot(page, "users")


def test_an_admin_deploys_a_model_on_a_ticked_gpu(open_browser, make_user, cluster):
    from apps.registry.models import Model, ModelVersion

    node, _credential = enrolled_node(cluster)
    Node.objects.filter(pk=node.pk).update(state=NodeState.ONLINE)
    model = Model.objects.create(name="qwen")
    ModelVersion.objects.create(
        model=model, label="v1", path="/srv/models/qwen/v1", format="gguf", state="ready"
    )
    page = open_browser(make_user("root", "admin"))
    page.goto("/deployments/")

    page.fill("#deploy-form input[name=name]", "chat")
    page.select_option("#deploy-form select[name=engine]", "reference")
    page.check("#deploy-form input[name=placement_mode][value=pinned]")
    page.check(f'#free-gpus input[value="{node.gpus.get(index=1).pk}"]')
    page.click("#deploy-form button[type=submit]")

    expect(page.locator("h1")).to_contain_text("chat")
    expect(page.locator("#worker-table")).to_contain_text("gpu-test")
    expect(page.locator("#deployment-actions")).to_be_visible()
    screenshot(page, "deployment")
