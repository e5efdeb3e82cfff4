from __future__ import annotations

from django.utils.translation import gettext as _
from rest_framework import serializers

from apps.inventory import health as services_health
from apps.inventory import services
from apps.inventory.health import POLICY_FIELDS, describe_reasons
from apps.inventory.models import (
    GPU,
    Cluster,
    EnrollmentToken,
    HealthPolicy,
    Node,
    PreflightRun,
)

LABEL_KEY_MAX = 63


class ClusterSerializer(serializers.ModelSerializer):
    class Meta:
        model = Cluster
        fields = ["id", "name", "description", "site", "created_at"]
        read_only_fields = ["id", "created_at"]


class GPUSerializer(serializers.ModelSerializer):
    class Meta:
        model = GPU
        fields = [
            "id",
            "node",
            "index",
            "uuid",
            "name",
            "memory_total",
            "pci_bus_id",
            "power_limit",
            "mig_mode",
            "state",
            "fault",
            "health",
            "health_reasons",
            "health_reasons_text",
            "health_changed_at",
            "health_reading",
            "cordoned",
            "cordon_reason",
            "cordoned_at",
        ]
        read_only_fields = fields

    health_reasons_text = serializers.SerializerMethodField()
    health_reading = serializers.SerializerMethodField()

    def get_health_reasons_text(self, gpu) -> list[str]:
        return describe_reasons(gpu.health_reasons)

    def get_health_reading(self, gpu) -> dict:
        return gpu.health_reading.get("read") or {}


class CordonSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=255, required=False, allow_blank=True, default="")


class HealthPolicySerializer(serializers.ModelSerializer):
    class Meta:
        model = HealthPolicy
        fields = [*POLICY_FIELDS, "updated_at"]
        read_only_fields = ["updated_at"]

    def validate_critical_xids(self, value):
        if not isinstance(value, list) or len(value) > 64:
            raise serializers.ValidationError(_("List at most 64 Xid codes."))
        if any(type(x) is not int or not 0 < x < 2**31 for x in value):
            raise serializers.ValidationError(_("Each Xid code is a positive whole number."))
        return sorted(set(value))

    def update(self, policy, validated_data):
        return services_health.change_policy(validated_data)


class NodeSerializer(serializers.ModelSerializer):
    gpus = GPUSerializer(many=True, read_only=True)
    display_name = serializers.CharField(source="__str__", read_only=True)
    credential_revoked = serializers.SerializerMethodField()

    class Meta:
        model = Node
        fields = [
            "id",
            "display_name",
            "name",
            "hostname",
            "cluster",
            "labels",
            "state",
            "state_reason",
            "addresses",
            "os",
            "kernel",
            "driver_version",
            "cuda_version",
            "cpu_count",
            "memory_total",
            "agent_version",
            "simulated",
            "accelerator",
            "last_seen",
            "enrolled_at",
            "credential_revoked",
            "gpus",
        ]
        # The agent reports the facts; people edit only the name, labels and cluster.
        read_only_fields = [f for f in fields if f not in ("name", "labels", "cluster")]

    def update(self, node, validated_data):
        services.edit_node(node, validated_data)
        return node

    def get_credential_revoked(self, node) -> bool:
        return node.credential_revoked_at is not None

    def validate_labels(self, labels):
        if not isinstance(labels, dict) or len(labels) > 50:
            raise serializers.ValidationError(
                _("Labels are an object of at most 50 key: value pairs.")
            )
        for key, value in labels.items():
            if not (
                isinstance(key, str)
                and 0 < len(key) <= LABEL_KEY_MAX
                and isinstance(value, str)
                and len(value) <= 200
            ):
                raise serializers.ValidationError(
                    _("Label %(key)r: keys are 1-63 characters, values strings of at most 200.")
                    % {"key": key}
                )
        return labels


class EnrollmentTokenSerializer(serializers.ModelSerializer):
    hours = serializers.IntegerField(write_only=True, min_value=1, max_value=24 * 30, default=24)
    state = serializers.SerializerMethodField()

    class Meta:
        model = EnrollmentToken
        fields = [
            "id",
            "cluster",
            "description",
            "prefix",
            "created_at",
            "expires_at",
            "used_at",
            "used_by_node",
            "state",
            "hours",
        ]
        read_only_fields = [
            "id",
            "prefix",
            "created_at",
            "expires_at",
            "used_at",
            "used_by_node",
            "state",
        ]

    def get_state(self, token) -> str:
        from django.utils import timezone

        if token.used_at:
            return "used"
        return "expired" if token.expires_at <= timezone.now() else "active"


class EnrollmentTokenCreatedSerializer(EnrollmentTokenSerializer):
    secret = serializers.CharField(read_only=True)
    command = serializers.CharField(read_only=True)

    class Meta(EnrollmentTokenSerializer.Meta):
        fields = [*EnrollmentTokenSerializer.Meta.fields, "secret", "command"]


class EnrollRequestSerializer(serializers.Serializer):
    token = serializers.CharField(max_length=200)
    hostname = serializers.RegexField(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$", max_length=253)
    facts = serializers.DictField(required=False, default=dict)


class PreflightRunSerializer(serializers.ModelSerializer):
    requested_by = serializers.StringRelatedField()
    overridden_by = serializers.StringRelatedField()

    class Meta:
        model = PreflightRun
        fields = [
            "id",
            "node",
            "requested_by",
            "started_at",
            "finished_at",
            "status",
            "results",
            "error",
            "overridden_at",
            "overridden_by",
            "override_reason",
        ]
        read_only_fields = fields


class OverrideSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=255)
