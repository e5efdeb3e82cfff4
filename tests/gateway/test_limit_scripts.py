"""The limit scripts, the usage move and energy accounting against real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis
from django.conf import settings

from apps.deployments.models import Deployment, Worker, WorkerState
from apps.gateway import usage
from apps.gateway.keys import create_consumer_key
from apps.gateway.models import EnergyMinute, Limit, Project, UsageMinute
from apps.gateway.proxy import limits
from apps.gateway.proxy.accounting import Accounts, minutes_key, usage_key
from apps.gateway.proxy.state import Key
from apps.inventory.models import Node, NodeState
from apps.telemetry.live import client
from apps.telemetry.models import NodeMetricMinute
from tests.deployments.conftest import ready_version


def run(coroutine):
    return asyncio.run(coroutine)


async def _with_redis(work):
    connection = aioredis.Redis.from_url(settings.REDIS_URL)
    try:
        return await work(connection)
    finally:
        await connection.aclose()


class Store(limits.LimitStore):
    """The gateway's LimitStore, each call awaited to its end (tests ask one at a time)."""

    async def settle_now(self, admission, requests, tokens):
        self.settle(admission, requests, tokens)
        await self.flush()

    async def renew_now(self, admissions, now):
        self.renew(admissions, now)
        await self.flush()


def rule(scope="key", subject=1, route=None, **values):
    return limits.Rule(id=hash((scope, subject, route)) % 10**6, scope=scope, subject=subject,
                       route=route, values=values)  # fmt: skip


def key(**fields):
    base = {"id": 1, "name": "k", "prefix": "p", "owner": "o", "routes": None, "networks": (),
            "expires": time.time() + 3600}  # fmt: skip
    return Key(**{**base, **fields})


def _forget_counters():
    r = client()
    for name in r.scan_iter("hangar:gw:*", count=1000):
        r.delete(name)


@pytest.fixture(autouse=True)
def clean_redis():
    _forget_counters()
    yield
    _forget_counters()


def checks(rules, estimate=10, now=None, route="chat"):
    now = time.time() if now is None else now
    k = key(user=7, project=3)
    pairs = [(r, limits.subject_of(r, k)) for r in rules]
    return limits.checks_for(
        [(r, s) for r, s in pairs if s], route, estimate, now, limits.Windows(), "t"
    )


def test_a_request_is_charged_on_every_limit_or_on_none():
    now = time.time()
    roomy = rule("key", 1, tokens_per_minute=1000)
    tight = rule("project", 3, tokens_per_minute=15)
    both = checks([roomy, tight], estimate=10, now=now)

    async def work(r):
        first = await Store(r).admit(both, "lease-1", now)
        second = await Store(r).admit(both, "lease-2", now)
        return first, second, [await r.get(c.counter) for c in both]

    first, second, counters = run(_with_redis(work))
    assert isinstance(first, limits.Admission)
    assert isinstance(second, limits.Refusal) and second.check.rule is tight
    assert second.used == 10
    # The roomy limit was not charged for the refused request either.
    assert counters == [b"10", b"10"]


def test_settling_charges_the_difference_to_what_was_used():
    now = time.time()
    budget = checks([rule("key", 1, tokens_per_minute=100, requests_per_minute=5)], 40, now)

    async def work(r):
        admission = await Store(r).admit(budget, "lease", now)
        await Store(r).settle_now(admission, requests=1, tokens=12)
        refunded = [int(await r.get(c.counter)) for c in budget]
        again = await Store(r).admit(budget, "lease-2", now)
        await Store(r).settle_now(again, requests=0, tokens=0)  # turned away after admission
        return refunded, [int(await r.get(c.counter)) for c in budget]

    refunded, after = run(_with_redis(work))
    by_field = dict(zip([c.field for c in budget], refunded, strict=True))
    assert by_field == {"tokens_per_minute": 12, "requests_per_minute": 1}
    assert dict(zip([c.field for c in budget], after, strict=True)) == by_field


def test_a_lease_of_a_gateway_that_died_lapses_and_live_ones_are_renewed():
    now = time.time()
    concurrency = checks([rule("user", 7, concurrent_requests=1)], now=now)

    async def work(r):
        held = await Store(r).admit(concurrency, "alive", now)
        refused = await Store(r).admit(concurrency, "other", now + 1)
        # Renewed at now + 50: still held at now + 70, past the first lease.
        await Store(r).renew_now([held], now + 50)
        still = await Store(r).admit(concurrency, "other", now + 70)
        # Its gateway died: nothing renews it, and after LEASE_S it is free.
        later = await Store(r).admit(concurrency, "other", now + 50 + limits.LEASE_S + 1)
        return refused, still, later

    refused, still, later = run(_with_redis(work))
    assert isinstance(refused, limits.Refusal)
    assert isinstance(still, limits.Refusal)
    assert isinstance(later, limits.Admission)


