"""Fixtures for browser tests: a real headless Chromium (the Debian package,
never a downloaded browser) driven by Playwright, against a real Daphne that
serves the test database and can be stopped and started again on its port."""

from __future__ import annotations

import os
import shutil
import urllib.request
from pathlib import Path

import pytest

from tests.support import processes

CHROMIUM = os.environ.get("HANGAR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "correct horse battery staple"
ASYNC_UNSAFE = "DJANGO_ALLOW_ASYNC_UNSAFE"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


@pytest.fixture(scope="module")
def chromium(django_db_setup):
    """One browser per test module. The test database exists before it starts:
    Playwright's sync API keeps an asyncio loop marked running on the main
    thread, and Django refuses ORM calls there as "async unsafe" unless told
    otherwise. The tests make plain synchronous ORM calls between browser
    steps, so that is allowed while the browser runs, and only then; the
    console processes started meanwhile do not inherit it."""
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (CI's .ci/run installs it)")
    from playwright import sync_api  # the dev extra installs it (pip install playwright)

    before = os.environ.get(ASYNC_UNSAFE)
    os.environ[ASYNC_UNSAFE] = "true"
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
            )
            yield browser
            browser.close()
    finally:
        if before is None:
            os.environ.pop(ASYNC_UNSAFE, None)
        else:
            os.environ[ASYNC_UNSAFE] = before


def console_env(**extra: str) -> dict:
    env = processes.console_env(**extra)
    env.pop(ASYNC_UNSAFE, None)
    return env


class Console:
    """A Daphne process on a fixed port, restartable (to drop websockets)."""

    def __init__(self, log_dir: Path):
        self.port = processes.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = log_dir
        self.process = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.process = processes.start(
            [
                str(processes.BIN / "daphne"),
                "-b",
                "127.0.0.1",
                "-p",
                str(self.port),
                "console.asgi:application",
            ],
            console_env(HANGAR_ALLOWED_HOSTS="127.0.0.1,localhost"),
            self.log_dir / f"daphne-{self.starts}.log",
        )
        processes.wait_for(
            lambda: urllib.request.urlopen(f"{self.url}/healthz", timeout=2).status == 200,
            what="daphne to answer /healthz",
            process=self.process,
        )

    def stop(self) -> None:
        if self.process is not None:
            processes.stop(self.process)
            self.process = None


@pytest.fixture
def console(transactional_db, tmp_path):
    server = Console(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def open_browser(chromium, console):
    """open_browser(user=None, locale="en-US") -> a Playwright page, logged in as `user`."""
    contexts = []

    def open_(user=None, locale: str = "en-US"):
        context = chromium.new_context(
            base_url=console.url, locale=locale, viewport={"width": 1400, "height": 900}
        )
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        if user is not None:
            log_in(page, user.username)
        return page

    yield open_
    for context in contexts:
        context.close()


def log_in(page, username: str, password: str = PASSWORD) -> None:
    page.goto("/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/login/" not in url)


def csrf_headers(page) -> dict:
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    return {"X-CSRFToken": token, "Referer": page.url}


def screenshot(page, name: str, full_page: bool = False) -> None:
    """Write docs/screenshots/<name>.png when HANGAR_SCREENSHOTS=1 (docs refresh)."""
    if os.environ.get("HANGAR_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)
