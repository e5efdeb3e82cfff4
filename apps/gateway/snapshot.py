"""What every gateway process serves from: routes, ready workers and keys, in Redis.

The gateway's hot path never queries the database. The console builds one JSON
snapshot of everything a request needs and stores it under `SNAPSHOT_KEY` with a
generation number, then publishes the generation on `changed_channel()`. Gateway
processes reload on the message (a revoked key stops working everywhere within
a round trip) and poll the generation as a backstop. Beat republishes every few
seconds, so a Redis that restarted empty is refilled.

Builds race (two commits at once): each takes its generation before it reads the
database, and a store only succeeds over an older generation (a Lua check), so
the newest reading always wins.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

import redis
from django.conf import settings
from django.db import transaction

from apps.deployments.models import DesiredState, Worker, WorkerState
from apps.gateway.models import ConsumerKey, Limit, Project, Route

log = logging.getLogger(__name__)

SNAPSHOT_KEY = "hangar:gateway:snapshot"
GENERATION_KEY = "hangar:gateway:generation"
# When the console last confirmed the snapshot (changed or not): gateways judge
# how stale their view is from this, not from when it last changed.
CHECKED_KEY = SNAPSHOT_KEY + ":checked-at"
# KEYS[1] snapshot; ARGV: generation, digest, json, now. Stores only a newer, different
# snapshot and always notes the check; returns {stored?, the generation now stored}.
_STORE_IF_NEWER = """
redis.call('SET', KEYS[1] .. ':checked-at', ARGV[4])
local current = redis.call('GET', KEYS[1] .. ':generation-stored')
if current and tonumber(current) >= tonumber(ARGV[1]) then return {0, tonumber(current)} end
if current and redis.call('GET', KEYS[1] .. ':digest') == ARGV[2] then
  return {0, tonumber(current)}
end
redis.call('SET', KEYS[1], ARGV[3])
redis.call('SET', KEYS[1] .. ':generation-stored', ARGV[1])
redis.call('SET', KEYS[1] .. ':digest', ARGV[2])
return {1, tonumber(ARGV[1])}
"""


def changed_channel() -> str:
    # Pub/sub is server-wide; consoles on other databases of the server stay out.
    return f"hangar:gateway:changed:{settings.AGENT_BROKER_NAMESPACE}"


def client() -> redis.Redis:
    return settings.REDIS.client(socket_connect_timeout=2, socket_timeout=5)


def upstream_host(node) -> str:
    """The address the gateway reaches a node's workers at."""
    host = node.worker_host
    if host and host not in ("0.0.0.0", "::"):  # noqa: S104 (comparing, not binding)
        return host
    if host and node.addresses:
        return node.addresses[0]
    return "127.0.0.1"


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def build() -> dict:
    """The whole snapshot, read from the database now."""
    routes = list(Route.objects.filter(enabled=True).prefetch_related("targets__deployment"))
    deployment_ids = {t.deployment_id for r in routes for t in r.targets.all()}
    workers = (
        Worker.objects.filter(
            deployment_id__in=deployment_ids,
            state=WorkerState.READY,
            desired_state=DesiredState.RUNNING,
            deployment__desired_state=DesiredState.RUNNING,
            port__isnull=False,  # an agent-picked port is known from the first report
        )
        .select_related("node")
        .order_by("pk")
    )
    deployments: dict[str, dict] = {}
    for target in (t for r in routes for t in r.targets.all()):
        deployments[str(target.deployment_id)] = {"name": target.deployment.name, "workers": []}
    for worker in workers:
        if worker.node.state not in ("online", "degraded"):
            continue
        deployments[str(worker.deployment_id)]["workers"].append(
            {
                "id": worker.pk,
                "url": _url(upstream_host(worker.node), worker.port),
                "secret": worker.engine_secret,
                "node": worker.node_id,
            }
        )
    projects = {
        str(p.pk): {"name": p.name, "weight": p.weight}
        for p in Project.objects.filter(is_active=True)
    }
    keys = {}
    for key in (
        ConsumerKey.objects.usable()
        .select_related("user", "service_account")
        .prefetch_related("routes")
    ):
        owner_active = key.user.is_active if key.user_id else key.service_account.is_active
        if not owner_active:
            continue
        if key.project_id is not None and str(key.project_id) not in projects:
            continue  # a deactivated project's keys stop with it
        keys[key.key_hash] = {
            "id": key.pk,
            "name": key.name,
            "prefix": key.prefix,
            "owner": key.owner_name,
            "routes": None if key.all_routes else sorted(r.name for r in key.routes.all()),
            "networks": key.source_networks,
            "expires": key.expires_at.timestamp(),
            "user": key.user_id,
            "service_account": key.service_account_id,
            "project": key.project_id,
        }
    return {
        "timezone": settings.TIME_ZONE,
        "projects": projects,
        "limits": [
            {
                "id": limit.pk,
                "scope": limit.scope,
                "subject": limit.key_id or limit.user_id or limit.project_id,
                "route": limit.route.name if limit.route_id else None,
                "values": limit.values(),
            }
            for limit in Limit.objects.select_related("route").order_by("pk")
            if limit.values()
        ],
        "routes": {
            route.name: {
                "targets": [
                    {"deployment": t.deployment_id, "weight": t.weight}
                    for t in route.targets.all()
                    if t.weight > 0
                ],
                "fallback": route.fallback.name if route.fallback_id and route.fallback else None,
            }
            for route in routes
        },
        "deployments": deployments,
        "keys": keys,
    }


def publish() -> int:
    """Build from the database and store it unless it is unchanged or a newer build won.

    Returns the generation stored afterwards: the one gateways should reach.
    """
    redis_client = client()
    generation = int(redis_client.incr(GENERATION_KEY))
    content = build()
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    snapshot = {"generation": generation, "built_at": time.time(), **content}
    stored = redis_client.eval(
        _STORE_IF_NEWER,
        1,
        SNAPSHOT_KEY,
        generation,
        digest,
        json.dumps(snapshot, separators=(",", ":")),
        time.time(),
    )
    if stored[0]:
        redis_client.publish(changed_channel(), generation)
    return int(stored[1])


def publish_on_commit() -> None:
    """Publish once the current transaction commits (at once outside one)."""

    def run() -> None:
        try:
            publish()
        except redis.RedisError as exc:
            # Beat republishes every few seconds; gateways keep their last snapshot.
            log.warning("gateway snapshot not published (Redis): %s", exc)

    transaction.on_commit(run)
