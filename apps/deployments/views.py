"""Pages: deployments (create with the free GPUs shown, scale, stop, start,
rolling update, rollback) and their workers, refreshed while the page is open.

Validation is the API's serializers; every operation is the service the API
calls (apps.deployments.services), which describes the request's audit event."""

from __future__ import annotations

import shlex
from itertools import groupby

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Prefetch, Q
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _

from apps.accounts.permissions import requires
from apps.accounts.policy import can, restrict
from apps.audit import recorder
from apps.core.i18n import in_english
from apps.core.pages import visible_or_404
from apps.deployments import services
from apps.deployments.api.serializers import (
    DeploymentSerializer,
    RolloutSerializer,
    ScaleSerializer,
)
from apps.deployments.engines import ENGINES
from apps.deployments.models import Deployment, Worker, WorkerState
from apps.deployments.placement import PlacementError, gpus_in_use
from apps.gateway import traffic
from apps.gateway.services import routes_of_deployment
from apps.inventory.models import GPU, Cluster, Node, NodeState
from apps.registry.models import ModelVersion, VersionState

OPERATE = "deployments.operate"


def _run(request, operation, *args) -> bool:
    """Run a service; a refusal becomes a message and a failed audit outcome."""
    try:
        operation(*args)
    except (services.DeploymentError, PlacementError) as exc:
        recorder.describe(outcome=recorder.Outcome.FAILED, changes={"reason": in_english(exc)})
        messages.error(request, str(exc))
        return False
    return True


def free_gpus(user) -> list[dict]:
    """Per online node the user may deploy on: its GPUs and which are taken."""
    held = gpus_in_use()
    nodes = (
        restrict(Node.objects.select_related("cluster"), user, "deployments.manage")
        .filter(state__in=[NodeState.ONLINE, NodeState.DEGRADED])
        .prefetch_related(Prefetch("gpus", queryset=GPU.objects.order_by("index")))
    )
    return [
        {
            "node": node,
            "gpus": [
                (gpu, gpu.index in held.get(node.pk, set()) or gpu.state != GPU.State.OK)
                for gpu in node.gpus.all()
            ],
        }
        for node in nodes
    ]


def _placement(post) -> dict:
    per_replica = post.get("gpus_per_replica") or "1"
    per_replica = int(per_replica) if per_replica.isdigit() else per_replica
    if post.get("placement_mode") != "pinned":
        try:
            min_free = float(post.get("min_free_gib") or 0)
        except ValueError:
            min_free = -1
        return {"mode": "auto", "gpus_per_replica": per_replica, "min_free_gib": min_free}
    # Ticked GPUs, node by node, cut into replicas of gpus_per_replica each.
    picked = GPU.objects.filter(pk__in=[p for p in post.getlist("pin") if p.isdigit()])
    targets = []
    size = per_replica if isinstance(per_replica, int) and per_replica > 0 else 1
    for node_id, gpus in groupby(
        picked.order_by("node_id", "index").values_list("node_id", "index"), key=lambda r: r[0]
    ):
        indexes = [index for _node, index in gpus]
        targets += [
            {"node": node_id, "gpus": indexes[i : i + size]}
            for i in range(0, len(indexes) - size + 1, size)
        ]
    return {"mode": "pinned", "targets": targets}


def _deployments_page(request, context: dict | None = None, status: int = 200):
    context = context or {}
    deployments = restrict(
        Deployment.objects.select_related("cluster", "model_version__model"),
        request.user,
        "deployments.view",
    ).annotate(
        workers_ready=Count(
            "workers", filter=Q(workers__state=WorkerState.READY, workers__desired_state="running")
        ),
        workers_wanted=Count("workers", filter=Q(workers__desired_state="running")),
    )
    can_create = can(request.user, "deployments.manage")
    context.update(deployments=deployments, can_create=can_create)
    if can_create:
        context.update(
            clusters=[
                c
                for c in restrict(Cluster.objects.all(), request.user, "inventory.view")
                if can(request.user, "deployments.manage", c)
            ],
            versions=ModelVersion.objects.filter(state=VersionState.READY).select_related("model"),
            engines=sorted(ENGINES),
            free=free_gpus(request.user),
        )
    context.setdefault(
        "form",
        {"replicas": 1, "port": "", "gpus_per_replica": 1, "engine": _likely_engine(request.user)},
    )
    context.setdefault("errors", {})
    return render(request, "deployments/list.html", context, status=status)


def _likely_engine(user) -> str:
    """The engine the form starts on: `generic` (first by name) needs a command the
    form has no field for, so never that; the reference engine where every node the
    user sees only simulates its GPUs (a laptop, a first `make run`), else vLLM."""
    nodes = restrict(Node.objects.all(), user, "inventory.view")
    if nodes.exists() and not nodes.filter(simulated=False).exists():
        return "reference"
    return "vllm"


@requires("deployments.view")
def deployment_list(request):
    return _deployments_page(request)


