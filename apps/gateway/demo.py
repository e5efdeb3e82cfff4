"""The demo of a first `make run`: the whole loop in one go, removable in one action.

On the first start of a fresh data directory (`manage.py serve`, unless
HANGAR_DEMO=false), once the local agent's node is online, this registers the
model version shipped in deploy/demo-models/ (served by the reference engine),
deploys it on the local node, routes the gateway's model `demo` to it and makes
a consumer key for the first administrator. Everything it makes is named
`demo` (model `demo`, version `demo`, deployment `demo`, route `demo`, key
`demo`) and says so in its description, so it reads as the demo wherever it
shows. What it made is remembered in `<data dir>/demo.json` (0600: it holds the
demo key, to print the snippets again on later starts while the demo exists),
which also records that the first start happened, so a declined or removed demo
is never offered again.

It lives in the gateway app because it touches registry, deployments and the
gateway: the one app that may import all three (docs/architecture.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from apps.audit import recorder
from apps.core.i18n import lazy_message
from apps.deployments.models import Deployment, DesiredState, Worker, WorkerState
from apps.deployments.services import create_deployment, stop_deployment
from apps.gateway.keys import create_consumer_key, revoke_consumer_key
from apps.gateway.models import ConsumerKey, Route, RouteTarget
from apps.gateway.services import delete_route
from apps.inventory.models import Node, NodeState
from apps.registry.models import Model, ModelVersion, Task, VersionState
from apps.registry.services import hash_version

NAME = "demo"
VERSION_DIR = Path(settings.DEMO_MODEL_ROOT) / "reference" / "v1"
DESCRIPTION = "Demo made by the first `make run`; remove it with \u201cRemove the demo\u201d."
KEY_DAYS = 30
# Slow enough that a stream is visibly a stream (20 tokens/s), as a real model's is.
ENGINE_ARGS = ["--token-delay", "0.05"]


class DemoError(Exception):
    """The demo cannot be made or removed; the message says why."""


def state_path() -> Path:
    return Path(settings.DATA_DIR) / "demo.json"


def read_state() -> dict | None:
    try:
        return json.loads(state_path().read_text())
    except (OSError, ValueError):
        return None


def write_state(state: dict) -> None:
    path = state_path()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f, indent=2)


def is_installed() -> bool:
    state = read_state()
    return bool(state and state.get("installed_at") and not state.get("removed_at"))


def decide_on_first_start(first_start: bool) -> bool:
    """Whether this start makes the demo; remembers the first start either way."""
    if read_state() is not None:
        return False
    if not first_start:
        write_state({"offered": False, "reason": "the data directory was in use before"})
        return False
    if not settings.DEMO:
        write_state({"offered": True, "declined": True, "at": timezone.now().isoformat()})
        return False
    write_state({"offered": True, "at": timezone.now().isoformat()})
    return True


def local_node(state_dir: Path) -> Node | None:
    credential = json.loads((state_dir / "credential.json").read_text())
    return Node.objects.filter(pk=credential["node_id"]).select_related("cluster").first()


def node_is_online(node_id: int) -> bool:
    return Node.objects.filter(pk=node_id, state=NodeState.ONLINE).exists()


def install(node: Node) -> dict:
    """Make the demo on `node` (online); returns the state written, with the key."""
    admin = get_user_model().objects.filter(username="admin").first()
    model, _created = Model.objects.get_or_create(
        name=NAME,
        defaults={
            "task": Task.CHAT,
            "family": "Hangar reference engine",
            "description": DESCRIPTION,
        },
    )
    version, _created = ModelVersion.objects.get_or_create(
        model=model, label=NAME, defaults={"path": str(VERSION_DIR), "format": "other"}
    )
    if version.state == VersionState.DRAFT:
        version = hash_version(version.pk)  # two small files: no need for the worker's queue
    with transaction.atomic():
        deployment = create_deployment(
            admin,
            name=NAME,
            cluster=node.cluster,
            model_version=version,
            engine="reference",
            engine_args=ENGINE_ARGS,
            replicas=1,
            placement={"mode": "pinned", "targets": [{"node": node.pk, "gpus": []}]},
            port=None,  # the local agent picks a free one (agents/workers/ports.py)
        )
        route = Route.objects.create(name=NAME, description=DESCRIPTION, created_by=admin)
        RouteTarget.objects.create(route=route, deployment=deployment, weight=100)
        key, raw = create_consumer_key(
            name=NAME, days=KEY_DAYS, user=admin, routes=[route], created_by=admin
        )
    state = {
        **(read_state() or {}),
        "installed_at": timezone.now().isoformat(),
        "model": model.pk,
        "version": version.pk,
        "deployment": deployment.pk,
        "route": route.pk,
        "consumer_key": key.pk,
        "key": raw,
    }
    write_state(state)
    recorder.record(
        "demo.install",
        target=deployment,
        changes={"created": {k: state[k] for k in ("model", "version", "deployment", "route")}},
    )
    return state


def worker_ready(state: dict) -> bool:
    return Worker.objects.filter(
        deployment_id=state.get("deployment"), state=WorkerState.READY
    ).exists()


def objects() -> dict:
    """The demo's rows that still exist (for pages: what is the demo)."""
    state = read_state() or {}
    if not state.get("installed_at") or state.get("removed_at"):
        return {}
    return {
        "deployment": Deployment.objects.filter(pk=state.get("deployment")).first(),
        "route": Route.objects.filter(pk=state.get("route")).first(),
        "key": ConsumerKey.objects.filter(pk=state.get("consumer_key")).first(),
    }


