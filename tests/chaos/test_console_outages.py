"""The console's own parts go away under load: PostgreSQL, Redis, the web, Celery.

Each test breaks one part while two agents stream (two samples a second each)
and a client sends completions through the gateway, brings it back, and
measures: how long until everything works again, samples the console never
stored, requests that failed, samples stored twice.
"""

from __future__ import annotations

import signal
import time

from tests.chaos import stack

OUTAGE_S = stack.env_seconds("HANGAR_CHAOS_OUTAGE_S", 12, 60)
RECOVERY_DEADLINE_S = 90


def warm_up(chaos, seconds: float = 3.0) -> None:
    """Let every (fresh) agent stream for a few seconds before breaking anything."""
    since = time.time() + seconds
    for agent in chaos.agents.values():
        stack.wait_until(
            lambda a=agent: chaos.telemetry_flowing(a, since), 60, f"node {agent.name} streaming"
        )


def straddle_a_minute(length: float) -> None:
    """Wait until a fault of `length` seconds starting now would have a minute end in its
    middle: the worst moment for per-minute rollups, and the same one on every run."""
    if length >= 60:
        return  # every such outage holds a minute's end
    start_at = 60 - length / 2
    now = time.time() % 60
    time.sleep((start_at - now) % 60)  # placing the fault, not asserting on time


def recovered(chaos, healed: float) -> dict[str, float]:
    """Seconds from `healed` until each part works again (polled, with a deadline)."""
    times = {}
    times["web"] = stack.wait_until(
        lambda: stack.http_ok(f"{chaos.web_url}/healthz"), RECOVERY_DEADLINE_S, "/healthz 200"
    )
    for name, agent in chaos.agents.items():
        times[f"telemetry {name}"] = stack.wait_until(
            lambda a=agent: chaos.telemetry_flowing(a, healed), RECOVERY_DEADLINE_S, "telemetry"
        )
        times[f"node {name} online"] = chaos.wait_online(agent, RECOVERY_DEADLINE_S)
    times["gateway"] = stack.wait_until(
        lambda: chaos.load.first_success_after(healed) is not None,
        RECOVERY_DEADLINE_S,
        "a completion through the gateway",
    )
    times["gateway"] = min(times["gateway"], chaos.load.first_success_after(healed))
    return {part: round(max(0.0, at - healed), 1) for part, at in times.items()}


def measure(chaos, record, counts, started: float, healed: float, recovery: dict) -> dict:
    requests = chaos.load.between(started, healed + max(recovery.values()))
    failed = [o for o in requests if not o.ok]
    summary = {
        "outage_s": round(healed - started, 1),
        "recovery_s": max(recovery.values()),
        "recovery_by_part": recovery,
        "samples": counts,
        "samples_lost": sum(c["lost"] for c in counts.values()),
        "duplicates": sum(c["duplicates"] for c in counts.values()),
        "requests": len(requests),
        "requests_failed": len(failed),
        "failures": sorted({o.detail for o in failed}),
    }
    record(**summary)
    return summary


def test_postgres_down(chaos, agent_run, record):
    """The database away: telemetry is buffered nowhere but memory, the gateway serves on."""
    with agent_run:
        warm_up(chaos)
        straddle_a_minute(OUTAGE_S)
        started = time.time()
        chaos.postgres.stop()
        time.sleep(OUTAGE_S)  # the fault's length, not an assertion
        chaos.postgres.start()
        healed = time.time()
        recovery = recovered(chaos, healed)
        counts = agent_run.finish()
    m = measure(chaos, record, counts, started, healed, recovery)
    lost_ok = record.check("no sample lost", m["samples_lost"] == 0)
    dup_ok = record.check("no sample stored twice", m["duplicates"] == 0)
    gw_ok = record.check("the gateway served throughout", m["requests_failed"] == 0)
    record.check("everything back after the database", True)
    assert lost_ok and dup_ok and gw_ok, m


def test_redis_down(chaos, agent_run, record):
    """Redis away (restarted empty, like a Redis without persistence): all comes back."""
    with agent_run:
        warm_up(chaos)
        started = time.time()
        chaos.redis.stop()
        time.sleep(OUTAGE_S)
        chaos.redis.start()
        healed = time.time()
        recovery = recovered(chaos, healed)
        counts = agent_run.finish()
    m = measure(chaos, record, counts, started, healed, recovery)
    record.check("everything back after Redis", True)
    lost_ok = record.check("no sample lost", m["samples_lost"] == 0)
    dup_ok = record.check("no sample stored twice", m["duplicates"] == 0)
    assert lost_ok and dup_ok, m


def test_web_killed(chaos, agent_run, record):
    """Daphne killed with SIGKILL, restarted as supervisord would: agents reconnect."""
    with agent_run:
        warm_up(chaos)
        started = time.time()
        chaos.web.kill(signal.SIGKILL)  # the supervisor thread starts it again
        stack.wait_until(lambda: chaos.web.starts >= 2 and chaos.web.alive(), 30, "restart")
        healed = time.time()
        recovery = recovered(chaos, healed)
        counts = agent_run.finish()
    m = measure(chaos, record, counts, started, healed, recovery)
    record.check("agents reconnected to the restarted web", True)
    lost_ok = record.check("no sample lost", m["samples_lost"] == 0)
    dup_ok = record.check("no sample stored twice", m["duplicates"] == 0)
    gw_ok = record.check("the gateway served throughout", m["requests_failed"] == 0)
    assert lost_ok and dup_ok and gw_ok, m


def test_celery_killed_mid_task(chaos, agent_run, record, tmp_path):
    """Worker and beat killed with SIGKILL while a model checksum runs: it still finishes."""
    from apps.registry.models import Model, ModelVersion, VersionState
    from apps.registry.tasks import hash_version_task

    root = chaos.root / "models" / "big"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "weights.bin", "wb") as weights:  # sparse: hashing reads 3 GiB of zeros
        weights.truncate(3 * 1024**3)
    model = Model.objects.create(name="chaos-big")
    version = ModelVersion.objects.create(model=model, label="v1", path=str(root), format="other")
    with agent_run:
        warm_up(chaos)
        env_roots = chaos.worker.env.get("HANGAR_MODEL_ROOTS", "")
        assert str(chaos.root / "models") in env_roots, "the worker must see the model root"
        hash_version_task.delay(version.pk)
        stack.wait_until(
            lambda: ModelVersion.objects.get(pk=version.pk).progress.get("done_bytes", 0) > 0,
            60,
            "the checksum under way",
        )
        started = time.time()
        chaos.worker.kill(signal.SIGKILL)
        chaos.beat.kill(signal.SIGKILL)
        stack.wait_until(
            lambda: chaos.worker.alive() and chaos.beat.alive() and chaos.worker.starts >= 2,
            30,
            "worker and beat restarted",
        )
        healed = time.time()
        recovery = recovered(chaos, healed)
        try:
            done_at = stack.wait_until(
                lambda: ModelVersion.objects.get(pk=version.pk).state == VersionState.READY,
                RECOVERY_DEADLINE_S,
                "the interrupted checksum finished",
                interval=1.0,
            )
            recovery["checksum"] = round(done_at - healed, 1)
            finished = True
        except AssertionError:
            finished = False
        counts = agent_run.finish()
    m = measure(chaos, record, counts, started, healed, recovery)
    record(checksum_finished=finished)
    task_ok = record.check("the task killed mid-run ran again and finished", finished)
    lost_ok = record.check("no sample lost", m["samples_lost"] == 0)
    gw_ok = record.check("the gateway served throughout", m["requests_failed"] == 0)
    assert task_ok and lost_ok and gw_ok, m
