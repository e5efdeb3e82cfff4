"""Pages: alerts (acknowledge with a note), the header's firing count, rules,
silences, receivers and their deliveries.

Forms are validated with the API's serializers and saved through the same
functions the API's viewsets call (apps.alerts.services: acknowledge,
update_rule, delete_rule, create_silence, expire_silence); scope checks are the
policy's (`allowed_in_scope`, `with_global_rows`). The request's audit event
gets its target and changes as the API's do: found_or_404 watches the object,
`recorder.watch_form` the form that saves it."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count, Q
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _

from apps.accounts.permissions import requires
from apps.accounts.policy import allowed_in_scope, can, restrict, with_global_rows
from apps.alerts import services
from apps.alerts.api.serializers import (
    AcknowledgeSerializer,
    AlertRuleSerializer,
    ReceiverSerializer,
    SilenceSerializer,
)
from apps.alerts.models import (
    Alert,
    AlertRule,
    Comparison,
    Delivery,
    Receiver,
    Scope,
    Severity,
    Silence,
)
from apps.audit import recorder
from apps.core.i18n import in_english
from apps.core.pages import found_or_404, visible_or_404
from apps.deployments.models import Deployment
from apps.inventory.models import Cluster, Node

ALERTS_PER_PAGE = 100


def visible_alerts(user):
    return restrict(Alert.objects.all(), user, "alerts.view")


@requires("alerts.view")
def alert_list(request):
    params = request.GET
    alerts = visible_alerts(request.user).select_related(
        "node", "deployment", "cluster", "acknowledged_by"
    )
    state = params.get("state", "open")
    if state == "open":
        alerts = alerts.filter(state__in=Alert.OPEN)
    elif state in Alert.State.values:
        alerts = alerts.filter(state=state)
    severity = params.get("severity", "")
    if severity in Severity.values:
        alerts = alerts.filter(severity=severity)
    cluster = params.get("cluster", "")
    if cluster.isdigit():
        alerts = alerts.filter(cluster_id=int(cluster))
    # One alert, whatever its state: where a notification's link lands (notify.alert_page_url).
    one = params.get("id", "")
    if one.isdigit():
        alerts = alerts.filter(pk=int(one))
    page = Paginator(alerts.order_by("-started_at", "-id"), ALERTS_PER_PAGE).get_page(
        params.get("page")
    )
    acknowledgeable = {
        cid
        for cid in {a.cluster_id for a in page.object_list}
        if can(request.user, "alerts.acknowledge", cid)
    }
    return render(
        request,
        "alerts/list.html",
        {
            "page": page,
            "alerts": page.object_list,
            "acknowledgeable": acknowledgeable,
            "states": Alert.State.values,
            "severities": Severity.values,
            "clusters": restrict(Cluster.objects.all(), request.user, "inventory.view"),
            "filters": {"state": state, "severity": severity, "cluster": cluster},
        },
    )


@requires("alerts.acknowledge", methods=("POST",))
def alert_acknowledge(request, pk: int):
    alert = visible_or_404(Alert.objects.all(), request.user, "alerts.view", pk)
    if not can(request.user, "alerts.acknowledge", alert):
        raise PermissionDenied
    body = AcknowledgeSerializer(data=request.POST)
    body.is_valid(raise_exception=False)
    note = body.validated_data.get("note", "") if not body.errors else ""
    try:
        services.acknowledge(alert, request.user, note)
    except ValueError as exc:
        recorder.describe(outcome=recorder.Outcome.FAILED, changes={"reason": in_english(exc)})
        messages.error(request, str(exc))
    else:
        messages.success(request, _("Alert acknowledged: %(alert)s.") % {"alert": alert.rule_name})
    return redirect(request.POST.get("next") or "alert-list")


@requires("alerts.view")
def alert_count(request):
    """The header badge: firing alerts the user may see (htmx polls it)."""
    firing = visible_alerts(request.user).filter(state=Alert.State.FIRING).count()
    return render(request, "alerts/_count.html", {"firing": firing})


# --- rules -------------------------------------------------------------------------

VIEW, MANAGE, ACKNOWLEDGE = "alerts.view", "alerts.manage", "alerts.acknowledge"
FAILING = (Delivery.State.RETRYING, Delivery.State.FAILED)
EXPIRED_SILENCES_SHOWN = 100
DELIVERIES_PER_PAGE = 100


def visible_rules(user):
    """As the API lists them: rules for every cluster, plus those of visible clusters."""
    rules = AlertRule.objects.all()
    return with_global_rows(restrict(rules, user, VIEW), rules, user, VIEW)


def visible_silences(user):
    silences = Silence.objects.all()
    return with_global_rows(restrict(silences, user, VIEW), silences, user, VIEW)


def _rule_form_context(user) -> dict:
    return {
        "scopes": Scope.values,
        "comparisons": Comparison.values,
        "severities": Severity.values,
        "clusters": restrict(Cluster.objects.all(), user, "inventory.view"),
        "nodes": restrict(Node.objects.select_related("cluster"), user, "inventory.view"),
        "deployments": restrict(
            Deployment.objects.select_related("cluster"), user, "deployments.view"
        ),
        "receivers": Receiver.objects.all(),
    }


def _rules_page(request, context: dict | None = None, status: int = 200):
    context = context or {}
    rules = visible_rules(request.user).select_related("cluster", "node", "deployment")
    rules = rules.annotate(open_alerts=Count("alerts", filter=Q(alerts__state__in=Alert.OPEN)))
    can_manage = can(request.user, MANAGE)
    context.update(rules=rules.order_by("name"), can_manage=can_manage)
    if can_manage:
        context.update(_rule_form_context(request.user))
    context.setdefault("form", {"scope": Scope.EVERYWHERE, "severity": Severity.WARNING})
    context.setdefault("errors", {})
    context.setdefault("selected", [])
    return render(request, "alerts/rules.html", context, status=status)


def _rule_values(rule: AlertRule) -> dict:
    """The edit form's initial values, as the form posts them."""
    return {
        "name": rule.name,
        "description": rule.description,
        "metric": rule.metric,
        "scope": rule.scope,
        "cluster": str(rule.cluster_id or ""),
        "node": str(rule.node_id or ""),
        "deployment": str(rule.deployment_id or ""),
        "comparison": rule.comparison,
        "threshold": f"{rule.threshold:g}",
        "clear_threshold": "" if rule.clear_threshold is None else f"{rule.clear_threshold:g}",
        "for_seconds": str(rule.for_seconds),
        "severity": rule.severity,
        "enabled": "on" if rule.enabled else "",
    }


