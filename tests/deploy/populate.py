"""Fill a console's database with a bit of everything: `python populate.py`.

Run as a script, with the working directory and PYTHONPATH at the Hangar tree
whose code should write the rows: the backup test runs it with this tree, the
upgrade test with the previous release's (tests/deploy/test_upgrade.py). It uses
only services and models that release already had, and ends by archiving the
oldest audit events so backups and upgrades carry archive files too. Prints the
row counts it left, as JSON (`--counts-only`: only that).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
sys.path.insert(0, os.getcwd())

import django

django.setup()

from django.apps import apps  # noqa: E402

from apps.accounts.models import RoleBinding  # noqa: E402
from apps.accounts.tokens import create_api_token  # noqa: E402
from apps.audit import recorder  # noqa: E402
from apps.audit.archive import archive_old_events  # noqa: E402
from apps.deployments.models import Deployment, Worker, WorkerState  # noqa: E402
from apps.gateway.keys import create_consumer_key  # noqa: E402
from apps.gateway.models import Route, RouteTarget, ServiceAccount  # noqa: E402
from apps.inventory.models import Cluster, Node, NodeState  # noqa: E402
from apps.inventory.services import create_enrollment_token, enroll_node  # noqa: E402
from apps.registry.models import Model, ModelVersion  # noqa: E402


def populate() -> None:
    user_model = apps.get_model("auth", "User")
    admin = user_model.objects.create_superuser("root", "root@example.org", "x" * 16)
    operator = user_model.objects.create_user("olga", "olga@example.org", "y" * 16)
    cluster = Cluster.objects.create(name="campus-a")
    RoleBinding.objects.create(user=operator, role="operator", cluster=cluster)
    create_api_token(admin, "automation", 30)
    nodes = []
    for index in range(3):
        _token, secret = create_enrollment_token(cluster, admin)
        node, _credential = enroll_node(secret, f"gpu-{index}", {}, "192.0.2.10")
        nodes.append(node)
    Node.objects.filter(pk=nodes[0].pk).update(state=NodeState.ONLINE, worker_host="127.0.0.1")
    model = Model.objects.create(name="qwen")
    version = ModelVersion.objects.create(
        model=model, label="v1", path="/srv/models/qwen/v1", format="gguf", state="ready"
    )
    deployment = Deployment.objects.create(
        name="qwen-chat", cluster=cluster, model_version=version, engine="reference", port=9000
    )
    Worker.objects.create(
        deployment=deployment, node=nodes[0], model_version=version, slot=0, port=9000,
        state=WorkerState.READY, engine_secret="s" * 32,
    )  # fmt: skip
    route = Route.objects.create(name="chat", description="campus chat")
    RouteTarget.objects.create(route=route, deployment=deployment, weight=100)
    ServiceAccount.objects.create(name="moodle")
    create_consumer_key(name="course", days=30, user=operator, routes=[route])
    for number in range(25):
        recorder.record("test.populate", changes={"number": number}, source_address="192.0.2.1")
    # Everything so far goes to archive files; the archive files and the events
    # after them must still form one chain after a backup or an upgrade.
    archive_old_events(hot_days=0, chunk_size=10)
    for number in range(25, 40):
        recorder.record("test.populate", changes={"number": number}, source_address="192.0.2.1")


def counts() -> dict[str, int]:
    return {
        model._meta.label: model.objects.count()
        for model in apps.get_models()
        if model._meta.app_label in {"auth", "accounts", "audit", "inventory", "registry",
                                     "deployments", "gateway"}
    }  # fmt: skip


if __name__ == "__main__":
    if "--counts-only" not in sys.argv:
        populate()
    print(json.dumps(counts()))
