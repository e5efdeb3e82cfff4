"""The usage page draws its uPlot charts from the report, and a consumer's keys page
shows their projects, a pending key and the limits on their keys, in a real
headless Chromium against a real Daphne."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from apps.deployments.models import Deployment
from apps.gateway.keys import create_consumer_key
from apps.gateway.models import EnergyMinute, Limit, Project, ProjectMember, Route, UsageMinute
from tests.deployments.conftest import ready_version
from tests.ui.conftest import screenshot

pytestmark = pytest.mark.timeout(120)


def _traffic(projects: dict, deployment, hours: int = 24) -> None:
    """A day of per-minute rows, every ten minutes, heavier by day for the bigger project;
    the deployment's energy every five minutes (so half its minutes are idle)."""
    now = timezone.now().replace(second=0, microsecond=0)
    rows, energy = [], []
    for step in range(hours * 12):
        minute = now - timedelta(minutes=5 * step)
        energy.append(
            EnergyMinute(minute=minute, deployment=deployment, joules=42_000, gpu_seconds=120)
        )
        if step % 2:
            continue
        for i, (key, route) in enumerate(projects.values()):
            tokens = (step % 36 + 4) * (900 if i == 0 else 350)
            row = UsageMinute(
                minute=minute, key=key, user=key.user, project=key.project, route=route,
                deployment=deployment,
                status="2xx", requests=3 + i, prompt_tokens=tokens, completion_tokens=tokens // 3,
                duration_ms=2400, streams=1, first_token_ms=180,
            )  # fmt: skip
            rows.append(row)
    UsageMinute.objects.bulk_create(rows)
    EnergyMinute.objects.bulk_create(energy)


def test_the_usage_page_draws_charts_and_lists_top_consumers(open_browser, make_user, cluster):
    admin = make_user("it-office", "admin")
    chat, embed = Route.objects.create(name="qwen-72b"), Route.objects.create(name="bge-m3")
    physics = Project.objects.create(name="physics", weight=300)
    history = Project.objects.create(name="history-course")
    ann, bob = make_user("ann"), make_user("bob")
    keys = {
        "physics": (create_consumer_key(name="lab", days=30, user=ann, routes=[chat],
                                        project=physics)[0], "qwen-72b"),
        "history": (create_consumer_key(name="essays", days=30, user=bob, routes=[embed],
                                        project=history)[0], "bge-m3"),
    }  # fmt: skip
    deployment = Deployment.objects.create(
        name="qwen-72b-a", cluster=cluster, model_version=ready_version(), engine="vllm",
        port=9000,
    )  # fmt: skip
    _traffic(keys, deployment)
    Limit.objects.create(scope="project", project=history, tokens_per_day=5_000_000)

    page = open_browser(admin)
    page.goto("/usage/?range=24h&group_by=project")

    expect(page.locator("h1")).to_have_text("Usage")
    expect(page.locator("#usage-chart .uplot")).to_have_count(2)
    expect(page.locator("#usage-chart .u-legend").first).to_contain_text("physics")
    top = page.locator(".usage-totals tbody tr")
    expect(top.first).to_have_attribute("data-group", "physics")
    expect(page.locator("#limit-table")).to_contain_text("history-course")
    expect(page.locator('#energy-table tr[data-energy="idle"]')).to_have_count(1)
    expect(page.locator('#energy-table tr[data-group="physics"]')).to_have_count(1)
    screenshot(page, "usage", full_page=True)


def test_a_consumers_key_page_shows_projects_pending_keys_and_limits(open_browser, make_user):
    Route.objects.create(name="qwen-72b", description="Qwen2.5 72B, chat")
    Route.objects.create(name="bge-m3", description="embeddings")
    course = Project.objects.create(name="nlp-course", require_approval=True)
    lab = Project.objects.create(name="vision-lab")
    student = make_user("li.wei", "consumer")
    for project in (course, lab):
        ProjectMember.objects.create(project=project, user=student)
    create_consumer_key(name="notebook", days=30, user=student, all_routes=True, project=lab)
    create_consumer_key(
        name="homework", days=30, user=student, all_routes=True, project=course, approved=False
    )
    Limit.objects.create(scope="each-member", project=course, tokens_per_day=200_000)

    page = open_browser(student)

    expect(page).to_have_url(re.compile(r"/keys/$"))
    rows = page.locator("#key-table tbody tr")
    expect(rows).to_have_count(2)
    pending = page.locator("#key-table tr", has_text="homework")
    expect(pending.locator(".state")).to_have_text("pending")
    expect(pending).to_contain_text("works once a project owner approves it")
    expect(page.locator("#key-project option")).to_contain_text(
        ["no project", "nlp-course (needs approval)", "vision-lab"]
    )
    expect(page.locator("#my-limit-table")).to_contain_text("Each member of the project")
    expect(page.locator("#open-route-table")).to_contain_text("qwen-72b")
    expect(page.locator("nav a", has_text="Nodes")).to_have_count(0)
    screenshot(page, "consumer-keys", full_page=True)
