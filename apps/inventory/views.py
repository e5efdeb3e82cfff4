"""Pages: the dashboard with the live GPU grid, nodes (list, detail, actions) and
enrollment. Views stay thin: parse, authorise (@requires, then the object's own
check), call apps.inventory.services, render. AuditMiddleware records every POST;
the views and services describe the target and changes as the API does."""

from __future__ import annotations

import re

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count, Prefetch, Q
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _

from apps.accounts.permissions import requires
from apps.accounts.policy import can, restrict
from apps.alerts.models import Alert
from apps.audit import recorder
from apps.core.pages import visible_or_404
from apps.core.templatetags.console import state_label
from apps.deployments.models import Worker
from apps.inventory import health, preflight, services
from apps.inventory.api.serializers import EnrollmentTokenSerializer
from apps.inventory.models import GPU, Cluster, EnrollmentToken, Node, NodeState, PreflightRun

LABEL_FILTER = re.compile(r"^([A-Za-z0-9_.-]{1,64}):(.{0,200})$")
NODES_PER_PAGE = 200


def gpu_grid(nodes) -> list[dict]:
    """The live grid's tiles as compact rows for live.js: two queries, no model
    instances (a dashboard of 1,000 nodes has 8,000 tiles)."""
    rows = list(nodes.values_list("pk", "name", "hostname", "state", "simulated"))
    gpus: dict[int, list] = {}
    for node_id, index, name in (
        GPU.objects.filter(node__in=[r[0] for r in rows])
        .order_by("node_id", "index")
        .values_list("node_id", "index", "name")
    ):
        gpus.setdefault(node_id, []).append([index, name])
    return [
        {"id": pk, "name": name or hostname, "state": state, "sim": simulated, "gpus": gpus[pk]}
        for pk, name, hostname, state, simulated in rows
        if pk in gpus
    ]


def _gpus_in_order():
    return Prefetch("gpus", queryset=GPU.objects.order_by("index"))


def firing_alerts_by_cluster(user) -> dict[int, int]:
    """{cluster id: firing alerts} among the alerts `user` may see (one query)."""
    rows = (
        restrict(Alert.objects.filter(state=Alert.State.FIRING), user, "alerts.view")
        .values_list("cluster_id")
        .annotate(n=Count("id"))
        .order_by()
    )
    return dict(rows)


@requires("inventory.view")
def dashboard(request):
    clusters = list(
        restrict(Cluster.objects.all(), request.user, "inventory.view").annotate(
            node_count=Count("nodes", filter=~Q(nodes__state=NodeState.RETIRED), distinct=True),
            gpu_count=Count("nodes__gpus", filter=~Q(nodes__state=NodeState.RETIRED)),
            gpus_faulted=Count("nodes__gpus", filter=Q(nodes__gpus__state=GPU.State.FAULTED)),
            **{
                f"nodes_{s}": Count("nodes", filter=Q(nodes__state=s), distinct=True)
                for s in NodeState.values
            },
        )
    )
    firing = firing_alerts_by_cluster(request.user)
    for cluster in clusters:
        cluster.by_state = [(s, getattr(cluster, f"nodes_{s}")) for s in NodeState.values]
        cluster.alerts_firing = firing.get(cluster.pk, 0)
    nodes = restrict(Node.objects.all(), request.user, "inventory.view").exclude(
        state=NodeState.RETIRED
    )
    return render(
        request,
        "inventory/dashboard.html",
        {
            "clusters": clusters,
            "grid": gpu_grid(nodes.order_by("cluster__name", "hostname")),
            "subscribe": '{"action": "subscribe", "view": "grid"}',
        },
    )


