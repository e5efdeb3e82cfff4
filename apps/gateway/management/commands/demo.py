"""`manage.py demo install|remove|status`: the first-run demo (apps/gateway/demo.py).

`manage.py serve` runs `demo install --wait` beside supervisord on a first start,
with the environment of the console's processes (the embedded Redis's password),
so the demo is made once the local agent's node is online.
"""

from __future__ import annotations

import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.audit import recorder
from apps.core.i18n import in_english
from apps.gateway import demo


class Command(BaseCommand):
    help = "Install, remove or show the first-run demo (model, deployment, route, key `demo`)."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["install", "remove", "status"])
        parser.add_argument("--gateway-url", default="", help="printed in the snippets")
        parser.add_argument(
            "--wait", type=float, default=0, help="seconds to wait for the local node online"
        )

    def handle(self, *args, action: str, gateway_url: str, wait: float, **options):
        gateway_url = gateway_url or (
            f"http://{settings.GATEWAY_BIND_HOST}:{settings.GATEWAY_BIND_PORT}/v1"
        )
        if action == "status":
            state = demo.read_state()
            self.stdout.write("installed" if demo.is_installed() else f"not installed: {state}")
            return
        if action == "remove":
            try:
                removed = demo.remove()
            except demo.DemoError as exc:
                raise CommandError(in_english(exc)) from exc
            recorder.record("demo.remove", changes={"removed": removed})
            self.stdout.write(f"The demo is removed: {removed}")
            return
        if demo.is_installed():
            self.stdout.write(demo.snippets(demo.read_state(), gateway_url))
            return
        node = demo.local_node(Path(settings.DATA_DIR) / "agent")
        if node is None:
            raise CommandError("The demo needs the local agent's node; none is enrolled.")
        deadline = time.monotonic() + wait
        while not demo.node_is_online(node.pk):
            if time.monotonic() > deadline:
                raise CommandError(
                    f"The local node {node} did not come online within {wait:.0f} s; "
                    "the demo is not made (`manage.py demo install` tries again)."
                )
            time.sleep(1)
        self.stdout.write("Making the demo: model, deployment, route and key `demo` ...")
        state = demo.install(node)
        # The snippets are printed once they work: when the worker serves.
        deadline = time.monotonic() + max(wait, 60)
        while not demo.worker_ready(state) and time.monotonic() < deadline:
            time.sleep(0.5)
        if not demo.worker_ready(state):
            self.stdout.write(
                "The demo's worker is not ready yet; its deployment page says why. "
                "The snippets below work once it is."
            )
        self.stdout.write(self.style.SUCCESS(demo.snippets(state, gateway_url)))
