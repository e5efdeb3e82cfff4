from __future__ import annotations

from django.db.models import Prefetch
from django.utils import timezone
from django.utils.translation import gettext as _
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.protocol import ProtocolError, validate_facts
from apps.accounts.policy import PUBLIC, can, can_globally
from apps.audit import recorder
from apps.audit.middleware import client_address
from apps.core.viewsets import HangarViewSet
from apps.inventory import broker, commands, health, preflight, services
from apps.inventory.api.serializers import (
    ClusterSerializer,
    CordonSerializer,
    EnrollmentTokenCreatedSerializer,
    EnrollmentTokenSerializer,
    EnrollRequestSerializer,
    GPUSerializer,
    HealthPolicySerializer,
    NodeSerializer,
    OverrideSerializer,
    PreflightRunSerializer,
)
from apps.inventory.models import GPU, Cluster, EnrollmentToken, Node, NodeState
from apps.telemetry.history import metric_history

VIEW = {"list": "inventory.view", "retrieve": "inventory.view"}
CRUD = (mixins.ListModelMixin, mixins.RetrieveModelMixin)


class ClusterViewSet(
    *CRUD, mixins.CreateModelMixin, mixins.UpdateModelMixin, mixins.DestroyModelMixin, HangarViewSet
):
    queryset = Cluster.objects.all()
    serializer_class = ClusterSerializer
    policy = {
        **VIEW,
        "create": "inventory.change",
        "update": "inventory.change",
        "partial_update": "inventory.change",
        "destroy": "inventory.change",
    }

    def perform_create(self, serializer):
        if not can_globally(self.request.user, "inventory.change"):
            raise PermissionDenied(_("Only administrators of every cluster can create clusters."))
        super().perform_create(serializer)

    def perform_destroy(self, instance):
        if instance.nodes.exists():
            raise serializers.ValidationError(
                {"detail": _("The cluster still has nodes; move or retire them first.")}
            )
        super().perform_destroy(instance)