@requires("inventory.view")
def node_list(request):
    nodes = restrict(
        Node.objects.select_related("cluster")
        .annotate(gpu_count=Count("gpus"))
        .order_by("cluster__name", "hostname"),
        request.user,
        "inventory.view",
    )
    clusters = restrict(Cluster.objects.all(), request.user, "inventory.view")
    params = request.GET
    cluster = params.get("cluster", "")
    if cluster.isdigit():
        nodes = nodes.filter(cluster_id=int(cluster))
    state = params.get("state", "")
    if state in NodeState.values:
        nodes = nodes.filter(state=state)
    label = params.get("label", "").strip()
    if label:
        match = LABEL_FILTER.match(label)
        if match:
            nodes = nodes.filter(**{f"labels__{match[1]}": match[2]})
        else:
            messages.error(request, _("Filter labels as key:value, e.g. rack:r1."))
    search = params.get("q", "").strip()[:100]
    if search:
        nodes = nodes.filter(Q(hostname__icontains=search) | Q(name__icontains=search))
    page = Paginator(nodes, NODES_PER_PAGE).get_page(params.get("page"))
    return render(
        request,
        "inventory/node_list.html",
        {
            "page": page,
            "nodes": page.object_list,
            "clusters": clusters,
            "states": NodeState.values,
            "filters": {"cluster": cluster, "state": state, "label": label, "q": search},
        },
    )


@requires("inventory.view")
def node_detail(request, pk: int):
    node = visible_or_404(
        Node.objects.select_related("cluster").prefetch_related(_gpus_in_order()),
        request.user,
        "inventory.view",
        pk,
    )
    gpus = list(node.gpus.all())
    for gpu in gpus:  # what the health policy said, in the page's language
        gpu.reasons_text = health.describe_reasons(gpu.health_reasons)
        gpu.unsupported = (gpu.health_reading.get("read") or {}).get("unsupported") or []
    return render(
        request,
        "inventory/node_detail.html",
        {
            "node": node,
            "grid": gpu_grid(Node.objects.filter(pk=node.pk)),
            "gpus": gpus,
            "gpu_indexes": [g.index for g in gpus],
            "can_change": can(request.user, "inventory.change", node),
            "can_enroll": can(request.user, "inventory.enroll", node),
            "can_history": can(request.user, "telemetry.view", node),
            "workers": _workers_on(request.user, node),
            "preflight_runs": list(node.preflight_runs.select_related("overridden_by")[:5]),
            "subscribe": f'{{"action": "subscribe", "node": {node.pk}}}',
        },
    )


def _workers_on(user, node) -> list:
    """The deployment workers placed on `node`, if the user may see deployments there."""
    if not can(user, "deployments.view", node):
        return []
    return list(
        Worker.objects.filter(node=node)
        .exclude(desired_state="stopped", state="stopped")
        .select_related("deployment", "model_version")
        .order_by("deployment__name", "slot")
    )


def _node_for_action(request, pk: int, action: str) -> Node:
    """The node, if visible (else 404) and the caller may `action` it (else 403)."""
    node = visible_or_404(
        Node.objects.select_related("cluster"), request.user, "inventory.view", pk
    )
    recorder.describe(target=node)
    if not can(request.user, action, node):
        raise PermissionDenied
    return node


def _refuse(request, node: Node, message: str, reason: str):
    recorder.describe(outcome=recorder.Outcome.FAILED, changes={"reason": reason})
    messages.error(request, message)
    return redirect("node-detail", node.pk)


@requires("inventory.change", methods=("POST",))
def node_drain(request, pk: int):
    node = _node_for_action(request, pk, "inventory.change")
    try:
        services.move_node(node, NodeState.DRAINING, f"drained by {request.user}")
    except services.NodeRetired:
        return _refuse(request, node, _("The node is retired."), "retired")
    messages.success(
        request, _("%(node)s is draining: no new work is placed on it.") % {"node": node}
    )
    return redirect("node-detail", node.pk)


@requires("inventory.change", methods=("POST",))
def node_undrain(request, pk: int):
    node = _node_for_action(request, pk, "inventory.change")
    if node.state != NodeState.DRAINING:
        return _refuse(request, node, _("The node is not draining."), "not draining")
    services.transition_node(
        node, NodeState.OFFLINE, "undrained; waiting for the next heartbeat", by_person=True
    )
    messages.success(
        request, _("%(node)s takes work again after its next heartbeat.") % {"node": node}
    )
    return redirect("node-detail", node.pk)


def _gpu_for_action(request, pk: int, index: int) -> GPU:
    node = _node_for_action(request, pk, "inventory.change")
    gpu = GPU.objects.filter(node=node, index=index).select_related("node").first()
    if gpu is None:
        raise Http404
    recorder.describe(target=gpu)
    return gpu


