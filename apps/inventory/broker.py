"""Node broker identities: a node's agent reaches its own queue and results, nothing else.

GPU nodes run untrusted code (researchers' jobs, engines with remote-code bugs), so
a node's credential must not open the console's Redis. Each node gets a Redis ACL
user, `hangar-node-<namespace>-<id>`, limited to keys and pub/sub channels under its
own prefix, `hangar-node:<namespace>:<id>:`. The agent's Celery app puts every key
it uses under that prefix (kombu's and the result backend's `global_keyprefix`),
and the console publishes into it with a connection that carries the same prefix.

The ACL user's password is the node's credential. Redis keeps only its SHA-256
(`#<hex>`), which is exactly what `Node.credential_hash` holds, so the console can
recreate every identity after a Redis restart (the embedded Redis keeps nothing)
without ever storing the secret. `sync_identities` (beat, every few seconds)
does that and removes the identities of revoked, retired and deleted nodes.

The namespace keeps consoles that share one Redis server on different databases
apart: ACL users and pub/sub channels are server-wide, not per database.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import quote, urlsplit, urlunsplit

import redis
from django.conf import settings

from apps.inventory.models import Node, NodeState

log = logging.getLogger(__name__)

USER_PREFIX = "hangar-node-"

# What kombu's Redis transport and Celery's Redis result backend send for a worker
# that consumes one queue with late acks and stores results (found with ACL LOG
# under a deny-all user). Everything else is refused: KEYS, SCAN, FLUSHALL,
# CONFIG, MONITOR, CLIENT KILL/LIST, DEBUG, PUBSUB CHANNELS, ACL, INFO, ...
ALLOWED_COMMANDS = (
    # connection
    "auth",
    "hello",
    "ping",
    "select",
    "quit",
    "echo",
    "client|setname",
    "client|getname",
    "client|id",
    # transactions (kombu's QoS and redis-py's lock)
    "multi",
    "exec",
    "discard",
    "watch",
    "unwatch",
    # the queue and its unacked bookkeeping
    "brpop",
    "lpush",
    "rpush",
    "lpop",
    "rpop",
    "llen",
    "lrange",
    "lrem",
    "hset",
    "hget",
    "hdel",
    "hlen",
    "zadd",
    "zrem",
    "zrange",
    "zrangebyscore",
    "zrevrangebyscore",
    "sadd",
    "srem",
    "smembers",
    "sismember",
    # results and locks
    "get",
    "mget",
    "set",
    "setex",
    "psetex",
    "del",
    "exists",
    "expire",
    "pexpire",
    "ttl",
    "pttl",
    "evalsha",
    "script|load",
    "script|exists",
    # result notifications (channels are limited to the prefix like keys)
    "publish",
    "subscribe",
    "unsubscribe",
)


class BrokerIdentityError(Exception):
    """The console could not create or remove a node's broker identity."""


def namespace() -> str:
    return settings.AGENT_BROKER_NAMESPACE


def username(node_id: int) -> str:
    return f"{USER_PREFIX}{namespace()}-{node_id}"


def key_prefix(node_id: int) -> str:
    return f"hangar-node:{namespace()}:{node_id}:"


def node_queue(node_id: int) -> str:
    """The queue name as the agent sees it (under its key prefix)."""
    return f"node.{node_id}"


def acl_rules(node_id: int, credential_hash: str) -> list[str]:
    prefix = key_prefix(node_id)
    return [
        "reset",
        "resetchannels",  # Redis 6.2's reset leaves every channel open
        "on",
        f"#{credential_hash}",
        f"~{prefix}*",
        f"&{prefix}*",
        "-@all",
        *(f"+{command}" for command in ALLOWED_COMMANDS),
    ]


# Commands this Redis server's ACL doesn't know (QUIT on 6.2, CLIENT SETINFO before
# 7.2) are left out of the rules; found once per process.
_unknown_to_server: set[str] = set()
_UNKNOWN = re.compile(r"modifier '\+([^']+)': Unknown command")