class NodeViewSet(*CRUD, mixins.UpdateModelMixin, HangarViewSet):
    """Nodes with their GPUs inline. Filters: cluster, state, label=key:value."""

    queryset = Node.objects.select_related("cluster").prefetch_related(
        Prefetch("gpus", queryset=GPU.objects.order_by("index"))
    )
    serializer_class = NodeSerializer
    policy = {
        **VIEW,
        "update": "inventory.change",
        "partial_update": "inventory.change",
        "drain": "inventory.change",
        "undrain": "inventory.change",
        "retire": "inventory.enroll",
        "revoke_credential": "inventory.enroll",
        "metrics": "telemetry.view",
        "ping": "inventory.view",
        "collect_facts": "inventory.change",
        "preflight": "inventory.change",
        "preflight_runs": "inventory.view",
        "preflight_override": "inventory.change",
    }

    def get_queryset(self):
        queryset = super().get_queryset()
        params = self.request.query_params
        if params.get("cluster"):
            queryset = queryset.filter(cluster_id=_int_param(params, "cluster"))
        if params.get("state"):
            if params["state"] not in NodeState.values:
                raise serializers.ValidationError(
                    {
                        "state": _("Choose one of %(choices)s.")
                        % {"choices": ", ".join(NodeState.values)}
                    }
                )
            queryset = queryset.filter(state=params["state"])
        for label in params.getlist("label"):
            key, sep, value = label.partition(":")
            if not sep:
                raise serializers.ValidationError({"label": _("Filter labels as key:value.")})
            queryset = queryset.filter(**{f"labels__{key}": value})
        return queryset

    def perform_update(self, serializer):
        target = serializer.validated_data.get("cluster")
        if target is not None and not can(self.request.user, "inventory.change", target):
            raise PermissionDenied(_("You cannot move nodes into that cluster."))
        super().perform_update(serializer)

    def _transition(self, state: str, reason: str):
        node = self.get_object()
        try:
            services.move_node(node, state, reason)
        except services.NodeRetired as exc:
            raise serializers.ValidationError({"detail": str(exc)}) from None
        return Response(NodeSerializer(node).data)

    @extend_schema(request=None, responses=NodeSerializer)
    @action(detail=True, methods=["post"])
    def drain(self, request, pk=None):
        """Stop placing new work on the node."""
        return self._transition(NodeState.DRAINING, f"drained by {request.user}")

    @extend_schema(request=None, responses=NodeSerializer)
    @action(detail=True, methods=["post"])
    def undrain(self, request, pk=None):
        node = self.get_object()
        if node.state != NodeState.DRAINING:
            raise serializers.ValidationError({"detail": _("The node is not draining.")})
        return self._transition(NodeState.OFFLINE, "undrained; waiting for the next heartbeat")

    @extend_schema(request=None, responses=NodeSerializer)
    @action(detail=True, methods=["post"])
    def retire(self, request, pk=None):
        """Retire the node for good: its credential stops working."""
        node = self.get_object()
        try:
            services.retire_node(node, f"retired by {request.user}")
        except services.NodeRetired as exc:
            raise serializers.ValidationError({"detail": str(exc)}) from None
        return Response(NodeSerializer(node).data)

    @extend_schema(request=None, responses=NodeSerializer)
    @action(detail=True, methods=["post"], url_path="revoke-credential")
    def revoke_credential(self, request, pk=None):
        """Refuse the node's agent from now on (re-enroll to get a new credential)."""
        node = self.get_object()
        services.revoke_node_credential(node)
        return Response(NodeSerializer(node).data)

    @extend_schema(request=None, responses={200: None})
    @action(detail=True, methods=["post"])
    def ping(self, request, pk=None):
        """Round trip through the node's command queue to its agent."""
        node = self.get_object()
        try:
            answer = commands.ask_node(node, "ping")
        except commands.NodeUnreachable as exc:
            return Response(
                {"detail": str(exc), "code": "node_unreachable"},
                status=status.HTTP_504_GATEWAY_TIMEOUT,
            )
        except commands.BadAnswer as exc:
            return Response(
                {"detail": str(exc), "code": "bad_agent_answer"}, status=status.HTTP_502_BAD_GATEWAY
            )
        return Response(answer)

    @extend_schema(request=None, responses=NodeSerializer)
    @action(detail=True, methods=["post"], url_path="collect-facts")
    def collect_facts(self, request, pk=None):
        """Ask the agent for fresh facts (driver, GPUs) and store them."""
        node = self.get_object()
        try:
            facts = validate_facts(commands.ask_node(node, "collect_facts", timeout=30))
        except commands.NodeUnreachable as exc:
            return Response(
                {"detail": str(exc), "code": "node_unreachable"},
                status=status.HTTP_504_GATEWAY_TIMEOUT,
            )
        except ProtocolError as exc:
            return Response(
                {
                    "detail": _("The agent sent invalid facts: %(error)s") % {"error": exc},
                    "code": "bad_agent_answer",
                },
                status=status.HTTP_502_BAD_GATEWAY,
            )
        before = recorder.snapshot(node)
        services.apply_facts(node, facts)
        recorder.describe(target=node, changes=recorder.diff(before, recorder.snapshot(node)))
        return Response(NodeSerializer(node).data)

    @extend_schema(request=None, responses=PreflightRunSerializer)
    @action(detail=True, methods=["post"])
    def preflight(self, request, pk=None):
        """Run the node's preflight checks now (up to a minute) and keep the run."""
        run = preflight.run_preflight(self.get_object(), request.user)
        code = status.HTTP_504_GATEWAY_TIMEOUT if run.status == "error" else status.HTTP_200_OK
        return Response(PreflightRunSerializer(run).data, status=code)

    @extend_schema(responses=PreflightRunSerializer(many=True))
    @action(detail=True, methods=["get"], url_path="preflight-runs")
    def preflight_runs(self, request, pk=None):
        """The node's preflight runs, newest first (the last 50)."""
        runs = self.get_object().preflight_runs.select_related("requested_by", "overridden_by")
        return Response(PreflightRunSerializer(runs[:50], many=True).data)

    @extend_schema(request=OverrideSerializer, responses=PreflightRunSerializer)
    @action(detail=True, methods=["post"], url_path="preflight-override")
    def preflight_override(self, request, pk=None):
        """Let work onto a node whose latest preflight failed; the reason is audited."""
        node = self.get_object()
        body = OverrideSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            run = preflight.override_preflight(node, request.user, body.validated_data["reason"])
        except preflight.PreflightNotOverridable:
            raise serializers.ValidationError(
                {
                    "detail": _(
                        "The node's latest preflight did not fail; there is nothing to override."
                    )
                }
            ) from None
        return Response(PreflightRunSerializer(run).data)

    @extend_schema(
        parameters=[
            OpenApiParameter("metric", required=True),
            OpenApiParameter("from"),
            OpenApiParameter("to"),
        ],
        responses={200: None},
    )
    @action(detail=True, methods=["get"])
    def metrics(self, request, pk=None):
        """Per-minute min/mean/max of one series, e.g. metric=gpu.0.temperature."""
        return Response(metric_history(self.get_object(), request.query_params))


