"""Pages: the dashboard with the live GPU grid, the node list and node detail."""

from __future__ import annotations

from django.db.models import Count, Q
from django.shortcuts import get_object_or_404, render

from apps.accounts.permissions import requires
from apps.accounts.policy import restrict
from apps.inventory.models import GPU, Cluster, Node, NodeState
from apps.telemetry import live


@requires("inventory.view")
def dashboard(request):
    clusters = restrict(Cluster.objects.all(), request.user, "inventory.view").annotate(
        **{f"nodes_{s}": Count("nodes", filter=Q(nodes__state=s)) for s in NodeState.values},
        gpu_count=Count("nodes__gpus"),
    )
    nodes = list(
        restrict(
            Node.objects.select_related("cluster").prefetch_related("gpus"),
            request.user,
            "inventory.view",
        )
    )
    return render(
        request,
        "inventory/dashboard.html",
        {
            "clusters": clusters,
            "nodes": nodes,
            "states": NodeState.values,
            "latest": live.latest_samples([n.pk for n in nodes]),
        },
    )


@requires("inventory.view")
def node_list(request):
    nodes = restrict(
        Node.objects.select_related("cluster").prefetch_related("gpus"),
        request.user,
        "inventory.view",
    )
    state = request.GET.get("state")
    if state in NodeState.values:
        nodes = nodes.filter(state=state)
    return render(
        request,
        "inventory/node_list.html",
        {"nodes": nodes, "states": NodeState.values, "state": state},
    )


@requires("inventory.view")
def node_detail(request, pk: int):
    node = get_object_or_404(
        restrict(Node.objects.select_related("cluster"), request.user, "inventory.view"), pk=pk
    )
    return render(
        request,
        "inventory/node_detail.html",
        {
            "node": node,
            "gpus": GPU.objects.filter(node=node).order_by("index"),
            "latest": live.latest_samples([node.pk]).get(node.pk),
        },
    )