def test_windows_follow_the_console_time_zone():
    # 2026-12-02 01:30 in Shanghai is a Wednesday; the week began on Monday 30 November.
    at = datetime(2026, 12, 1, 17, 30, 15, tzinfo=UTC).timestamp()
    bounds = limits.Windows("Asia/Shanghai").bounds(at)
    assert bounds["minute"] == (int(at) - 15, int(at) + 45)
    day_start = datetime(2026, 12, 1, 16, 0, tzinfo=UTC).timestamp()
    assert bounds["day"] == (day_start, day_start + 86400)
    week_start = datetime(2026, 11, 29, 16, 0, tzinfo=UTC).timestamp()
    assert bounds["week"] == (week_start, week_start + 7 * 86400)


def test_a_limit_applies_only_where_its_scope_and_route_say():
    k = key(id=5, user=7, project=3, service_account=None)
    assert limits.subject_of(rule("key", 5), k) == "k5"
    assert limits.subject_of(rule("key", 6), k) is None
    assert limits.subject_of(rule("user", 7), k) == "u7"
    assert limits.subject_of(rule("project", 3), k) == "p3"
    assert limits.subject_of(rule("each-member", 3), k) == "p3u7"
    assert limits.subject_of(rule("each-key", 3), k) == "p3k5"
    assert limits.subject_of(rule("project", 4), k) is None
    app_key = key(id=9, user=None, service_account=2, project=3)
    assert limits.subject_of(rule("each-member", 3), app_key) == "p3s2"
    only_chat = [(rule("key", 5, route="chat", requests_per_minute=1), "k5")]
    assert limits.checks_for(only_chat, "embed", 1, time.time(), limits.Windows(), "t") == []
    assert len(limits.checks_for(only_chat, "chat", 1, time.time(), limits.Windows(), "t")) == 1


def test_reset_durations_read_like_openais():
    assert limits.duration(0.2) == "1s"
    assert limits.duration(360) == "6m0s"
    assert limits.duration(7384) == "2h3m4s"
    assert limits.duration(3 * 86400 + 4 * 3600 + 5) == "3d4h"


# --- moving usage into the database -----------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_settled_minutes_move_once_and_a_late_report_adds_a_row(make_user):
    person = make_user("counted")
    project = Project.objects.create(name="dept")
    k, _raw = create_consumer_key(name="k", days=1, user=person, all_routes=True, project=project)
    accounts = Accounts(settings.AGENT_BROKER_NAMESPACE)
    minute = int(time.time()) // 60 * 60 - 120
    for _ in range(3):
        accounts.count(at=minute + 5, key=k.pk, route="chat", deployment="0", worker=None,
                       status=200, prompt=4, completion=6, first_token_s=None, duration_s=0.5,
                       queued_s=0.25)  # fmt: skip

    async def flush(r):
        await accounts.flush(r)

    run(_with_redis(flush))
    assert usage.flush_usage() == 1
    row = UsageMinute.objects.get()
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (3, 12, 18)
    assert (row.duration_ms, row.queued_ms, row.project_id, row.user_id) == (
        1500, 750, project.pk, person.pk,
    )  # fmt: skip
    assert row.minute == datetime.fromtimestamp(minute, UTC)
    assert usage.flush_usage() == 0
    # A gateway that reports that minute late: another row, and the totals add up.
    accounts.count(at=minute + 30, key=k.pk, route="chat", deployment="0", worker=None,
                   status=500, prompt=1, completion=0, first_token_s=None, duration_s=0.1,
                   queued_s=0)  # fmt: skip
    run(_with_redis(flush))
    assert usage.flush_usage() == 1
    assert sum(r.requests for r in UsageMinute.objects.all()) == 4
    assert not client().exists(usage_key(settings.AGENT_BROKER_NAMESPACE, minute))
    assert not client().smembers(minutes_key(settings.AGENT_BROKER_NAMESPACE))


@pytest.mark.django_db(transaction=True)
def test_a_minute_still_open_is_left_for_later(make_user):
    accounts = Accounts(settings.AGENT_BROKER_NAMESPACE)
    accounts.count(at=time.time(), key=1, route="chat", deployment="0", worker=None,
                   status=200, prompt=1, completion=1, first_token_s=None, duration_s=0,
                   queued_s=0)  # fmt: skip
    run(_with_redis(accounts.flush))
    assert usage.flush_usage() == 0
    assert usage.flush_usage(now=time.time() + 120) == 1