class GPUViewSet(*CRUD, HangarViewSet):
    """GPUs. Filters: node, cluster."""

    queryset = GPU.objects.select_related("node")
    serializer_class = GPUSerializer
    policy = {**VIEW, "cordon": "inventory.change", "uncordon": "inventory.change"}

    @extend_schema(request=CordonSerializer, responses=GPUSerializer)
    @action(detail=True, methods=["post"])
    def cordon(self, request, pk=None):
        """Take this GPU out of placement (maintenance); its workers keep running."""
        gpu = self.get_object()
        body = CordonSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        health.cordon_gpu(gpu, body.validated_data["reason"] or f"cordoned by {request.user}")
        return Response(GPUSerializer(gpu).data)

    @extend_schema(request=None, responses=GPUSerializer)
    @action(detail=True, methods=["post"])
    def uncordon(self, request, pk=None):
        gpu = self.get_object()
        if not gpu.cordoned:
            raise serializers.ValidationError({"detail": _("The GPU is not cordoned.")})
        health.uncordon_gpu(gpu)
        return Response(GPUSerializer(gpu).data)

    def get_queryset(self):
        queryset = super().get_queryset()
        if self.request.query_params.get("node"):
            queryset = queryset.filter(node_id=_int_param(self.request.query_params, "node"))
        if self.request.query_params.get("cluster"):
            queryset = queryset.filter(
                node__cluster_id=_int_param(self.request.query_params, "cluster")
            )
        return queryset


class EnrollmentTokenViewSet(
    *CRUD, mixins.CreateModelMixin, mixins.DestroyModelMixin, HangarViewSet
):
    """One-time tokens to enroll a host's agent into a cluster."""

    queryset = EnrollmentToken.objects.select_related("cluster")
    serializer_class = EnrollmentTokenSerializer
    policy = {
        "list": "inventory.enroll",
        "retrieve": "inventory.enroll",
        "create": "inventory.enroll",
        "destroy": "inventory.enroll",
    }

    @extend_schema(responses={201: EnrollmentTokenCreatedSerializer})
    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        cluster = serializer.validated_data["cluster"]
        if not can(request.user, "inventory.enroll", cluster):
            raise PermissionDenied(_("You cannot enroll nodes into that cluster."))
        token, secret = services.create_enrollment_token(
            cluster,
            request.user,
            serializer.validated_data["hours"],
            serializer.validated_data.get("description", ""),
        )
        console = request.build_absolute_uri("/").rstrip("/")
        data = EnrollmentTokenCreatedSerializer(token).data | {
            "secret": secret,
            "command": services.enrollment_command(console, secret),
        }
        return Response(data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance):
        """Deleting an unused token withdraws it; used ones stay as a record."""
        if instance.used_at is not None:
            raise serializers.ValidationError(
                {"detail": _("This token was used; it stays on record.")}
            )
        super().perform_destroy(instance)


class EnrollAgentView(APIView):
    """An agent exchanges a one-time enrollment token for its node credential."""

    policy = {"post": PUBLIC}
    authentication_classes: list = []

    @extend_schema(request=EnrollRequestSerializer, responses={201: None})
    def post(self, request):
        body = EnrollRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            facts = (
                validate_facts(body.validated_data["facts"]) if body.validated_data["facts"] else {}
            )
        except ProtocolError as exc:
            raise serializers.ValidationError({"facts": str(exc)}) from None
        recorder.describe(action="inventory.enroll", actor_name=body.validated_data["hostname"])
        try:
            node, credential = services.enroll_node(
                body.validated_data["token"],
                body.validated_data["hostname"],
                facts,
                client_address(request),
            )
        except services.EnrollmentRefused as exc:
            recorder.describe(changes={"reason": str(exc)})
            return Response(
                {
                    "detail": f"The enrollment token is {exc}; ask an administrator for a new one.",
                    "code": "enrollment_refused",
                },
                status=status.HTTP_403_FORBIDDEN,
            )
        return Response(
            {
                "node_id": node.pk,
                "credential": credential,
                **broker.credential_fields(node.pk, credential),
                "protocol": 1,
                "enrolled_at": timezone.now().isoformat(),
            },
            status=status.HTTP_201_CREATED,
        )


def _int_param(params, name: str) -> int:
    try:
        return int(params[name])
    except ValueError:
        raise serializers.ValidationError({name: _("Give a numeric id.")}) from None


class HealthPolicyView(APIView):
    """The GPU health policy (docs/health.md): everyone who sees the inventory
    may read it; admins change it."""

    policy = {"get": "inventory.view", "put": "settings.manage", "patch": "settings.manage"}

    @extend_schema(responses=HealthPolicySerializer)
    def get(self, request):
        return Response(HealthPolicySerializer(health.current_policy()).data)

    @extend_schema(request=HealthPolicySerializer, responses=HealthPolicySerializer)
    def put(self, request):
        return self._change(request, partial=False)

    @extend_schema(request=HealthPolicySerializer, responses=HealthPolicySerializer)
    def patch(self, request):
        return self._change(request, partial=True)

    def _change(self, request, partial: bool):
        body = HealthPolicySerializer(health.current_policy(), data=request.data, partial=partial)
        body.is_valid(raise_exception=True)
        return Response(HealthPolicySerializer(body.save()).data)
