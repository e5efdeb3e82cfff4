from __future__ import annotations

from django.http import HttpResponse
from django.utils.translation import gettext as _
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response

from apps.accounts.policy import can
from apps.core.viewsets import HangarViewSet
from apps.deployments import services
from apps.deployments.api.serializers import (
    DeploymentSerializer,
    RolloutSerializer,
    ScaleSerializer,
    WorkerSerializer,
)
from apps.deployments.models import Deployment, Worker
from apps.deployments.placement import PlacementError
from apps.inventory import commands

VIEW = {"list": "deployments.view", "retrieve": "deployments.view"}
OPERATE = "deployments.operate"


def _run(operation, *args):
    try:
        return operation(*args)
    except (services.DeploymentError, PlacementError) as exc:
        raise serializers.ValidationError({"detail": str(exc)}) from None


class DeploymentViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, HangarViewSet
):
    """Deployments of a model version with an engine onto GPUs of one cluster."""

    queryset = Deployment.objects.select_related("cluster", "model_version").prefetch_related(
        "workers__node", "workers__model_version"
    )
    serializer_class = DeploymentSerializer
    policy = {
        **VIEW,
        "create": "deployments.manage",
        "start": OPERATE,
        "stop": OPERATE,
        "scale": OPERATE,
        "rollout": OPERATE,
        "rollback": OPERATE,
    }

    def perform_create(self, serializer):
        data = serializer.validated_data
        if not can(self.request.user, "deployments.manage", data["cluster"]):
            raise PermissionDenied(_("You cannot deploy into that cluster."))
        serializer.instance = _run(lambda: services.create_deployment(self.request.user, **data))

    def _answer(self, deployment, operations):
        deployment.refresh_from_db()
        return Response({**DeploymentSerializer(deployment).data, "operation_ids": operations})

    @extend_schema(request=None, responses=DeploymentSerializer)
    @action(detail=True, methods=["post"])
    def start(self, request, pk=None):
        deployment = self.get_object()
        return self._answer(deployment, _run(services.start_deployment, deployment))

    @extend_schema(request=None, responses=DeploymentSerializer)
    @action(detail=True, methods=["post"])
    def stop(self, request, pk=None):
        deployment = self.get_object()
        return self._answer(deployment, _run(services.stop_deployment, deployment))

    @extend_schema(request=ScaleSerializer, responses=DeploymentSerializer)
    @action(detail=True, methods=["post"])
    def scale(self, request, pk=None):
        deployment = self.get_object()
        body = ScaleSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return self._answer(
            deployment, _run(services.scale_deployment, deployment, body.validated_data["replicas"])
        )

    @extend_schema(request=RolloutSerializer, responses=DeploymentSerializer)
    @action(detail=True, methods=["post"])
    def rollout(self, request, pk=None):
        """Rolling update to another ready version of the same model."""
        deployment = self.get_object()
        body = RolloutSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return self._answer(
            deployment, _run(services.roll_out, deployment, body.validated_data["model_version"])
        )

    @extend_schema(request=None, responses=DeploymentSerializer)
    @action(detail=True, methods=["post"])
    def rollback(self, request, pk=None):
        """Rolling update back to the previous version."""
        deployment = self.get_object()
        return self._answer(deployment, _run(services.roll_back, deployment))


class WorkerViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, HangarViewSet):
    """Workers with their reported state. Filters: deployment, node, state."""

    queryset = Worker.objects.select_related("node", "model_version", "deployment")
    serializer_class = WorkerSerializer
    policy = {
        **VIEW,
        "restart": OPERATE,
        "logs": "deployments.view",
        "runs": "deployments.view",
        "run_log": "deployments.view",
    }

    def get_queryset(self):
        queryset = super().get_queryset()
        for name in ("deployment", "node", "state"):
            value = self.request.query_params.get(name)
            if value:
                queryset = queryset.filter(**{name: value})
        return queryset

    @extend_schema(request=None, responses=WorkerSerializer)
    @action(detail=True, methods=["post"])
    def restart(self, request, pk=None):
        worker = self.get_object()
        operation = _run(services.restart_worker, worker)
        return Response({**WorkerSerializer(worker).data, "operation_id": operation})

    def _ask(self, worker, verb: str, **kwargs):
        """A read-only question to the worker's agent: (answer, None) or (None, response)."""
        try:
            answer = commands.ask_node(
                worker.node,
                verb,
                timeout=10,
                kwargs={
                    "operation_id": f"{verb}-{worker.pk}-{self.request.request_id}"[:64],
                    "worker_id": worker.pk,
                    **kwargs,
                },
            )
        except commands.NodeUnreachable as exc:
            return None, Response(
                {"detail": str(exc), "code": "node_unreachable"},
                status=status.HTTP_504_GATEWAY_TIMEOUT,
            )
        except commands.BadAnswer as exc:
            return None, Response(
                {"detail": str(exc), "code": "bad_agent_answer"}, status=status.HTTP_502_BAD_GATEWAY
            )
        if not answer.get("ok", True):
            return None, Response(
                {
                    "detail": answer.get("detail") or _("The agent refused."),
                    "code": "agent_refused",
                },
                status=status.HTTP_404_NOT_FOUND,
            )
        return answer, None

    @extend_schema(
        parameters=[OpenApiParameter("lines", int), OpenApiParameter("run", int)],
        responses={200: None},
    )
    @action(detail=True, methods=["get"])
    def logs(self, request, pk=None):
        """The last lines of the worker's current (or a given) run, from its node."""
        worker = self.get_object()
        try:
            lines = min(max(int(request.query_params.get("lines", 200)), 1), 5000)
            run = request.query_params.get("run")
            run = int(run) if run else None
        except ValueError:
            raise serializers.ValidationError({"lines": _("lines and run are numbers.")}) from None
        answer, error = self._ask(worker, "tail_logs", lines=lines, run=run)
        return error or Response(
            {"worker": worker.pk, "run": answer["run"], "lines": answer["lines"]}
        )

    @extend_schema(responses={200: None})
    @action(detail=True, methods=["get"])
    def runs(self, request, pk=None):
        """The worker's last runs on its node: start, end, exit code or signal, cause."""
        worker = self.get_object()
        answer, error = self._ask(worker, "list_runs")
        return error or Response(
            {"worker": worker.pk, "state": worker.state, "runs": answer["runs"]}
        )

    @extend_schema(parameters=[OpenApiParameter("lines", int)], responses={200: None})
    @action(detail=True, methods=["get"], url_path=r"runs/(?P<run>[0-9]+)/log")
    def run_log(self, request, pk=None, run=None):
        """One run's log (its last `lines` lines, default 1000) as plain text."""
        worker = self.get_object()
        try:
            lines = min(max(int(request.query_params.get("lines", 1000)), 1), 5000)
        except ValueError:
            raise serializers.ValidationError({"lines": _("lines is a number.")}) from None
        answer, error = self._ask(worker, "tail_logs", lines=lines, run=int(run))
        if error:
            return error
        text = "".join(line if line.endswith("\n") else line + "\n" for line in answer["lines"])
        return HttpResponse(text, content_type="text/plain; charset=utf-8")
