"""README's "First five minutes", as a newcomer follows it, in a real headless Chromium:
a fresh `make run` makes the demo → the dashboard shows it → the Python `openai`
snippet it printed streams a completion through the gateway → the latency shows on
the demo's deployment page. Then `make status` (supervisorctl) from a shell without
make run's variables, and Ctrl-C, which stops the demo's worker too and says so."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import openai
import pyotp

from tests.support import processes
from tests.support.browserless import admin_password
from tests.ui.conftest import screenshot


def test_a_newcomer_streams_from_the_demo_and_sees_its_latency(chromium, tmp_path):
    port, redis_port = processes.free_port(), processes.free_port()
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANGAR_")}
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    env.update(
        {
            "HANGAR_DATA_DIR": str(data),
            "HANGAR_BIND": f"127.0.0.1:{port}",
            "HANGAR_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "HANGAR_GATEWAY_BIND": f"127.0.0.1:{processes.free_port()}",
            "HANGAR_GATEWAY_ADMIN_BIND": f"127.0.0.1:{processes.free_port()}",
            "PATH": f"{processes.BIN}{os.pathsep}{env['PATH']}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    log = tmp_path / "serve.log"
    serve = processes.start([str(processes.BIN / "python"), "manage.py", "serve"], env, log)
    context = chromium.new_context(
        base_url=f"http://127.0.0.1:{port}", viewport={"width": 1400, "height": 900}
    )
    context.set_default_timeout(20_000)
    worker_pid = None
    try:
        processes.wait_for(
            lambda: "The demo is ready" in log.read_text(),
            timeout=180,
            what="make run to print the demo's snippets",
            process=serve,
        )
        output = log.read_text()
        key = re.search(r'api_key="(hk-[^"]+)"', output).group(1)
        base_url = re.search(r'OpenAI\(base_url="([^"]+)"', output).group(1)
        assert base_url == f"http://{env['HANGAR_GATEWAY_BIND']}/v1"
        assert f"curl -N {base_url}/chat/completions" in output

        # The README's steps: open the URL, log in as admin with the printed password.
        page = context.new_page()
        page.goto("/login/")
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", admin_password(output))
        page.click("button[type=submit]")
        # The printed password is a first password: choose one's own (forced), then
        # turn on the second factor the default policy asks of administrators.
        page.wait_for_url("**/account/password/")
        page.fill("input[name=current_password]", admin_password(output))
        page.fill("input[name=new_password]", "The newcomer's Own passphrase 1")
        page.fill("input[name=new_password_again]", "The newcomer's Own passphrase 1")
        page.press("input[name=new_password_again]", "Enter")
        page.wait_for_url("**/account/second-factor/")
        secret = page.locator(".card p code").first.inner_text()
        page.fill("input[name=code]", pyotp.TOTP(secret).now())
        page.click("form:has(input[name=code]) button[type=submit]")
        page.wait_for_selector(".recovery-codes")
        page.click("text=Continue")
        page.wait_for_selector("#demo-banner")
        assert page.locator("#demo-remove").is_visible()
        page.click("#demo-deployment")
        page.wait_for_selector("#demo-mark")

        def worker_ready() -> bool:
            page.reload()
            return page.locator("#worker-table [data-field=worker-state].ok").count() == 1

        processes.wait_for(worker_ready, timeout=120, what="the demo's worker ready")
        workers = page.request.get("/api/v1/workers/?deployment=" + page.url.split("/")[-2])
        worker_pid = workers.json()["results"][0]["pid"]

        # The printed Python snippet, as it is: a streamed chat completion.
        client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)
        chunks = [
            chunk.choices[0].delta.content or ""
            for chunk in client.chat.completions.create(
                model="demo", stream=True, messages=[{"role": "user", "content": "Hello"}]
            )
            if chunk.choices
        ]
        assert len([c for c in chunks if c]) > 3  # token by token, not one block
        assert "".join(chunks).startswith("[Hangar reference engine")

        # The gateway's latency reaches the deployment page (beat judges every 5 s).
        def latency_shown() -> bool:
            page.reload()
            text = page.locator("#traffic-figures [data-field=latency_p99_ms]").inner_text()
            return text.endswith(" ms")

        processes.wait_for(latency_shown, timeout=60, what="the latency on the deployment page")
        screenshot(page, "first-five-minutes", full_page=True)

        # make status from a shell that has none of make run's variables but the data dir.
        bare = {"PATH": env["PATH"], "HANGAR_DATA_DIR": str(data)}
        status = subprocess.run(
            ["make", "-s", "status"],
            cwd=processes.ROOT,
            env=bare,
            capture_output=True,
            text=True,
            check=False,
        )
        assert re.search(r"^agent\s+RUNNING", status.stdout, re.M), status.stdout + status.stderr
        assert "cannot be expanded" not in status.stderr
    finally:
        context.close()
        serve.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            serve.wait(60)
        finally:
            processes.stop(serve)
    output = log.read_text()
    assert "Stopping the inference workers the local agent started: worker " in output
    assert "Stopped 1 inference worker(s)" in output
    deadline = time.monotonic() + 10
    while worker_pid and processes.group_alive(worker_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert worker_pid and not processes.group_alive(worker_pid), "the demo's worker outlived Ctrl-C"
