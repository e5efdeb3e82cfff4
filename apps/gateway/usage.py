"""The gateways' per-minute usage moved into the database, GPU energy per deployment,
and the live use of a limit.

Gateways add their counts into one Redis hash per minute
(apps/gateway/proxy/accounting.py). Beat's `gateway.flush_usage` takes every
minute that ended more than `SETTLE_S` ago, renames its hash out of the way in
one step (a gateway that reports late starts a new hash for that minute, moved
on a later run as extra rows: reports add rows up), writes it as `UsageMinute`
rows in one bulk insert, and deletes the renamed hash only after the insert
committed. A run that dies between the two finds the renamed hash on its next
run and writes it then; the insert and the delete are one step apart, so in
that window a crash can count a minute twice, never lose one.

Energy (docs/limits.md): for each minute of node telemetry, a GPU's mean power
over the minute times 60 s, split equally among the deployments' workers that
hold that GPU; GPU-seconds likewise. `gateway.account_energy` writes each
deployment's minute once.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import redis
from django.conf import settings
from django.db import transaction

from apps.deployments.models import Deployment, DesiredState, Worker, WorkerState
from apps.gateway.models import ConsumerKey, EnergyMinute, Project, RequestRecord, UsageMinute
from apps.gateway.proxy.accounting import METRICS, minutes_key, request_log_key, usage_key
from apps.gateway.proxy.limits import FIELDS, Windows
from apps.telemetry.live import client
from apps.telemetry.models import NodeMetricMinute

log = logging.getLogger(__name__)

# A minute is moved once it ended this long ago: gateways add in every second.
SETTLE_S = 10
FLUSHING = ":flushing"
# Workers in these states hold their GPUs.
HOLDING = (
    WorkerState.STARTING,
    WorkerState.READY,
    WorkerState.UNHEALTHY,
    WorkerState.CRASHLOOP,
    WorkerState.STOPPING,
)
REQUEST_BATCH = 5000


def namespace() -> str:
    return settings.AGENT_BROKER_NAMESPACE


def flush_usage(now: float | None = None, redis_client=None) -> int:
    """Move every settled minute's counts into UsageMinute; returns rows written."""
    redis_client = redis_client or client()
    now = time.time() if now is None else now
    ns = namespace()
    written = 0
    for raw in sorted(redis_client.smembers(minutes_key(ns))):
        minute = int(raw)
        source = usage_key(ns, minute)
        parked = source + FLUSHING
        if minute + 60 + SETTLE_S > now:
            continue
        if not redis_client.exists(parked):
            try:
                redis_client.rename(source, parked)
            except redis.ResponseError:  # no such key: nothing new for this minute
                if not redis_client.exists(source):
                    redis_client.srem(minutes_key(ns), raw)
                continue
        written += _write_minute(minute, redis_client.hgetall(parked))
        redis_client.delete(parked)
        if not redis_client.exists(source):
            redis_client.srem(minutes_key(ns), raw)
    written += flush_request_log(redis_client)
    return written


def _write_minute(minute: int, fields: dict[bytes, bytes]) -> int:
    entries: dict[tuple, dict[str, int]] = defaultdict(dict)
    for name, value in fields.items():
        key, route, deployment, worker, status, metric = name.decode().split("|")
        entries[(key, route, deployment, worker, status)][metric] = int(value)
    key_ids = {int(k) for k, *_rest in entries if k.isdigit()}
    owners = {
        k["pk"]: k
        for k in ConsumerKey.objects.filter(pk__in=key_ids).values(
            "pk", "user_id", "service_account_id", "project_id"
        )
    }
    at = datetime.fromtimestamp(minute, UTC)
    rows = []
    for (key, route, deployment, worker, status), values in entries.items():
        owner = owners.get(int(key)) if key.isdigit() else None
        rows.append(
            UsageMinute(
                minute=at,
                key_id=owner["pk"] if owner else None,
                user_id=owner["user_id"] if owner else None,
                service_account_id=owner["service_account_id"] if owner else None,
                project_id=owner["project_id"] if owner else None,
                route=route[:100],
                deployment_id=int(deployment) if deployment.isdigit() else None,
                worker_id=int(worker) if worker.isdigit() and worker != "0" else None,
                status=status[:3],
                **{m: values.get(m, 0) for m in METRICS},
            )
        )
    with transaction.atomic():
        # A deployment deleted since: keep the row, without the link.
        alive = set(
            Deployment.objects.filter(
                pk__in={r.deployment_id for r in rows if r.deployment_id}
            ).values_list("pk", flat=True)
        )
        for row in rows:
            if row.deployment_id not in alive:
                row.deployment_id = None
        UsageMinute.objects.bulk_create(rows, batch_size=2000)
    return len(rows)