@requires("inventory.change", methods=("POST",))
def gpu_cordon(request, pk: int, index: int):
    gpu = _gpu_for_action(request, pk, index)
    reason = request.POST.get("reason", "").strip()[:255] or f"cordoned by {request.user}"
    health.cordon_gpu(gpu, reason)
    messages.success(request, _("%(gpu)s is cordoned: no new work is placed on it.") % {"gpu": gpu})
    return redirect("node-detail", gpu.node_id)


@requires("inventory.change", methods=("POST",))
def gpu_uncordon(request, pk: int, index: int):
    gpu = _gpu_for_action(request, pk, index)
    if not gpu.cordoned:
        return _refuse(request, gpu.node, _("The GPU is not cordoned."), "not cordoned")
    health.uncordon_gpu(gpu)
    messages.success(request, _("%(gpu)s takes work again.") % {"gpu": gpu})
    return redirect("node-detail", gpu.node_id)


@requires("inventory.change", methods=("POST",))
def node_preflight(request, pk: int):
    node = _node_for_action(request, pk, "inventory.change")
    run = preflight.run_preflight(node, request.user)
    if run.status == PreflightRun.Status.ERROR:
        messages.error(request, _("The preflight did not run: %(error)s") % {"error": run.error})
    else:
        messages.success(
            request, _("Preflight finished: %(status)s.") % {"status": state_label(run.status)}
        )
    return redirect("node-detail", node.pk)


@requires("inventory.change", methods=("POST",))
def node_preflight_override(request, pk: int):
    node = _node_for_action(request, pk, "inventory.change")
    reason = request.POST.get("reason", "").strip()[:255] or f"overridden by {request.user}"
    try:
        preflight.override_preflight(node, request.user, reason)
    except preflight.PreflightNotOverridable:
        return _refuse(
            request, node, _("The node's latest preflight did not fail."), "nothing to override"
        )
    messages.success(
        request, _("%(node)s takes work again despite its preflight.") % {"node": node}
    )
    return redirect("node-detail", node.pk)


@requires("inventory.enroll", methods=("POST",))
def node_retire(request, pk: int):
    node = _node_for_action(request, pk, "inventory.enroll")
    try:
        services.retire_node(node, f"retired by {request.user}")
    except services.NodeRetired as exc:
        return _refuse(request, node, str(exc), "retired")
    messages.success(
        request, _("%(node)s is retired; its credential no longer works.") % {"node": node}
    )
    return redirect("node-detail", node.pk)


@requires("inventory.enroll", methods=("POST",))
def node_revoke_credential(request, pk: int):
    node = _node_for_action(request, pk, "inventory.enroll")
    services.revoke_node_credential(node)
    messages.success(
        request,
        _("The credential of %(node)s is revoked; enroll the host again to give it a new one.")
        % {"node": node},
    )
    return redirect("node-detail", node.pk)


def enrollment_command(request, secret: str) -> str:
    return services.enrollment_command(request.build_absolute_uri("/"), secret)


@requires("inventory.enroll", methods=("GET", "HEAD", "POST"))
def enrollment(request):
    clusters = [
        c
        for c in restrict(Cluster.objects.all(), request.user, "inventory.view")
        if can(request.user, "inventory.enroll", c)
    ]
    context = {"clusters": clusters, "form": {"hours": 24}, "errors": {}}
    status = 200
    if request.method == "POST":
        form = EnrollmentTokenSerializer(data=request.POST)
        context["form"] = request.POST
        if form.is_valid():
            cluster = form.validated_data["cluster"]
            recorder.describe(target=cluster)
            if not can(request.user, "inventory.enroll", cluster):
                raise PermissionDenied
            token, secret = services.create_enrollment_token(
                cluster,
                request.user,
                form.validated_data["hours"],
                form.validated_data.get("description", ""),
            )
            context.update(created=token, command=enrollment_command(request, secret))
            context["form"] = {"hours": 24}
        else:
            context["errors"] = form.errors
            status = 400
    tokens = list(
        restrict(
            EnrollmentToken.objects.select_related("cluster", "created_by", "used_by_node"),
            request.user,
            "inventory.enroll",
        )[:50]
    )
    for token in tokens:
        token.state = EnrollmentTokenSerializer().get_state(token)
    context["tokens"] = tokens
    return render(request, "inventory/enrollment.html", context, status=status)
