"""One console host is lost under telemetry and gateway load.

Two console hosts, each a Daphne and a `hangar-gateway` (sharing PostgreSQL and
Redis, as in docs/ha.md), behind one nginx whose upstreams list both; the real
agent knows both console addresses; four clients call the gateway without pause
through nginx. Host A's processes are killed at once. Required: the gateway goes
on serving through host B with no more failed requests than were in flight on
A, the agent moves to B, and the console answers through nginx. Samples that
reached A but not yet its minute rollup are measured (A's in-memory minute).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request

from django.db.models import Sum

from agents.enroll import write_credential
from apps.gateway import snapshot
from apps.inventory import broker
from apps.inventory.services import create_enrollment_token, enroll_node
from apps.telemetry import live
from apps.telemetry.models import NodeMetricMinute
from tests.gateway.conftest import http
from tests.support import processes
from tests.telemetry.conftest import FACTS

CHAT = {"model": "chat", "messages": [{"role": "user", "content": "still there?"}]}
CLIENTS = 4

NGINX = """
daemon off;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log;
events {{ worker_connections 256; }}
http {{
  access_log off;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  upstream console {{ server 127.0.0.1:{web_a} max_fails=1 fail_timeout=10s;
                     server 127.0.0.1:{web_b} max_fails=1 fail_timeout=10s; }}
  upstream gateway {{ server 127.0.0.1:{gw_a} max_fails=1 fail_timeout=10s;
                     server 127.0.0.1:{gw_b} max_fails=1 fail_timeout=10s; }}
  server {{
    listen 127.0.0.1:{console_port};
    location / {{
      proxy_pass http://console;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_next_upstream error timeout http_502 http_503;
      proxy_connect_timeout 2s;
    }}
  }}
  server {{
    listen 127.0.0.1:{gateway_port};
    location / {{
      proxy_pass http://gateway;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      # A request is sent to the next host only if it never reached this one.
      proxy_next_upstream error timeout;
      proxy_connect_timeout 2s;
    }}
  }}
}}
"""


def daphne(port: int, log) -> subprocess.Popen:
    return processes.start(
        [str(processes.BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port),
         "console.asgi:application"],
        processes.console_env(HANGAR_ALLOWED_HOSTS="127.0.0.1"),
        log,
    )  # fmt: skip


def healthy(url: str) -> bool:
    try:
        return urllib.request.urlopen(f"{url}/healthz", timeout=2).status == 200
    except OSError:
        return False


class Load:
    """CLIENTS threads calling the gateway one request after another."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.ok = self.failed = self.in_flight = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(CLIENTS)]
        for thread in self.threads:
            thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                self.in_flight += 1
            try:
                status = http(
                    "POST", f"{self.url}/v1/chat/completions", CHAT, self.key, timeout=30
                )[0]
            except OSError:
                status = 0
            with self.lock:
                self.in_flight -= 1
                if status == 200:
                    self.ok += 1
                else:
                    self.failed += 1

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