def set_user(client: redis.Redis, node_id: int, credential_hash: str) -> None:
    for _attempt in range(len(ALLOWED_COMMANDS)):
        rules = [r for r in acl_rules(node_id, credential_hash) if r[1:] not in _unknown_to_server]
        try:
            client.execute_command("ACL", "SETUSER", username(node_id), *rules)
            return
        except redis.ResponseError as exc:
            unknown = _UNKNOWN.search(str(exc))
            if unknown is None or unknown.group(1) not in ALLOWED_COMMANDS:
                raise
            _unknown_to_server.add(unknown.group(1))


def admin_client() -> redis.Redis:
    """The console's own connection (its Redis user must be allowed ACL SETUSER/DELUSER)."""
    return settings.REDIS.client(socket_connect_timeout=2, socket_timeout=5)


def agent_broker_url(node_id: int, credential: str) -> str:
    """The broker URL a node's agent gets: the agents' address, its own user and secret.

    Any user or password in HANGAR_AGENT_BROKER_URL is dropped: it names where
    agents reach Redis, never who they are.
    """
    parts = urlsplit(settings.AGENT_BROKER_URL)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(username(node_id), safe='')}:{quote(credential, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path or "/0", parts.query, ""))


def credential_fields(node_id: int, credential: str) -> dict[str, str]:
    """What credential.json needs to reach the broker as this node."""
    return {
        "queue": node_queue(node_id),
        "broker_url": agent_broker_url(node_id, credential),
        "broker_key_prefix": key_prefix(node_id),
    }


def ensure_identity(node, client: redis.Redis | None = None) -> None:
    """Create or refresh the node's ACL user (idempotent)."""
    client = client or admin_client()
    try:
        set_user(client, node.pk, node.credential_hash)
    except redis.RedisError as exc:
        raise BrokerIdentityError(
            f"cannot create the broker identity of node {node.pk}: {exc}"
        ) from exc


def remove_identity(node_id: int, client: redis.Redis | None = None) -> None:
    """Delete the node's ACL user and close its connections at once."""
    client = client or admin_client()
    name = username(node_id)
    try:
        client.execute_command("ACL", "DELUSER", name)
        # DELUSER closes the user's connections on Redis 7; older servers keep them.
        client.execute_command("CLIENT", "KILL", "USER", name)
    except redis.ResponseError as exc:
        if "No such user" not in str(exc):
            raise BrokerIdentityError(f"cannot remove {name}: {exc}") from exc
    except redis.RedisError as exc:
        raise BrokerIdentityError(f"cannot remove {name}: {exc}") from exc


def existing_identities(client: redis.Redis) -> set[int]:
    prefix = f"{USER_PREFIX}{namespace()}-"
    found = set()
    for raw in client.execute_command("ACL", "USERS"):
        name = raw.decode() if isinstance(raw, bytes) else raw
        if name.startswith(prefix) and name[len(prefix) :].isdigit():
            found.add(int(name[len(prefix) :]))
    return found


def sync_identities() -> dict[str, int]:
    """Make Redis's node users match the nodes that may connect; returns what changed."""
    client = admin_client()
    wanted = {
        pk: credential_hash
        for pk, credential_hash in Node.objects.filter(credential_revoked_at__isnull=True)
        .exclude(state=NodeState.RETIRED)
        .exclude(credential_hash="")
        .values_list("pk", "credential_hash")
    }
    present = existing_identities(client)
    created = 0
    for pk in wanted.keys() - present:
        set_user(client, pk, wanted[pk])
        created += 1
    removed = 0
    for pk in present - wanted.keys():
        remove_identity(pk, client)
        removed += 1
    if created or removed:
        log.info("broker identities: %d created, %d removed", created, removed)
    return {"created": created, "removed": removed}
