"""The PostgreSQL primary is lost: Patroni promotes the standby, the console writes on.

The console's own code writes audit events without pause (tests/ha/writer.py)
through a multi-host HANGAR_DATABASE_URL with target_session_attrs=read-write;
the primary's Patroni and PostgreSQL are killed (each member and etcd is a
network namespace, tests/ha/cluster.py). Required: writes resume (within
the deadline of the poll; the time is measured and recorded in docs/ha.md),
every acknowledged event is on the new primary, the hash chain verifies, and
alerts that fire before, during and after the gap reach their webhook once each
(through a real Celery worker on the same URL).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psycopg
import pytest

from agents.enroll import write_credential
from apps.telemetry import live
from tests.alerts.conftest import webhook
from tests.ha.cluster import PatroniCluster
from tests.support import processes
from tests.support.servers import Servers

__all__ = ["webhook"]  # the recording webhook receiver of tests/alerts

DATABASE = "hangar"

# Run by `manage.py shell` against the cluster: a node and what its agent needs.
ENROLL = """
import json
from apps.inventory import broker
from apps.inventory.models import Cluster
from apps.inventory.services import create_enrollment_token, enroll_node
from tests.telemetry.conftest import FACTS
_token, secret = create_enrollment_token(Cluster.objects.create(name="ha"), None)
node, credential = enroll_node(secret, "ha-node", FACTS, None)
print(json.dumps({"node_id": node.pk, "credential": credential,
                  **broker.credential_fields(node.pk, credential)}))
"""


# Rules that fire one after another across the failover (each `for` later than the
# last), all telling one webhook: each alert must be delivered once, not twice.
ALERT_DELAYS_S = (0, 6, 12, 18, 24, 30, 36, 42)
RULES = """
import json
from apps.alerts.models import AlertRule, Receiver
receiver = Receiver.objects.create(name="ha-hook", kind="webhook", url={url!r})
for delay in {delays!r}:
    rule = AlertRule.objects.create(
        name=f"ha-{{delay}}", metric="host.cpu_percent", comparison=">=", threshold=0,
        scope="node", node_id={node_id}, for_seconds=delay, severity="warning",
    )
    rule.receivers.set([receiver])
