"""Helpers the HTML views of every app share."""

from __future__ import annotations

from django.db.models import QuerySet
from django.http import Http404

from apps.accounts.policy import restrict
from apps.audit import recorder


def found_or_404(scoped: QuerySet, pk):
    """The row `pk` of an already narrowed queryset, else 404; a row that exists
    outside the narrowing is recorded as a denial, as the API records it. The row
    found is what a mutating request acts on (recorder.watch, as the API's get_object)."""
    found = scoped.filter(pk=pk).first()
    if found is not None:
        recorder.watch(found)
        return found
    model = scoped.model
    if model._base_manager.filter(pk=pk).exists():
        recorder.describe(
            target=(model._meta.label_lower, pk, ""),
            outcome=recorder.Outcome.DENIED,
            changes={"reason": "outside the caller's scope"},
        )
    raise Http404


def visible_or_404(queryset: QuerySet, user, action: str, pk):
    """The object if `user` may `action` it (apps.accounts.policy.restrict), else 404."""
    return found_or_404(restrict(queryset, user, action), pk)
