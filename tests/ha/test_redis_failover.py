"""The Redis master is lost under telemetry load: Sentinel promotes the replica.

Real parts: a master, its replica and three Sentinels (quorum 2); a Daphne
serving the console with HANGAR_REDIS_SENTINELS (so its cache, channel layer
and live telemetry find the master through Sentinel); the real agent with
simulated GPUs streaming every 0.1 s. Redis servers and Sentinels are each a
network namespace of the LAN (tests/ha/netns.py). The master is killed (`kill -9`). Required: the
console's Redis writes work again (/healthz answers 200 again; the time is
measured), every sample the agent took reached the minute rollups, and two beats
(the leader lock is a key in this Redis) sent no scheduled job twice.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import urllib.request

import pytest
import redis
from django.db.models import Sum

from agents.enroll import write_credential
from apps.inventory import broker
from apps.inventory.services import create_enrollment_token, enroll_node
from apps.telemetry.models import NodeMetricMinute
from tests.ha import beats as beats_twice
from tests.support import processes
from tests.support.servers import Servers
from tests.telemetry.conftest import FACTS

MASTER = "hangar-ha"
REDIS_PORT, SENTINEL_PORT = 6379, 26379


class RedisHost:
    """A redis-server (or Sentinel) alone in a namespace of the LAN, on its usual port."""

    def __init__(self, servers: Servers, host, argv: list[str], port: int) -> None:
        self.host, self.address, self.port = host, host.address, port
        self.proc = servers.start(host.name, host.argv(argv))
        processes.wait_for(self.client().ping, what=f"Redis {host.name}", process=self.proc)

    def client(self) -> redis.Redis:
        return redis.Redis(
            host=self.address, port=self.port, socket_timeout=2, socket_connect_timeout=2
        )

    def kill(self) -> None:
        processes.stop(self.proc, signal.SIGKILL)


def redis_host(servers: Servers, lan, name: str, number: int, replica_of=None) -> RedisHost:
    host = lan.host(name, number)
    # No password on this test LAN: protected mode would refuse the other hosts.
    argv = [shutil.which("redis-server"), "--port", str(REDIS_PORT), "--bind", host.address,
            "--protected-mode", "no",
            "--save", "", "--appendonly", "no", "--dir", str(servers.root),
            "--dbfilename", f"{name}.rdb"]  # fmt: skip
    if replica_of is not None:
        argv += ["--replicaof", replica_of.address, str(REDIS_PORT)]
    return RedisHost(servers, host, argv, REDIS_PORT)


def sentinel_host(servers: Servers, lan, name: str, number: int, master: RedisHost) -> RedisHost:
    host = lan.host(name, number)
    config = servers.root / f"{name}.conf"
    config.write_text(
        f"port {SENTINEL_PORT}\nbind {host.address}\nprotected-mode no\ndir {servers.root}\n"
        f"sentinel monitor {MASTER} {master.address} {REDIS_PORT} 2\n"
        f"sentinel down-after-milliseconds {MASTER} 1000\n"
        f"sentinel failover-timeout {MASTER} 5000\n"
        f"sentinel parallel-syncs {MASTER} 1\n"
    )
    return RedisHost(servers, host, [shutil.which("redis-sentinel"), str(config)], SENTINEL_PORT)


@pytest.fixture
def sentinels(lan):
    """Master 10.77.0.31, replica .32, Sentinels .41 to .43: each a namespace of its own."""
    servers = Servers()
    try:
        master = redis_host(servers, lan, "redis-a", 31)
        replica = redis_host(servers, lan, "redis-b", 32, replica_of=master)
        watchers = [sentinel_host(servers, lan, f"sentinel{i}", 41 + i, master) for i in range(3)]
        processes.wait_for(
            lambda: replica.client().info("replication")["master_link_status"] == "up",
            what="the replica in sync",
        )
        processes.wait_for(
            lambda: all(
                w.client().sentinel_master(MASTER)["num-other-sentinels"] == 2 for w in watchers
            ),
            what="the Sentinels finding each other",
        )
        yield master, replica, ",".join(f"{w.address}:{w.port}" for w in watchers)
    finally:
        servers.close()


def healthy(url: str) -> bool:
    try:
        return urllib.request.urlopen(f"{url}/healthz", timeout=2).status == 200
    except OSError:
        return False


def test_a_lost_redis_master_is_replaced_and_no_sample_is_lost(
    sentinels, transactional_db, cluster, tmp_path
):
    master, replica, sentinel_list = sentinels
    redis_env = {
        "HANGAR_REDIS_URL": f"redis://127.0.0.1:{processes.free_port()}/0",
        "HANGAR_REDIS_SENTINELS": sentinel_list,
        "HANGAR_REDIS_MASTER": MASTER,
    }
    port = processes.free_port()
    daphne = processes.start(
        [
            str(processes.BIN / "daphne"),
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "console.asgi:application",
        ],
        processes.console_env(HANGAR_ALLOWED_HOSTS="127.0.0.1", **redis_env),
        tmp_path / "daphne.log",
    )
    url = f"http://127.0.0.1:{port}"
    # Two beats, as two console hosts run them: the leader lock lives in this Redis.
    beat_logs = [tmp_path / f"beat-{i}.log" for i in (1, 2)]
    celery_beat = [str(processes.BIN / "celery"), "-A", "console.celery", "beat", "-l", "info"]
    beats = [
        processes.start(
            [*celery_beat, "-s", str(tmp_path / f"beat-{i}")],
            processes.console_env(**redis_env),
            log,
        )
        for i, log in enumerate(beat_logs, 1)
    ]
    agent = None
    try:
        processes.wait_for(lambda: healthy(url), what="Daphne on Sentinel", process=daphne)
        processes.wait_for(
            lambda: any(b"beat: leading" in log.read_bytes() for log in beat_logs),
            timeout=60,
            what="one beat leading",
        )
        _token, secret = create_enrollment_token(cluster, None)
        node, credential = enroll_node(secret, "ha-node", FACTS, None)
        write_credential(
            tmp_path / "agent",
            {
                "console": url,
                "node_id": node.pk,
                "credential": credential,
                **broker.credential_fields(node.pk, credential),
            },
        )
        agent = processes.start(
            [
                str(processes.BIN / "hangar-agent"),
                "run",
                "--simulate",
                "2",
                "--no-celery",
                "--interval",
                "0.1",
                "--state-dir",
                str(tmp_path / "agent"),
            ],
            os.environ.copy(),
            tmp_path / "agent.log",
        )
        latest = master.client().get
        processes.wait_for(
            lambda: latest(f"hangar:latest:{node.pk}") is not None, what="telemetry flowing"
        )
        time.sleep(2)
        killed_at = time.monotonic()
        master.kill()
        processes.wait_for(lambda: not healthy(url), timeout=30, what="Redis seen down")
        processes.wait_for(lambda: healthy(url), timeout=120, what="/healthz up again")
        writes_back_after = time.monotonic() - killed_at
        time.sleep(3)  # telemetry through the new master
        processes.stop(agent)  # the socket closes; the console flushes the minute rollups
        agent = None
        time.sleep(1)
        # The agent's last sample, as the console saw it (on the promoted master).
        last = json.loads(replica.client().get(f"hangar:latest:{node.pk}"))

        def stored() -> int:
            rows = NodeMetricMinute.objects.filter(node=node)
            return rows.aggregate(n=Sum("samples"))["n"] or 0

        processes.wait_for(lambda: stored() >= last["seq"], timeout=30, what="rollups flushed")
    finally:
        if agent is not None:
            processes.stop(agent)
        processes.stop(daphne, signal.SIGTERM)
        for beat in beats:
            processes.stop(beat)
    beat_runs = beats_twice.double_runs(beat_logs)
    figures = {
        "case": "redis master killed (Sentinel x3, quorum 2)",
        "writes_back_after_s": round(writes_back_after, 1),
        "beat_sends": beat_runs["sends"],
        "beat_sends_by_beat": beat_runs["sends_by_beat"],
        "beat_ran_twice": beat_runs["ran_twice"],
        "beat_entries_twice": beat_runs["entries_twice"],
        "samples_taken_up_to_seq": last["seq"],
        "samples_stored": stored(),
        "samples_lost": max(0, last["seq"] - stored()),
        "samples_stored_twice": max(0, stored() - last["seq"]),
    }
    print("\nHA figures:", json.dumps(figures))
    with open(os.environ.get("HANGAR_HA_FIGURES", tmp_path / "figures.jsonl"), "a") as out:
        out.write(json.dumps(figures) + "\n")
    assert figures["samples_lost"] == 0 and figures["samples_stored_twice"] == 0
    assert beat_runs["sends"] > 0 and beat_runs["ran_twice"] == 0, beat_runs