@requires("deployments.manage", methods=("POST",))
def deployment_create(request):
    post = request.POST
    try:
        engine_args = shlex.split(post.get("engine_args", ""))
    except ValueError as exc:
        errors = {"engine_args": [str(exc)]}
        return _deployments_page(request, {"form": post, "errors": errors}, status=400)
    data = {
        "name": post.get("name", ""),
        "cluster": post.get("cluster"),
        "model_version": post.get("model_version"),
        "engine": post.get("engine", ""),
        "engine_args": engine_args,
        "replicas": post.get("replicas") or 1,
        "port": post.get("port") or None,  # empty: the agent picks each worker's port
        "placement": _placement(post),
    }
    if post.get("health_path"):
        data["health_path"] = post["health_path"]
    form = DeploymentSerializer(data=data)
    if not form.is_valid():
        return _deployments_page(request, {"form": post, "errors": form.errors}, status=400)
    cluster = form.validated_data["cluster"]
    recorder.describe(target=cluster)
    if not can(request.user, "deployments.manage", cluster):
        raise PermissionDenied
    try:
        deployment = services.create_deployment(request.user, **form.validated_data)
    except (services.DeploymentError, PlacementError) as exc:
        recorder.describe(outcome=recorder.Outcome.FAILED, changes={"reason": in_english(exc)})
        errors = {"non_field_errors": [str(exc)]}
        return _deployments_page(request, {"form": post, "errors": errors}, status=400)
    messages.success(request, _("Deployment %(name)s is starting.") % {"name": deployment.name})
    return redirect("deployment-detail", deployment.pk)


@requires("deployments.view")
def deployment_detail(request, pk: int):
    deployment = visible_or_404(
        Deployment.objects.select_related("cluster", "model_version__model", "previous_version"),
        request.user,
        "deployments.view",
        pk,
    )
    workers = deployment.workers.select_related("node", "model_version").order_by(
        "slot", "-created_at"
    )
    context = {
        "deployment": deployment,
        "workers": workers,
        "can_operate": can(request.user, OPERATE, deployment),
        "versions": ModelVersion.objects.filter(
            model=deployment.model_version.model, state=VersionState.READY
        ).exclude(pk=deployment.model_version_id),
        "settling": deployment.rollout_state == "rolling"
        or any(w.state not in ("ready", "stopped", "failed") for w in workers),
        "page_labels": _page_labels(),
        "traffic": _traffic(deployment.pk),
        "route_targets": routes_of_deployment(deployment, request.user),
    }
    return render(request, "deployments/detail.html", context)


def _traffic(deployment_id: int) -> dict | None:
    """The gateways' latest window for the Requests panel (live updates follow)."""
    numbers = traffic.deployment_numbers(deployment_id)
    if numbers is not None:
        numbers["http_5xx_percent"] = numbers["http_5xx_rate"] * 100
    return numbers


def _page_labels() -> dict:
    """The strings deployment.js writes into the page, in the page's language."""
    return {
        "loading": _("Loading…"),
        "current": _("running"),
        "stopped": _("stopped on request"),
        "signal": _("signal %(n)s"),
        "code": _("exit code %(n)s"),
        "view_log": _("View log"),
        "run_log": _("Log of run %(n)s"),
        "run": _("run %(n)s"),
        "no_runs": _("No runs yet."),
        "failed": _("Could not read from the node: %(detail)s"),
    }


def _deployment_for(request, pk: int) -> Deployment:
    deployment = visible_or_404(Deployment.objects.all(), request.user, "deployments.view", pk)
    recorder.describe(target=deployment)
    if not can(request.user, OPERATE, deployment):
        raise PermissionDenied
    return deployment


@requires(OPERATE, methods=("POST",))
def deployment_start(request, pk: int):
    deployment = _deployment_for(request, pk)
    if _run(request, services.start_deployment, deployment):
        messages.success(request, _("Starting %(name)s.") % {"name": deployment.name})
    return redirect("deployment-detail", deployment.pk)


@requires(OPERATE, methods=("POST",))
def deployment_stop(request, pk: int):
    deployment = _deployment_for(request, pk)
    if _run(request, services.stop_deployment, deployment):
        messages.success(request, _("Stopping %(name)s.") % {"name": deployment.name})
    return redirect("deployment-detail", deployment.pk)


@requires(OPERATE, methods=("POST",))
def deployment_scale(request, pk: int):
    deployment = _deployment_for(request, pk)
    body = ScaleSerializer(data=request.POST)
    if not body.is_valid():
        recorder.describe(outcome=recorder.Outcome.FAILED)
        messages.error(request, _("Give a number of replicas from 1 to 64."))
    elif _run(request, services.scale_deployment, deployment, body.validated_data["replicas"]):
        messages.success(
            request,
            _("Scaling %(name)s to %(n)d replicas.")
            % {"name": deployment.name, "n": body.validated_data["replicas"]},
        )
    return redirect("deployment-detail", deployment.pk)


@requires(OPERATE, methods=("POST",))
def deployment_rollout(request, pk: int):
    deployment = _deployment_for(request, pk)
    body = RolloutSerializer(data=request.POST)
    if not body.is_valid():
        recorder.describe(outcome=recorder.Outcome.FAILED)
        messages.error(request, _("Choose a ready version of the same model."))
    elif _run(request, services.roll_out, deployment, body.validated_data["model_version"]):
        messages.success(
            request,
            _("Rolling %(name)s to %(version)s, one replica at a time.")
            % {"name": deployment.name, "version": body.validated_data["model_version"]},
        )
    return redirect("deployment-detail", deployment.pk)


@requires(OPERATE, methods=("POST",))
def deployment_rollback(request, pk: int):
    deployment = _deployment_for(request, pk)
    if _run(request, services.roll_back, deployment):
        messages.success(request, _("Rolling %(name)s back.") % {"name": deployment.name})
    return redirect("deployment-detail", deployment.pk)


@requires(OPERATE, methods=("POST",))
def worker_restart(request, pk: int):
    worker = visible_or_404(
        Worker.objects.select_related("deployment"), request.user, "deployments.view", pk
    )
    recorder.describe(target=worker)
    if not can(request.user, OPERATE, worker):
        raise PermissionDenied
    if _run(request, services.restart_worker, worker):
        messages.success(request, _("Restarting replica %(slot)d.") % {"slot": worker.slot})
    return redirect("deployment-detail", worker.deployment_id)