def flush_request_log(redis_client) -> int:
    """The optional per-request log, in batches (the list is empty when it is off)."""
    name = request_log_key(namespace())
    written = 0
    while True:
        batch = redis_client.lrange(name, 0, REQUEST_BATCH - 1)
        if not batch:
            return written
        records = []
        for raw in batch:
            try:
                item = json.loads(raw)
                records.append(
                    RequestRecord(
                        at=datetime.fromtimestamp(item["at"], UTC),
                        request_id=str(item.get("id") or "")[:40],
                        key_id=item.get("key"),
                        project_id=item.get("project"),
                        route=str(item.get("route") or "")[:100],
                        deployment_id=int(item["deployment"])
                        if str(item.get("deployment", "")).isdigit()
                        else None,
                        worker_id=item.get("worker"),
                        status=int(item["status"]),
                        prompt_tokens=int(item.get("prompt") or 0),
                        completion_tokens=int(item.get("completion") or 0),
                        first_token_ms=item.get("first_token_ms"),
                        duration_ms=int(item.get("duration_ms") or 0),
                        queued_ms=int(item.get("queued_ms") or 0),
                    )
                )
            except (ValueError, KeyError, TypeError):
                continue  # a record this console can't read is dropped, not retried forever
        with transaction.atomic():
            # A key or project deleted since: keep the record without the link.
            keys = set(
                ConsumerKey.objects.filter(pk__in={r.key_id for r in records}).values_list(
                    "pk", flat=True
                )
            )
            projects = set(
                Project.objects.filter(pk__in={r.project_id for r in records}).values_list(
                    "pk", flat=True
                )
            )
            for record in records:
                record.key_id = record.key_id if record.key_id in keys else None
                record.project_id = record.project_id if record.project_id in projects else None
            RequestRecord.objects.bulk_create(records, batch_size=2000)
        redis_client.ltrim(name, len(batch), -1)
        written += len(records)


# --- energy ------------------------------------------------------------------------


def account_energy(now: datetime | None = None, lookback_minutes: int = 10) -> int:
    """EnergyMinute rows for minutes of telemetry not yet accounted; returns rows written."""
    now = now or datetime.now(UTC)
    latest = now.replace(second=0, microsecond=0) - timedelta(minutes=1)
    since = latest - timedelta(minutes=lookback_minutes)
    done = set(
        EnergyMinute.objects.filter(minute__gte=since).values_list("minute", flat=True).distinct()
    )
    holders: dict[tuple[int, int], list[int]] = defaultdict(list)  # (node, gpu) -> deployments
    for worker in Worker.objects.filter(desired_state=DesiredState.RUNNING, state__in=HOLDING).only(
        "node_id", "deployment_id", "gpus"
    ):
        for gpu in worker.gpus or ():
            holders[(worker.node_id, int(gpu))].append(worker.deployment_id)
    if not holders:
        return 0
    nodes = {node for node, _gpu in holders}
    totals: dict[tuple[datetime, int], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for row in NodeMetricMinute.objects.filter(
        node_id__in=nodes, minute__gte=since, minute__lt=latest + timedelta(minutes=1)
    ).exclude(minute__in=done):
        for (node, gpu), deployments in holders.items():
            if node != row.node_id:
                continue
            power = row.series.get(f"gpu.{gpu}.power_draw")
            share = 1 / len(deployments)
            for deployment in deployments:
                total = totals[(row.minute, deployment)]
                total[0] += 60 * share
                if power:
                    total[1] += float(power[1]) * 60 * share  # mean watts over the minute
    rows = [
        EnergyMinute(minute=minute, deployment_id=deployment, gpu_seconds=gpu_s, joules=joules)
        for (minute, deployment), (gpu_s, joules) in totals.items()
    ]
    EnergyMinute.objects.bulk_create(rows, ignore_conflicts=True)
    return len(rows)


# --- live use of a limit -------------------------------------------------------------


def live_use(limit, subject: str | None = None, now: float | None = None) -> dict[str, dict]:
    """{field: {"used", "limit", "resets_at"}} of one limit's current windows, from Redis.

    `subject` is the counter's subject (limits.subject_of); for a key, user or
    project limit it is implied. Per-member and per-key limits have one counter
    per member or key: pass the one wanted.
    """
    now = time.time() if now is None else now
    if subject is None:
        subject = {
            "key": f"k{limit.key_id}",
            "user": f"u{limit.user_id}",
            "project": f"p{limit.project_id}",
        }.get(limit.scope)
    if subject is None:
        return {}
    bounds = Windows(settings.TIME_ZONE).bounds(now)
    names, fields = [], []
    for name, ceiling in limit.values().items():
        counts, window = FIELDS[name]
        base = f"hangar:gw:{namespace()}:lim:{limit.pk}:{subject}:{name}"
        names.append(base if counts == "concurrent" else f"{base}:{bounds[window][0]}")
        fields.append((name, ceiling, window))
    redis_client = client()
    with redis_client.pipeline(transaction=False) as pipe:
        for name, (_field, _ceiling, window) in zip(names, fields, strict=True):
            if window is None:
                pipe.zcount(name, now, "+inf")
            else:
                pipe.get(name)
        answers = pipe.execute()
    use = {}
    for answer, (field, ceiling, window) in zip(answers, fields, strict=True):
        use[field] = {
            "used": max(0, int(answer or 0)),
            "limit": ceiling,
            "resets_at": bounds[window][1] if window else None,
        }
    return use