def _posted_receivers(post) -> list[int]:
    return [int(r) for r in post.getlist("receivers") if r.isdigit()]


def _require_scope(user, action: str, cluster) -> None:
    if not allowed_in_scope(user, action, cluster):
        recorder.describe(
            outcome=recorder.Outcome.DENIED,
            changes={"reason": f"{action} not allowed in {cluster or 'every cluster'}"},
        )
        raise PermissionDenied


def _rule_or_404(user, pk: int) -> AlertRule:
    rule = found_or_404(visible_rules(user), pk)
    if not can(user, MANAGE, rule):
        raise PermissionDenied
    return rule


@requires(VIEW)
def rule_list(request):
    return _rules_page(request)


@requires(MANAGE, methods=("POST",))
def rule_create(request):
    form = AlertRuleSerializer(data=request.POST)
    recorder.watch_form(form)
    if not form.is_valid():
        context = {
            "form": request.POST,
            "errors": form.errors,
            "selected": _posted_receivers(request.POST),
        }
        return _rules_page(request, context, status=400)
    _require_scope(request.user, MANAGE, form.validated_data.get("cluster"))
    rule = form.save()
    messages.success(request, _("Rule %(name)s is created.") % {"name": rule.name})
    return redirect("alert-rule-list")


@requires(MANAGE, methods=("GET", "HEAD", "POST"))
def rule_edit(request, pk: int):
    rule = _rule_or_404(request.user, pk)
    context = {"rule": rule, **_rule_form_context(request.user)}
    if request.method != "POST":
        selected = [r.pk for r in rule.receivers.all()]
        context.update(form=_rule_values(rule), errors={}, selected=selected)
        return render(request, "alerts/rule_edit.html", context)
    form = AlertRuleSerializer(rule, data=request.POST)
    recorder.watch_form(form)
    if not form.is_valid():
        context.update(
            form=request.POST, errors=form.errors, selected=_posted_receivers(request.POST)
        )
        return render(request, "alerts/rule_edit.html", context, status=400)
    _require_scope(request.user, MANAGE, form.validated_data.get("cluster"))
    rule = services.update_rule(form)
    messages.success(request, _("Rule %(name)s is saved.") % {"name": rule.name})
    return redirect("alert-rule-list")