@transaction.atomic
def remove() -> dict:
    """Stop the demo's deployment, delete its route, revoke its key.

    The deployment and its version stay, stopped, as every deployment does
    (deployments keep their history; their versions are protected); the route
    and key are gone at once, so the gateway stops serving `demo`."""
    state = read_state() or {}
    if not state.get("installed_at") or state.get("removed_at"):
        raise DemoError(lazy_message(_("There is no demo to remove.")))
    found = objects()
    removed = {}
    deployment = found.get("deployment")
    if deployment is not None and deployment.desired_state == DesiredState.RUNNING:
        stop_deployment(deployment)
        removed["deployment"] = "stopped"
    if found.get("route") is not None:
        delete_route(found["route"])
        removed["route"] = "deleted"
    if found.get("key") is not None:
        revoke_consumer_key(found["key"])
        removed["key"] = "revoked"
    state.pop("key", None)
    state["removed_at"] = timezone.now().isoformat()
    write_state(state)
    recorder.describe(action="demo.remove", target=deployment, changes={"removed": removed})
    return removed


def snippets(state: dict, gateway_url: str) -> str:
    """What `make run` prints: a curl and a Python openai call that work as they are."""
    key = state["key"]
    body = '{"model": "demo", "stream": true, "messages": [{"role": "user", "content": "Hello"}]}'
    return (
        f"The demo is ready: model `demo` at {gateway_url} (reference engine, stand-in text).\n"
        f"  curl -N {gateway_url}/chat/completions \\\n"
        f'    -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\\n'
        f"    -d '{body}'\n"
        "  python - <<'PY'\n"
        "  from openai import OpenAI\n"
        f'  client = OpenAI(base_url="{gateway_url}", api_key="{key}")\n'
        '  stream = client.chat.completions.create(model="demo", stream=True,\n'
        '      messages=[{"role": "user", "content": "Hello"}])\n'
        "  for chunk in stream:\n"
        '      print(chunk.choices[0].delta.content or "", end="", flush=True)\n'
        "  PY\n"
        "Its latency shows on the deployment page (Deployments -> demo). Remove the demo "
        "with the button on the dashboard, or POST /api/v1/demo/remove/ as an administrator."
    )
