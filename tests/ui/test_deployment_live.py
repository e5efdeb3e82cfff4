"""Deployment detail with real parts: Daphne, the console's Celery worker, a real
agent with simulated GPUs, and the reference engine. Deploy through the form, see
the worker become ready and its latency arrive live, read its log tail and its
runs, and after a crash see both runs with the cause of the first."""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import pytest

from apps.deployments.models import Worker
from apps.registry.models import Model
from tests.deployments.conftest import _empty_node_queues, agent, model_root  # noqa: F401
from tests.deployments.test_end_to_end import answers, register
from tests.support import processes
from tests.ui.conftest import log_in, screenshot


@pytest.fixture
def page_on(chromium, daphne):
    """A logged-in page against the `daphne` fixture the agent is enrolled with."""
    contexts = []

    def open_(user):
        context = chromium.new_context(base_url=daphne.url, viewport={"width": 1400, "height": 900})
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        log_in(page, user.username)
        return page

    yield open_
    for context in contexts:
        context.close()


class Traffic:
    """Requests to the worker in the background, so its latency window fills."""

    def __init__(self, worker: Worker):
        self.worker = worker
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stopped.wait(0.2):
            with contextlib.suppress(OSError):  # restarting: the next request will do
                answers(self.worker)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.thread.join(timeout=10)


def test_deploy_see_ready_and_live_latency_then_read_logs_and_runs(
    page_on,
    make_user,
    cluster,
    model_root,  # noqa: F811 (the fixture imported above)
    console_worker,
    agent,  # noqa: F811
    admin_api,
):
    from playwright.sync_api import expect

    version = register(admin_api, Model.objects.create(name="minilm"), "v1", model_root)
    page = page_on(make_user("root", "admin"))
    page.goto("/deployments/")
    port = processes.free_port()
    page.fill("#deploy-form input[name=name]", "embed")
    page.select_option("#deploy-form select[name=model_version]", str(version.pk))
    page.select_option("#deploy-form select[name=engine]", "reference")
    page.fill("#deploy-form input[name=port]", str(port))
    page.click("#deploy-form button[type=submit]")
    expect(page.locator("h1")).to_contain_text("embed")

    row = page.locator("#worker-table tr[data-worker]")
    expect(row).to_have_attribute("data-state", "ready", timeout=90_000)
    worker = Worker.objects.get(pk=int(row.get_attribute("data-worker")))
    expect(row.locator('[data-field="pid"]')).to_have_text(str(worker.pid))

    with Traffic(worker):
        # Samples arrive each second through the socket; no reload needed.
        expect(row.locator('[data-field="p50"]')).to_contain_text(" ms", timeout=45_000)
        expect(row.locator('[data-field="p99"]')).to_contain_text(" ms")
        expect(row).to_have_attribute("data-latency", "live")

        page.click(f'#worker-table [data-open-logs="{worker.pk}"]')
        log_panel = page.locator("#log-panel")
        expect(log_panel).to_be_visible()
        # The log is read from the node through its command queue (commands.ask_node):
        # on a loaded machine that round trip can outlast the default 5 s.
        expect(log_panel).to_have_attribute("data-run", "1", timeout=30_000)
        expect(log_panel.locator('[data-field="error"]')).to_be_hidden()
        page.click("#log-panel [data-close]")
        expect(log_panel).to_be_hidden()

        page.click(f'#worker-table [data-open-runs="{worker.pk}"]')
        runs = page.locator("#runs-table tbody tr[data-run]")
        expect(runs).to_have_count(1)
        page.click('#runs-table tr[data-run="1"] button')
        expect(page.locator('#runs-panel [data-field="log"]')).to_have_attribute("data-run", "1")
        expect(page.locator('#runs-panel [data-field="log"]')).not_to_have_text("")
        screenshot(page, "deployment-live", full_page=True)

        # A crash: the killed run keeps its log and names its cause next to the new run.
        os.kill(worker.pid, signal.SIGKILL)
        expect(row.locator('[data-field="restarts"]')).to_have_text("1", timeout=60_000)
        expect(row).to_have_attribute("data-state", "ready", timeout=60_000)
        page.click(f'#worker-table [data-open-runs="{worker.pk}"]')
        expect(runs).to_have_count(2)
        first = page.locator('#runs-table tr[data-run="1"]')
        expect(first).to_have_attribute("data-cause", "signal")
        expect(first).to_contain_text("signal 9")
        expect(page.locator('#runs-table tr[data-run="2"]')).to_contain_text("running")
        page.click('#runs-table tr[data-run="1"] button')
        expect(page.locator('#runs-panel [data-field="log"]')).to_have_attribute("data-run", "1")
        expect(page.locator('#runs-panel [data-field="log"]')).not_to_have_text("")
        screenshot(page, "deployment-runs", full_page=True)