@requires(MANAGE, methods=("POST",))
def rule_enable(request, pk: int):
    """Enable or disable (`enabled` = true / false); disabling resolves its open alerts."""
    rule = _rule_or_404(request.user, pk)
    form = AlertRuleSerializer(rule, data={"enabled": request.POST.get("enabled")}, partial=True)
    recorder.watch_form(form)
    if not form.is_valid():
        messages.error(request, _("Say whether the rule is enabled: true or false."))
        return redirect("alert-rule-list")
    rule = services.update_rule(form)
    if rule.enabled:
        messages.success(request, _("Rule %(name)s is enabled.") % {"name": rule.name})
    else:
        messages.success(
            request,
            _("Rule %(name)s is disabled; its open alerts are resolved.") % {"name": rule.name},
        )
    return redirect("alert-rule-list")


@requires(MANAGE, methods=("POST",))
def rule_delete(request, pk: int):
    rule = _rule_or_404(request.user, pk)
    name = rule.name
    services.delete_rule(rule)
    messages.success(request, _("Rule %(name)s is deleted.") % {"name": name})
    return redirect("alert-rule-list")


# --- silences ----------------------------------------------------------------------


def _silences_page(request, context: dict | None = None, status: int = 200):
    context = context or {}
    now = timezone.now()
    silences = visible_silences(request.user).select_related(
        "rule", "node", "cluster", "created_by"
    )
    active = list(silences.filter(ends_at__gt=now).order_by("ends_at", "id"))
    expired = silences.filter(ends_at__lte=now).order_by("-ends_at", "-id")
    user = request.user
    context.update(
        active=active,
        expired=expired[:EXPIRED_SILENCES_SHOWN],
        now=now,
        # Who may end which: the same check as creating one in that cluster.
        expirable={s.pk for s in active if allowed_in_scope(user, ACKNOWLEDGE, s.cluster)},
        can_silence=can(user, ACKNOWLEDGE),
    )
    if context["can_silence"]:
        context.update(
            rules=visible_rules(user).order_by("name"),
            clusters=[
                c
                for c in restrict(Cluster.objects.all(), user, "inventory.view")
                if can(user, ACKNOWLEDGE, c.pk)
            ],
            nodes=restrict(Node.objects.select_related("cluster"), user, ACKNOWLEDGE),
            severities=Severity.values,
        )
    context.setdefault("form", {})
    context.setdefault("errors", {})
    return render(request, "alerts/silences.html", context, status=status)


@requires(VIEW)
def silence_list(request):
    return _silences_page(request)


@requires(ACKNOWLEDGE, methods=("POST",))
def silence_create(request):
    data = {k: v for k, v in request.POST.items() if k != "csrfmiddlewaretoken" and v != ""}
    form = SilenceSerializer(data=data)
    recorder.watch_form(form)
    if not form.is_valid():
        return _silences_page(request, {"form": request.POST, "errors": form.errors}, status=400)
    _require_scope(request.user, ACKNOWLEDGE, form.validated_data.get("cluster"))
    silence = services.create_silence(form, request.user)
    messages.success(request, _("Silence created until %(end)s.") % {"end": silence.ends_at})
    return redirect("silence-list")


@requires(ACKNOWLEDGE, methods=("POST",))
def silence_expire(request, pk: int):
    silence = found_or_404(visible_silences(request.user), pk)
    if not allowed_in_scope(request.user, ACKNOWLEDGE, silence.cluster):
        raise PermissionDenied
    services.expire_silence(silence)
    messages.success(request, _("The silence has ended."))
    return redirect("silence-list")


# --- receivers and deliveries (administrators) ----------------------------------------


