from __future__ import annotations

from django.utils.translation import gettext as _
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers
from rest_framework.decorators import action
from rest_framework.response import Response

from apps.core.viewsets import HangarViewSet
from apps.registry import services
from apps.registry.api.serializers import ModelSerializer, ModelVersionSerializer
from apps.registry.models import Model, ModelVersion, VersionState

VIEW = {"list": "models.view", "retrieve": "models.view"}
MANAGE = "models.manage"


class ModelViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    HangarViewSet,
):
    """Models (a name, a family, a task); their files live in versions."""

    queryset = Model.objects.all()
    serializer_class = ModelSerializer
    policy = {**VIEW, "create": MANAGE, "update": MANAGE, "partial_update": MANAGE}


class ModelVersionViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    HangarViewSet,
):
    """Versions. Created as draft; the console checksums every file, then marks it ready.
    Ready versions are immutable; retire them when no deployment uses them."""

    queryset = ModelVersion.objects.select_related("model")
    serializer_class = ModelVersionSerializer
    policy = {**VIEW, "create": MANAGE, "destroy": MANAGE, "retire": MANAGE}

    def get_queryset(self):
        queryset = super().get_queryset()
        for name in ("model", "state"):
            if self.request.query_params.get(name):
                queryset = queryset.filter(**{name: self.request.query_params[name]})
        return queryset

    def perform_create(self, serializer):
        services.register_version(serializer)

    def perform_destroy(self, instance):
        if instance.state != VersionState.DRAFT:
            raise serializers.ValidationError(
                {"detail": _("Only draft versions can be deleted; retire ready ones.")}
            )
        super().perform_destroy(instance)

    @extend_schema(request=None, responses=ModelVersionSerializer)
    @action(detail=True, methods=["post"])
    def retire(self, request, pk=None):
        version = self.get_object()
        try:
            services.retire_version(version)
        except services.VersionInUse as exc:
            raise serializers.ValidationError({"detail": str(exc)}) from None
        return Response(ModelVersionSerializer(version).data)
