"""The PostgreSQL primary is lost: Patroni promotes the standby, the console writes on.

The console's own code writes audit events without pause (tests/ha/writer.py)
through a multi-host HANGAR_DATABASE_URL with target_session_attrs=read-write;
the primary's Patroni and PostgreSQL are killed. Required: writes resume (within
the deadline of the poll; the time is measured and recorded in docs/ha.md),
every acknowledged event is on the new primary, and the hash chain verifies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psycopg
import pytest

from tests.ha.cluster import PatroniCluster
from tests.support import processes
from tests.support.servers import Servers

DATABASE = "hangar"


@pytest.fixture
def patroni():
    servers = Servers()
    cluster = None
    try:
        cluster = PatroniCluster(servers)
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


def test_a_lost_primary_is_replaced_and_no_acknowledged_audit_event_is_lost(patroni, tmp_path):
    primary = patroni.primary()
    with psycopg.connect(
        f"host=127.0.0.1 port={primary['pg']} user=postgres password=postgres dbname=postgres",
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
    finally:
        (tmp_path / "acks.stop").touch()
        processes.wait_for(lambda: writer.poll() is not None, what="the writer to stop")
        processes.stop(writer)
    done = acknowledged(acks)
    after = [t for _, t in done if t > killed_at]
    new_primary = patroni.primary()
    assert new_primary is not None and new_primary["name"] != primary["name"]
    with psycopg.connect(
        f"host=127.0.0.1 port={new_primary['pg']} user=postgres password=postgres dbname={DATABASE}"
    ) as conn:
        stored = {
            int(row[0])
            for row in conn.execute(
                "SELECT changes->>'n' FROM audit_auditevent WHERE action = 'ha.probe'"
            )
        }
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
    }
    print("\nHA figures:", json.dumps(figures))
    with open(os.environ.get("HANGAR_HA_FIGURES", tmp_path / "figures.jsonl"), "a") as out:
        out.write(json.dumps(figures) + "\n")
