"""The base every API viewset uses: policy-restricted querysets and audited writes."""

from __future__ import annotations

from django.forms.models import model_to_dict
from rest_framework import viewsets

from apps.accounts.policy import restrict
from apps.audit import recorder


def snapshot(instance) -> dict:
    return {k: v for k, v in model_to_dict(instance).items() if not k.startswith("_")}


class HangarViewSet(viewsets.GenericViewSet):
    """Subclasses set `policy` (view action -> policy action) and `queryset`.

    Rows are always narrowed to what the caller may *view* (policy["list"]);
    objects outside that set answer 404, inside it but without the right 403.
    """

    def get_queryset(self):
        view_action = self.policy.get("list") or self.policy.get("retrieve")
        return restrict(super().get_queryset(), self.request.user, view_action)

    def perform_create(self, serializer):
        instance = serializer.save()
        recorder.describe(target=instance, changes={"created": snapshot(instance)})

    def perform_update(self, serializer):
        before = snapshot(serializer.instance)
        instance = serializer.save()
        recorder.describe(target=instance, changes=recorder.diff(before, snapshot(instance)))

    def perform_destroy(self, instance):
        recorder.describe(target=instance, changes={"deleted": snapshot(instance)})
        instance.delete()
