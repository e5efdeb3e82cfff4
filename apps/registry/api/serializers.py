from __future__ import annotations

from django.utils.translation import gettext as _
from rest_framework import serializers

from apps.registry.models import Model, ModelVersion
from apps.registry.paths import PathRefused, check_model_path


class ModelSerializer(serializers.ModelSerializer):
    class Meta:
        model = Model
        fields = ["id", "name", "family", "task", "description", "created_at"]
        read_only_fields = ["id", "created_at"]


class ModelVersionSerializer(serializers.ModelSerializer):
    model_name = serializers.CharField(source="model.name", read_only=True)

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "model",
            "model_name",
            "label",
            "path",
            "format",
            "quantization",
            "parameter_count",
            "size_bytes",
            "files",
            "state",
            "progress",
            "error",
            "created_at",
            "ready_at",
        ]
        read_only_fields = [
            "id",
            "size_bytes",
            "files",
            "state",
            "progress",
            "error",
            "created_at",
            "ready_at",
        ]

    def validate_path(self, value: str) -> str:
        try:
            return str(check_model_path(value))
        except PathRefused as exc:
            raise serializers.ValidationError(str(exc)) from None

    def validate_parameter_count(self, value):
        if value is not None and value <= 0:
            raise serializers.ValidationError(_("The parameter count is a positive number."))
        return value