print("ok")
"""


def deliveries_by_alert(hooks) -> dict[int, int]:
    counts: dict[int, int] = {}
    with hooks.lock:
        for request in hooks.received:
            body = request["body"]
            if body["event"] == "firing" and body["alert"]["rule"]["name"].startswith("ha-"):
                counts[body["alert"]["id"]] = counts.get(body["alert"]["id"], 0) + 1
    return counts


@pytest.fixture
def patroni(lan):
    servers = Servers()
    cluster = None
    try:
        cluster = PatroniCluster(servers, lan)
        cluster.wait_ready()
        yield cluster
    finally:
        if cluster is not None:
            cluster.close()
        servers.close()


def console_env(url: str, tmp_path) -> dict:
    env = os.environ.copy()
    env.update(
        {
            "HANGAR_DATABASE_URL": url,
            "HANGAR_DATA_DIR": str(tmp_path),
            "PYTHONUNBUFFERED": "1",
            "HANGAR_LOG_LEVEL": "WARNING",
        }
    )
    return env


def acknowledged(path) -> list[tuple[int, float]]:
    if not path.exists():
        return []
    return [(int(n), float(t)) for n, t in (line.split() for line in path.read_text().splitlines())]


def test_a_lost_primary_is_replaced_and_no_acknowledged_audit_event_is_lost(
    patroni, webhook, tmp_path
):
    primary = patroni.primary()
    with psycopg.connect(
        f"host={primary['address']} port={primary['pg']} user=postgres password=postgres"
        " dbname=postgres",
        autocommit=True,
    ) as conn:
        conn.execute(f"CREATE DATABASE {DATABASE}")
    url = patroni.database_url(DATABASE)
    env = console_env(url, tmp_path)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"],
        cwd=processes.ROOT,
        env=env,
        check=True,
        timeout=600,
    )
    # Telemetry load: a node of this database, the real agent streaming into a Daphne
    # that reaches the database through the same multi-host URL.
    made = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", ENROLL],
        cwd=processes.ROOT, env=env, check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    node = json.loads(made.stdout.strip().splitlines()[-1])
    rules = RULES.format(url=webhook.url, delays=ALERT_DELAYS_S, node_id=node["node_id"])
    subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", rules],
        cwd=processes.ROOT, env=env, check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    # The alert deliveries' worker, on the same multi-host URL.
    worker = processes.start(
        [str(processes.BIN / "celery"), "-A", "console.celery", "worker", "-Q", "console",
         "--pool", "threads", "-c", "2", "--without-gossip", "--without-mingle",
         "-n", f"ha-deliveries-{processes.free_port()}@%h", "-l", "info"],
        env,
        tmp_path / "worker.log",
    )  # fmt: skip
    web = processes.free_port()
    daphne = processes.start(
        [str(processes.BIN / "daphne"), "-b", "127.0.0.1", "-p", str(web),
         "console.asgi:application"],
        {**env, "HANGAR_ALLOWED_HOSTS": "127.0.0.1"},
        tmp_path / "daphne.log",
    )  # fmt: skip
    write_credential(tmp_path / "agent", {"console": f"http://127.0.0.1:{web}", **node})
    agent = processes.start(
        [str(processes.BIN / "hangar-agent"), "run", "--simulate", "2", "--no-celery",
         "--interval", "0.1", "--state-dir", str(tmp_path / "agent")],
        os.environ.copy(),
        tmp_path / "agent.log",
    )  # fmt: skip
    latest = live.latest_key(node["node_id"])
    processes.wait_for(lambda: live.client().get(latest) is not None, what="telemetry flowing")
    acks = tmp_path / "acks"
    writer = processes.start(
        [sys.executable, "-m", "tests.ha.writer", str(acks)], env, tmp_path / "writer.log"
    )
    try:
        processes.wait_for(lambda: len(acknowledged(acks)) >= 20, what="writes", process=writer)
        killed_at = time.time()
        patroni.kill(primary)
        processes.wait_for(
            lambda: any(t > killed_at + 0.5 for _, t in acknowledged(acks)),
            timeout=120,
            what="writes on the promoted standby",
            process=writer,
        )
        processes.wait_for(
            lambda: sum(t > killed_at for _, t in acknowledged(acks)) >= 20,
            what="more writes after the failover",
            process=writer,
        )
        # Every rule has fired (the last one 42 s after the first sample) and told the
        # webhook; the worker's retries of what the gap held back have run.
        processes.wait_for(
            lambda: len(deliveries_by_alert(webhook)) >= len(ALERT_DELAYS_S),
            timeout=120,
            what="every rule's alert delivered",
        )
        time.sleep(5)  # a second delivery of any of them would come now
        processes.stop(agent)  # its socket closes; the console flushes the minute rollups
        time.sleep(1)
        last_seq = json.loads(live.client().get(latest))["seq"]
    finally:
        (tmp_path / "acks.stop").touch()
        processes.wait_for(lambda: writer.poll() is not None, what="the writer to stop")
        processes.stop(writer)
        processes.stop(agent)
        processes.stop(daphne)
        processes.stop(worker)
    delivered = deliveries_by_alert(webhook)
    done = acknowledged(acks)
    after = [t for _, t in done if t > killed_at]
    new_primary = patroni.primary()
    assert new_primary is not None and new_primary["name"] != primary["name"]
    with psycopg.connect(
        f"host={new_primary['address']} port={new_primary['pg']} user=postgres"
        f" password=postgres dbname={DATABASE}"
    ) as conn:
        stored = {
            int(row[0])
            for row in conn.execute(
                "SELECT changes->>'n' FROM audit_auditevent WHERE action = 'ha.probe'"
            )
        }
        samples = conn.execute(
            "SELECT coalesce(sum(samples), 0) FROM telemetry_nodemetricminute WHERE node_id = %s",
            [node["node_id"]],
        ).fetchone()[0]
    lost = sorted({n for n, _ in done} - stored)
    assert lost == [], f"acknowledged audit events missing after the failover: {lost[:20]}"
    verify = subprocess.run(
        [sys.executable, "manage.py", "audit", "verify"],
        cwd=processes.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    failed = sum(
        line.startswith("write ") for line in (tmp_path / "writer.log").read_text().splitlines()
    )
    figures = {
        "case": "postgres primary killed (Patroni + etcd, synchronous_mode)",
        "writes_back_after_s": round(min(after) - killed_at, 1),
        "failed_write_attempts": failed,
        "acknowledged_events": len(done),
        "acknowledged_events_lost": len(lost),
        "samples_taken_up_to_seq": last_seq,
        "samples_stored": samples,
        "samples_lost": max(0, last_seq - samples),
        "alerts_delivered": len(delivered),
        "alert_deliveries": sum(delivered.values()),
        "alert_deliveries_twice": sum(n - 1 for n in delivered.values()),
    }
    print("\nHA figures:", json.dumps(figures))
    with open(os.environ.get("HANGAR_HA_FIGURES", tmp_path / "figures.jsonl"), "a") as out:
        out.write(json.dumps(figures) + "\n")
    assert figures["samples_lost"] == 0
    assert len(delivered) == len(ALERT_DELAYS_S), delivered
    assert figures["alert_deliveries_twice"] == 0, delivered
