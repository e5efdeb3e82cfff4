"""Pages: models and their versions (register, checksum progress, retire).

Validation is the API's serializers; retiring is apps.registry.services, and a
new version is checksummed by the same Celery task the API queues."""

from __future__ import annotations

from django.contrib import messages
from django.db.models import Prefetch
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _

from apps.accounts.permissions import requires
from apps.accounts.policy import can, restrict
from apps.audit import recorder
from apps.core.i18n import in_english
from apps.core.pages import visible_or_404
from apps.registry import services
from apps.registry.api.serializers import ModelSerializer, ModelVersionSerializer
from apps.registry.models import ArtifactFormat, Model, ModelVersion, Task, VersionState


def _models_page(request, context: dict | None = None, status: int = 200):
    context = context or {}
    models = restrict(Model.objects.all(), request.user, "models.view").prefetch_related(
        Prefetch("versions", queryset=ModelVersion.objects.order_by("-created_at"))
    )
    models = list(models)
    drafting = any(v.state == VersionState.DRAFT for m in models for v in m.versions.all())
    context.update(
        models=models,
        drafting=drafting,
        can_manage=can(request.user, "models.manage"),
        tasks=Task.values,
        formats=ArtifactFormat.values,
    )
    for key in ("model_form", "model_errors", "version_form", "version_errors"):
        context.setdefault(key, {})
    return render(request, "registry/models.html", context, status=status)


@requires("models.view")
def model_list(request):
    return _models_page(request)


@requires("models.manage", methods=("POST",))
def model_create(request):
    form = ModelSerializer(data=request.POST)
    recorder.watch_form(form)
    if not form.is_valid():
        return _models_page(
            request, {"model_form": request.POST, "model_errors": form.errors}, status=400
        )
    model = form.save()
    messages.success(request, _("Model %(name)s is registered.") % {"name": model.name})
    return redirect("model-list")


@requires("models.manage", methods=("POST",))
def version_create(request):
    data = {k: v for k, v in request.POST.items() if k != "csrfmiddlewaretoken" and v != ""}
    form = ModelVersionSerializer(data=data)
    recorder.watch_form(form)
    if not form.is_valid():
        return _models_page(
            request, {"version_form": request.POST, "version_errors": form.errors}, status=400
        )
    version = services.register_version(form)
    messages.success(
        request,
        _("Version %(version)s is registered; its files are being checksummed.")
        % {"version": version},
    )
    return redirect("model-list")


@requires("models.manage", methods=("POST",))
def version_retire(request, pk: int):
    version = visible_or_404(
        ModelVersion.objects.select_related("model"), request.user, "models.view", pk
    )
    try:
        services.retire_version(version)
    except services.VersionInUse as exc:
        recorder.describe(outcome=recorder.Outcome.FAILED, changes={"reason": in_english(exc)})
        messages.error(request, str(exc))
        return redirect("model-list")
    messages.success(request, _("Version %(version)s is retired.") % {"version": version})
    return redirect("model-list")