def _receiver_data(post, instance: Receiver | None = None) -> dict:
    """Form fields as the API's body: e-mails one per line or comma-separated; an
    empty secret keeps the stored one unless "clear secret" is ticked."""
    data = {
        "name": post.get("name", ""),
        "kind": post.get("kind", ""),
        "url": post.get("url", ""),
        "emails": [e.strip() for e in post.get("emails", "").replace(",", "\n").split() if e],
        "language": post.get("language", "") or settings.LANGUAGE_CODE,
        "enabled": post.get("enabled") in ("on", "true", "1"),
    }
    if post.get("secret"):
        data["secret"] = post["secret"]
    elif post.get("clear_secret") or instance is None:
        data["secret"] = ""
    return data


def _receiver_form(post) -> dict:
    """What the form shows again after an error: never the secret."""
    return {k: v for k, v in post.items() if k not in ("secret", "csrfmiddlewaretoken")}


def _receivers_page(request, context: dict | None = None, status: int = 200):
    context = context or {}
    receivers = Receiver.objects.annotate(
        failing=Count("deliveries", filter=Q(deliveries__state__in=FAILING)),
        delivered=Count("deliveries", filter=Q(deliveries__state=Delivery.State.SENT)),
        rule_count=Count("rules", distinct=True),
    ).order_by("name")
    context.update(receivers=receivers, kinds=Receiver.Kind.choices, languages=settings.LANGUAGES)
    context.setdefault("form", {"enabled": "on"})
    context.setdefault("errors", {})
    return render(request, "alerts/receivers.html", context, status=status)


def _receiver_or_404(request, pk: int) -> Receiver:
    return visible_or_404(Receiver.objects.all(), request.user, MANAGE, pk)


@requires(MANAGE)
def receiver_list(request):
    return _receivers_page(request)


@requires(MANAGE, methods=("POST",))
def receiver_create(request):
    form = ReceiverSerializer(data=_receiver_data(request.POST))
    recorder.watch_form(form)
    if not form.is_valid():
        context = {"form": _receiver_form(request.POST), "errors": form.errors}
        return _receivers_page(request, context, status=400)
    receiver = form.save()
    messages.success(request, _("Receiver %(name)s is created.") % {"name": receiver.name})
    return redirect("receiver-list")


@requires(MANAGE, methods=("GET", "HEAD", "POST"))
def receiver_edit(request, pk: int):
    receiver = _receiver_or_404(request, pk)
    context = {
        "receiver": receiver,
        "kinds": Receiver.Kind.choices,
        "languages": settings.LANGUAGES,
    }
    if request.method != "POST":
        form = {
            "name": receiver.name,
            "kind": receiver.kind,
            "url": receiver.url,
            "emails": "\n".join(receiver.emails),
            "language": receiver.language,
            "enabled": "on" if receiver.enabled else "",
        }
        return render(request, "alerts/receiver_edit.html", {**context, "form": form})
    form = ReceiverSerializer(receiver, data=_receiver_data(request.POST, receiver))
    recorder.watch_form(form)
    if not form.is_valid():
        context.update(form=_receiver_form(request.POST), errors=form.errors)
        return render(request, "alerts/receiver_edit.html", context, status=400)
    receiver = form.save()
    messages.success(request, _("Receiver %(name)s is saved.") % {"name": receiver.name})
    return redirect("receiver-list")


@requires(MANAGE, methods=("POST",))
def receiver_delete(request, pk: int):
    receiver = _receiver_or_404(request, pk)
    name = receiver.name
    receiver.delete()
    messages.success(request, _("Receiver %(name)s is deleted.") % {"name": name})
    return redirect("receiver-list")


@requires(MANAGE)
def delivery_list(request):
    params = request.GET
    deliveries = Delivery.objects.select_related("receiver", "alert").order_by("-created_at", "-id")
    state = params.get("state", "")
    if state in Delivery.State.values:
        deliveries = deliveries.filter(state=state)
    receiver = params.get("receiver", "")
    if receiver.isdigit():
        deliveries = deliveries.filter(receiver_id=int(receiver))
    page = Paginator(deliveries, DELIVERIES_PER_PAGE).get_page(params.get("page"))
    return render(
        request,
        "alerts/deliveries.html",
        {
            "page": page,
            "deliveries": page.object_list,
            "states": Delivery.State.values,
            "receivers": Receiver.objects.order_by("name"),
            "filters": {"state": state, "receiver": receiver},
        },
    )
