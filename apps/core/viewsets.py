"""The base every API viewset uses: policy-restricted querysets and audited writes."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import viewsets

from apps.accounts.policy import restrict
from apps.audit import recorder


class HangarViewSet(viewsets.GenericViewSet):
    """Subclasses set `policy` (view action -> policy action) and `queryset`.

    Rows are always narrowed to what the caller may *view* (policy["list"]);
    objects outside that set answer 404, inside it but without the right 403.

    Writes are described on the request's audit event the way pages describe
    theirs (recorder.watch / watch_form, then the middleware's describe_write),
    from the hooks DRF's mixins call but never override (get_object,
    get_serializer): subclasses list the mixins first, so mixin methods such as
    perform_create would shadow anything defined on this class. A view that
    describes its own changes (recorder.describe) keeps them.
    """

    def get_queryset(self):
        view_action = self.policy.get("list") or self.policy.get("retrieve")
        return restrict(super().get_queryset(), self.request.user, view_action)

    def get_object(self):
        try:
            instance = super().get_object()
        except Http404:
            self._note_hidden_object()
            raise
        recorder.watch(instance)
        return instance

    def get_serializer(self, *args, **kwargs):
        serializer = super().get_serializer(*args, **kwargs)
        recorder.watch_form(serializer)
        return serializer

    def _note_hidden_object(self) -> None:
        """A 404 for an object that exists but is outside the caller's scope is a denial."""
        lookup = self.kwargs.get(self.lookup_url_kwarg or self.lookup_field)
        model = self.get_queryset().model
        try:
            exists = model._base_manager.filter(**{self.lookup_field: lookup}).exists()
        except (ValueError, TypeError, DjangoValidationError):
            return
        if exists:
            recorder.describe(
                target=(model._meta.label_lower, lookup, ""),
                outcome=recorder.Outcome.DENIED,
                changes={"reason": "outside the caller's scope"},
            )