@pytest.mark.django_db(transaction=True)
def test_a_move_that_died_half_way_is_finished_by_the_next_run(make_user):
    ns = settings.AGENT_BROKER_NAMESPACE
    minute = int(time.time()) // 60 * 60 - 180
    r = client()
    r.hset(usage_key(ns, minute) + usage.FLUSHING, "0|chat|0|0|2xx|requests", 2)
    r.sadd(minutes_key(ns), minute)
    assert usage.flush_usage() == 1
    assert UsageMinute.objects.get().requests == 2
    assert not r.exists(usage_key(ns, minute) + usage.FLUSHING)


# --- energy -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_energy_is_a_gpus_mean_power_shared_by_the_workers_holding_it(cluster):
    node = Node.objects.create(cluster=cluster, hostname="gpu-e", state=NodeState.ONLINE)
    version = ready_version()
    big = Deployment.objects.create(name="big", cluster=cluster, model_version=version,
                                    engine="reference", port=9100)  # fmt: skip
    small = Deployment.objects.create(name="small", cluster=cluster, model_version=version,
                                      engine="reference", port=9200)  # fmt: skip
    Worker.objects.create(deployment=big, node=node, model_version=version, slot=0, port=9100,
                          gpus=[0, 1], state=WorkerState.READY)  # fmt: skip
    Worker.objects.create(deployment=small, node=node, model_version=version, slot=0, port=9200,
                          gpus=[1], state=WorkerState.READY)  # fmt: skip
    minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=2)
    NodeMetricMinute.objects.create(
        node=node, minute=minute, samples=60,
        series={"gpu.0.power_draw": [100, 300, 400], "gpu.1.power_draw": [200, 200, 200],
                "gpu.2.power_draw": [50, 50, 50]},
    )  # fmt: skip
    assert usage.account_energy() == 2
    energy = {e.deployment_id: e for e in EnergyMinute.objects.filter(minute=minute)}
    # GPU 0 (300 W mean) is big's alone; GPU 1 (200 W) is shared half and half; GPU 2 idle.
    assert energy[big.pk].joules == pytest.approx(300 * 60 + 100 * 60)
    assert energy[small.pk].joules == pytest.approx(100 * 60)
    assert energy[big.pk].gpu_seconds == pytest.approx(90)
    assert energy[small.pk].gpu_seconds == pytest.approx(30)
    assert usage.account_energy() == 0  # a minute is accounted once


@pytest.mark.django_db(transaction=True)
def test_live_use_reads_the_gateways_counters(make_user):
    person = make_user("live")
    project = Project.objects.create(name="live")
    limit = Limit.objects.create(scope="project", project=project, tokens_per_minute=500,
                                 concurrent_requests=4)  # fmt: skip
    now = time.time()
    found = checks_for_limit(limit, now)

    async def work(r):
        admission = await Store(r).admit(found, "lease", now)
        await Store(r).settle_now(admission, requests=1, tokens=77)
        await Store(r).admit(found, "lease-2", now)

    run(_with_redis(work))
    use = usage.live_use(limit, now=now)
    assert use["tokens_per_minute"]["used"] == 77 + 10
    assert use["tokens_per_minute"]["limit"] == 500
    assert use["concurrent_requests"]["used"] == 1
    assert use["tokens_per_minute"]["resets_at"] == int(now) - int(now) % 60 + 60
    del person


def checks_for_limit(limit, now):
    r = limits.Rule(id=limit.pk, scope=limit.scope, subject=limit.project_id, route=None,
                    values=limit.values())  # fmt: skip
    return limits.checks_for(
        [(r, f"p{limit.project_id}")], "chat", 10, now,
        limits.Windows(settings.TIME_ZONE), settings.AGENT_BROKER_NAMESPACE,
    )  # fmt: skip


def test_limits_hold_after_redis_forgets_the_scripts():
    now = time.time()
    budget = checks([rule("key", 1, requests_per_minute=2)], now=now)

    async def work(r):
        store = limits.LimitStore(r)
        first = await store.admit(budget, "a", now)
        await r.script_flush()  # as after a Redis restart
        second = await store.admit(budget, "b", now)
        third = await store.admit(budget, "c", now)
        return first, second, third

    first, second, third = run(_with_redis(work))
    assert isinstance(first, limits.Admission) and isinstance(second, limits.Admission)
    assert isinstance(third, limits.Refusal)  # counted once each, not twice
