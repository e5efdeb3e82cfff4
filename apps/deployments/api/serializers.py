from __future__ import annotations

from django.utils.translation import gettext as _
from rest_framework import serializers

from apps.deployments.engines import EngineArgsError, validate_engine_config
from apps.deployments.models import Deployment, Worker
from apps.registry.models import ModelVersion


class WorkerSerializer(serializers.ModelSerializer):
    node_name = serializers.CharField(source="node.__str__", read_only=True)
    version = serializers.CharField(source="model_version.label", read_only=True)

    class Meta:
        model = Worker
        fields = [
            "id",
            "deployment",
            "slot",
            "node",
            "node_name",
            "model_version",
            "version",
            "gpus",
            "port",
            "desired_state",
            "state",
            "pid",
            "restarts",
            "run",
            "exit_code",
            "exit_signal",
            "cause",
            "evidence",
            "error",
            "progress",
            "last_log",
            "last_operation_id",
            "reported_at",
            "first_ready_at",
            "availability",
            "availability_at",
        ]
        read_only_fields = fields


class PlacementField(serializers.JSONField):
    def to_internal_value(self, data):
        data = super().to_internal_value(data)
        if not isinstance(data, dict) or data.get("mode") not in ("pinned", "auto"):
            raise serializers.ValidationError(
                _(
                    'Use {"mode": "pinned", "targets": [...]} or '
                    '{"mode": "auto", "gpus_per_replica": N, '
                    '"min_free_gib": M}.'
                )
            )
        if data["mode"] == "pinned":
            targets = data.get("targets")
            if not isinstance(targets, list) or not all(
                isinstance(t, dict)
                and isinstance(t.get("node"), int)
                and isinstance(t.get("gpus"), list)
                and all(isinstance(g, int) and 0 <= g < 64 for g in t["gpus"])
                for t in targets
            ):
                raise serializers.ValidationError(
                    _('Pinned targets are [{"node": <id>, "gpus": [<index>, ...]}, ...].')
                )
            return {"mode": "pinned", "targets": targets}
        per_replica, min_free = data.get("gpus_per_replica", 1), data.get("min_free_gib", 0)
        if not isinstance(per_replica, int) or not 0 <= per_replica <= 16:
            raise serializers.ValidationError(_("gpus_per_replica is a whole number from 0 to 16."))
        if not isinstance(min_free, int | float) or min_free < 0:
            raise serializers.ValidationError(_("min_free_gib is a number of GiB, 0 or more."))
        return {"mode": "auto", "gpus_per_replica": per_replica, "min_free_gib": min_free}


class DeploymentSerializer(serializers.ModelSerializer):
    placement = PlacementField()
    workers = serializers.SerializerMethodField()
    model_version = serializers.PrimaryKeyRelatedField(queryset=ModelVersion.objects.all())

    class Meta:
        model = Deployment
        fields = [
            "id",
            "name",
            "cluster",
            "model_version",
            "previous_version",
            "engine",
            "engine_args",
            "command",
            "health_path",
            "replicas",
            "placement",
            "port",
            "desired_state",
            "rollout_state",
            "rollout_error",
            "created_at",
            "updated_at",
            "workers",
        ]
        read_only_fields = [
            "id",
            "previous_version",
            "desired_state",
            "rollout_state",
            "rollout_error",
            "created_at",
            "updated_at",
            "workers",
        ]

    def get_workers(self, deployment) -> list[dict]:
        return WorkerSerializer(deployment.workers.all(), many=True).data

    def validate_replicas(self, value: int) -> int:
        if not 1 <= value <= 64:
            raise serializers.ValidationError(_("replicas must be between 1 and 64."))
        return value

    def validate_port(self, value: int | None) -> int | None:
        if value is not None and not 1024 <= value <= 65000:
            raise serializers.ValidationError(_("Use a port between 1024 and 65000."))
        return value

    def validate(self, attrs):
        try:
            attrs["engine_args"], attrs["command"] = validate_engine_config(
                attrs.get("engine"),
                attrs.get("engine_args") or [],
                attrs.get("command"),
                attrs.get("health_path", ""),
            )
        except EngineArgsError as exc:
            raise serializers.ValidationError({"engine_args": str(exc)}) from None
        return attrs


class ScaleSerializer(serializers.Serializer):
    replicas = serializers.IntegerField(min_value=1, max_value=64)


class RolloutSerializer(serializers.Serializer):
    model_version = serializers.PrimaryKeyRelatedField(queryset=ModelVersion.objects.all())
