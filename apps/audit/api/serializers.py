from rest_framework import serializers

from apps.audit.models import AuditEvent


class AuditEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditEvent
        fields = [
            "seq",
            "time",
            "actor_type",
            "actor_id",
            "actor_name",
            "source_address",
            "request_id",
            "action",
            "target_type",
            "target_id",
            "target_repr",
            "changes",
            "outcome",
            "prev_hash",
            "hash",
        ]
        read_only_fields = fields