def test_a_lost_console_host_leaves_the_other_serving(
    start_gateway, serving, consumer_key, cluster, tmp_path
):
    serving("chat", workers=2)
    key = consumer_key()
    snapshot.publish()
    web_a, web_b = processes.free_port(), processes.free_port()
    host_a = [daphne(web_a, tmp_path / "daphne-a.log")]
    host_b = [daphne(web_b, tmp_path / "daphne-b.log")]
    gw_a, gw_b = start_gateway(), start_gateway()
    host_a.append(gw_a.proc)
    console_port, gateway_port = processes.free_port(), processes.free_port()
    (tmp_path / "nginx.conf").write_text(
        NGINX.format(root=tmp_path, web_a=web_a, web_b=web_b, gw_a=gw_a.port, gw_b=gw_b.port,
                     console_port=console_port, gateway_port=gateway_port)
    )  # fmt: skip
    nginx = processes.start(
        ["/usr/sbin/nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        os.environ.copy(),
        tmp_path / "nginx.log",
    )
    console = f"http://127.0.0.1:{console_port}"
    agent = load = None
    try:
        for url in (f"http://127.0.0.1:{web_a}", f"http://127.0.0.1:{web_b}", console):
            processes.wait_for(lambda url=url: healthy(url), what=f"{url} healthy")
        for gateway in (gw_a, gw_b):
            processes.wait_for(lambda g=gateway: g.health()["status"] == "ok", what="gateway ok")
        _token, secret = create_enrollment_token(cluster, None)
        node, credential = enroll_node(secret, "ha-node", FACTS, None)
        write_credential(
            tmp_path / "agent",
            {"console": f"http://127.0.0.1:{web_a}", "node_id": node.pk,
             "credential": credential, **broker.credential_fields(node.pk, credential)},
        )  # fmt: skip
        agent = processes.start(
            [str(processes.BIN / "hangar-agent"), "run", "--simulate", "2", "--no-celery",
             "--interval", "0.1", "--state-dir", str(tmp_path / "agent"),
             "--console", f"http://127.0.0.1:{web_a}", "--console", f"http://127.0.0.1:{web_b}"],
            os.environ.copy(),
            tmp_path / "agent.log",
        )  # fmt: skip
        processes.wait_for(
            lambda: live.client().get(live.latest_key(node.pk)) is not None, what="telemetry"
        )
        load = Load(f"http://127.0.0.1:{gateway_port}", key)
        processes.wait_for(lambda: load.ok >= 20, what="gateway load flowing")
        failed_before, in_flight = load.failed, load.in_flight
        killed_at = time.monotonic()
        for proc in host_a:
            processes.stop(proc, signal.SIGKILL)
        ok_at_kill = load.ok
        processes.wait_for(lambda: load.ok >= ok_at_kill + 20, timeout=60, what="serving via B")
        served_again_after = time.monotonic() - killed_at

        def seq() -> int:
            return json.loads(live.client().get(live.latest_key(node.pk)))["seq"]

        seq_at_kill = seq()
        processes.wait_for(lambda: seq() > seq_at_kill + 10, timeout=60, what="agent on B")
        agent_moved_after = time.monotonic() - killed_at
        processes.wait_for(lambda: healthy(console), what="console through nginx")
        load.close()
        failed = load.failed - failed_before
        processes.stop(agent)  # its socket closes; host B flushes the minute rollups
        agent = None
        time.sleep(1)
        last = seq()

        def stored() -> int:
            rows = NodeMetricMinute.objects.filter(node=node)
            return rows.aggregate(n=Sum("samples"))["n"] or 0

        # Host B's part is flushed when the socket closes; host A's part of the minute
        # it held in memory died with it (measured, not required: docs/ha.md).
        processes.wait_for(lambda: stored() > 0, timeout=30, what="rollups flushed")
        time.sleep(2)
    finally:
        if load is not None:
            load.close()
        if agent is not None:
            processes.stop(agent)
        for proc in [*host_a, *host_b, nginx]:
            processes.stop(proc)
    figures = {
        "case": "console host lost (Daphne + gateway killed), nginx upstreams",
        "gateway_served_again_after_s": round(served_again_after, 1),
        "agent_streaming_to_b_after_s": round(agent_moved_after, 1),
        "gateway_requests_ok": load.ok,
        "gateway_requests_failed": failed,
        "gateway_requests_in_flight_at_kill": in_flight,
        "samples_taken_up_to_seq": last,
        "samples_stored": stored(),
        "samples_lost": max(0, last - stored()),
    }
    print("\nHA figures:", json.dumps(figures))
    with open(os.environ.get("HANGAR_HA_FIGURES", tmp_path / "figures.jsonl"), "a") as out:
        out.write(json.dumps(figures) + "\n")
    assert failed <= in_flight <= CLIENTS
