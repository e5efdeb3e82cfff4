"""Errors our own code raises reach people in their language.

LocaleMiddleware picks the language (the django_language cookie set by
/i18n/setlang/, else Accept-Language, else English); serializers, views and
services wrap their messages in gettext, so API error details and form errors
come from locale/zh_Hans like the templates do. The expected Chinese is read
from the catalogue, not written here. Audit records keep the English reason.

The last test reads every module under apps/ and fails on a raised message
that is a bare string literal, so a new English-only error cannot slip in.
"""

from __future__ import annotations

import ast
from html import escape
from pathlib import Path

import pytest
from django.test import Client
from django.utils.translation import gettext, override

from apps.audit.models import AuditEvent
from apps.deployments.models import Deployment
from apps.registry.models import Model, ModelVersion
from tests.accounts.helpers import fast_password_hashing

__all__ = ["fast_password_hashing"]

APPS = Path(__file__).resolve().parents[2] / "apps"


def zh(msgid: str, **params) -> str:
    """The catalogue's Chinese for `msgid`, filled in as the code fills it in."""
    with override("zh-hans"):
        text = gettext(msgid)
    assert text != msgid, f"no Chinese for {msgid!r} in locale/zh_Hans"
    return text % params if params else text


def field_errors(response, name: str) -> list[str]:
    errors = response.json()["fields"][name]
    return errors if isinstance(errors, list) else [errors]


CLUSTER_RULE_WITHOUT_CLUSTER = {
    "name": "hot GPUs",
    "metric": "gpu.*.temperature",
    "scope": "cluster",
    "comparison": ">",
    "threshold": 90,
    "for_seconds": 60,
    "severity": "critical",
}


# --- the API -------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_serializer_refusal_is_in_the_language_the_client_asks_for(admin_api):
    chinese = admin_api.post(
        "/api/v1/alert-rules/",
        CLUSTER_RULE_WITHOUT_CLUSTER,
        format="json",
        HTTP_ACCEPT_LANGUAGE="zh-Hans",
    )
    english = admin_api.post(
        "/api/v1/alert-rules/",
        CLUSTER_RULE_WITHOUT_CLUSTER,
        format="json",
        HTTP_ACCEPT_LANGUAGE="en",
    )

    assert chinese.status_code == 400, chinese.json()
    assert chinese.json()["detail"] == zh("The request has invalid fields.")
    assert field_errors(chinese, "cluster") == [zh("A cluster rule names its cluster.")]
    assert english.status_code == 400
    assert english.json()["detail"] == "The request has invalid fields."
    assert field_errors(english, "cluster") == ["A cluster rule names its cluster."]


@pytest.mark.django_db
def test_a_model_path_outside_the_roots_is_refused_in_chinese(admin_api, tmp_path, settings):
    root = tmp_path / "models"
    root.mkdir()
    settings.MODEL_ROOTS = [str(root)]
    model = Model.objects.create(name="qwen")
    body = {"model": model.pk, "label": "v1", "path": "/etc", "format": "gguf"}

    chinese = admin_api.post(
        "/api/v1/model-versions/", body, format="json", HTTP_ACCEPT_LANGUAGE="zh-Hans"
    )
    english = admin_api.post(
        "/api/v1/model-versions/", body, format="json", HTTP_ACCEPT_LANGUAGE="en"
    )

    message = "%(path)s is outside the allowed model roots (%(roots)s)."
    assert chinese.status_code == 400, chinese.json()
    assert field_errors(chinese, "path") == [zh(message, path="/etc", roots=str(root))]
    assert english.status_code == 400
    assert field_errors(english, "path") == [message % {"path": "/etc", "roots": root}]
    assert not ModelVersion.objects.exists()


@pytest.mark.django_db
def test_an_engine_flag_refused_by_the_agents_table_is_answered_in_chinese(admin_api, cluster):
    """The agent's table (no Django there) raises English templates; the console
    shows them in the reader's language, the refusal reason included."""
    version = ModelVersion.objects.create(
        model=Model.objects.create(name="qwen"),
        label="v1",
        path="/srv/models/qwen/v1",
        format="safetensors",
        state="ready",
    )
    body = {
        "name": "chat",
        "cluster": cluster.pk,
        "model_version": version.pk,
        "engine": "vllm",
        "engine_args": ["--trust-remote-code"],
        "replicas": 1,
        "port": 9300,
        "placement": {"mode": "auto", "gpus_per_replica": 1, "min_free_gib": 0},
    }
    chinese = admin_api.post(
        "/api/v1/deployments/", body, format="json", HTTP_ACCEPT_LANGUAGE="zh-Hans"
    )
    english = admin_api.post("/api/v1/deployments/", body, format="json")

    reason = "it runs Python code shipped with the model; Hangar never allows it"
    template = "%(flag)s is not allowed for %(engine)s: %(reason)s"
    assert chinese.status_code == 400, chinese.json()
    assert field_errors(chinese, "engine_args") == [
        zh(template, flag="--trust-remote-code", engine="vllm", reason=zh(reason))
    ]
    assert field_errors(english, "engine_args") == [
        template % {"flag": "--trust-remote-code", "engine": "vllm", "reason": reason}
    ]
    assert not Deployment.objects.exists()


def test_every_message_of_the_agents_engine_table_is_in_the_console_catalogue():
    """A new message in agents/workers/engines.py must be added to AGENT_MESSAGES."""
    from apps.deployments.engines import AGENT_MESSAGES

    source = (APPS.parent / "agents" / "workers" / "engines.py").read_text()
    raised, reasons = set(), set()
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", None) == "EngineArgsError"
            and node.args
        ):
            raised.add(ast.literal_eval(node.args[0]))
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") in (
            "_OWNED_BY_AGENT",
            "_REMOTE_CODE",
            "_PATHS",
            "_SECRET",
        ):
            reasons.add(ast.literal_eval(node.value))
    # Raised while building a worker's argv on the node, never while validating a request.
    agent_only = {
        "llama.cpp needs a .gguf file in the model version",
        "a generic worker needs a command",
        "the command names {api_key_file} but this worker has no API key",
    }
    assert len(raised) > 10 and len(reasons) == 4
    assert (raised - agent_only) | reasons == set(AGENT_MESSAGES)
    for text in AGENT_MESSAGES:
        zh(text)  # each has a translation


@pytest.mark.django_db
def test_a_service_refusal_is_translated_when_it_is_answered(admin_api, cluster):
    """Placement fails in apps.deployments.placement, below the view; the message is
    rendered in the request's language when the API answers."""
    version = ModelVersion.objects.create(
        model=Model.objects.create(name="qwen"),
        label="v1",
        path="/srv/models/qwen/v1",
        format="gguf",
        state="ready",
    )
    body = {
        "name": "chat",
        "cluster": cluster.pk,
        "model_version": version.pk,
        "engine": "reference",
        "engine_args": [],
        "replicas": 1,
        "port": 9300,
        "placement": {"mode": "auto", "gpus_per_replica": 1, "min_free_gib": 0},
    }

    chinese = admin_api.post(
        "/api/v1/deployments/", body, format="json", HTTP_ACCEPT_LANGUAGE="zh-Hans"
    )
    english = admin_api.post("/api/v1/deployments/", body, format="json", HTTP_ACCEPT_LANGUAGE="en")

    message = (
        "No online node in %(cluster)s has %(gpus)d free GPU(s) with at least "
        "%(gib).0f GiB free for replica %(slot)d."
    )
    params = {"cluster": cluster.name, "gpus": 1, "gib": 0, "slot": 0}
    assert chinese.status_code == 400, chinese.json()
    assert chinese.json()["detail"] == zh(message, **params)
    assert english.status_code == 400
    assert english.json()["detail"] == message % params
    assert not Deployment.objects.exists()


# --- pages ---------------------------------------------------------------------------


@pytest.fixture
def chinese_admin(make_user):
    """An administrator who chose 简体中文 with the header's language switch."""
    client = Client()
    client.force_login(make_user("admin-zh", "admin"))
    switched = client.post("/i18n/setlang/", {"language": "zh-hans", "next": "/"})
    assert switched.status_code == 302
    return client


@pytest.mark.django_db
def test_a_rule_form_error_is_shown_in_chinese(chinese_admin, cluster):
    form = {**CLUSTER_RULE_WITHOUT_CLUSTER, "cluster": "", "clear_threshold": "", "enabled": "on"}

    response = chinese_admin.post("/alerts/rules/new/", form)

    page = response.content.decode()
    assert response.status_code == 400
    assert escape(zh("A cluster rule names its cluster.")) in page
    assert "A cluster rule names its cluster." not in page


@pytest.mark.django_db
def test_a_refused_deployment_page_is_chinese_and_its_audit_reason_english(chinese_admin, cluster):
    version = ModelVersion.objects.create(
        model=Model.objects.create(name="qwen"),
        label="v1",
        path="/srv/models/qwen/v1",
        format="gguf",
        state="ready",
    )

    response = chinese_admin.post(
        "/deployments/new/",
        {
            "name": "big",
            "cluster": cluster.pk,
            "model_version": version.pk,
            "engine": "reference",
            "replicas": 1,
            "port": 9300,
            "gpus_per_replica": 2,
        },
    )

    message = (
        "No online node in %(cluster)s has %(gpus)d free GPU(s) with at least "
        "%(gib).0f GiB free for replica %(slot)d."
    )
    params = {"cluster": cluster.name, "gpus": 2, "gib": 0, "slot": 0}
    assert response.status_code == 400
    assert escape(zh(message, **params)) in response.content.decode()
    event = AuditEvent.objects.order_by("-seq").first()
    assert event.outcome == "failed"
    assert event.changes["reason"] == message % params


# --- the guard -----------------------------------------------------------------------

TRANSLATORS = {
    "_",
    "gettext",
    "gettext_lazy",
    "ngettext",
    "ngettext_lazy",
    "pgettext",
    "pgettext_lazy",
}

# Raised messages that stay English on purpose: (module under apps/, exception) -> why.
# Management commands (apps/*/management/commands/) print to an operator's terminal
# and are skipped as a whole.
ENGLISH_ON_PURPOSE = {
    ("alerts/notify.py", "DeliveryFailed"): "the Celery worker stores it as the delivery's "
    "last_error, an operational record written outside any request, like a log line",
    ("alerts/robots.py", "ValueError"): "a programming guard: only robot receivers reach it",
    ("audit/models.py", "AuditImmutable"): "a programming guard: audit rows never change",
    ("core/backup.py", "BackupError"): "the one-line error of manage.py backup and restore, "
    "which run outside any request and its language, like the commands' own errors",
    ("core/forwarded.py", "ValueError"): "becomes the one-line start-up error naming "
    "HANGAR_TRUSTED_PROXIES (console and hangar-gateway alike), before any request; the "
    "module is standard library only, for the gateway",
    ("core/redis_target.py", "ValueError"): "becomes the one-line start-up error naming "
    "HANGAR_REDIS_URL / HANGAR_REDIS_SENTINELS / HANGAR_REDIS_MASTER (console and "
    "hangar-gateway alike), before any request; shared with the gateway, which has no Django",
    ("deployments/placement.py", "RuntimeError"): "a programming guard: placement runs "
    "inside the transaction that creates its workers",
    ("gateway/proxy/config.py", "ConfigError"): "the hangar-gateway process's one-line "
    "start-up error, before any request (the process has no Django and no catalogue)",
    ("inventory/broker.py", "BrokerIdentityError"): "logged by enrollment, revocation and "
    "beat's sync of Redis users, never shown to a person",
    ("registry/models.py", "ValueError"): "a programming guard: ready versions never change",
    ("telemetry/consumers.py", "*"): "websocket protocol with agents and live.js, which "
    "has no request language and never shows the text",
}


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return "?"


def _untranslated(node: ast.expr | None) -> bool:
    """Is this message, or a part of it a person reads, a bare literal?"""
    if node is None:
        return False
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, ast.Mod):  # "..." % params; the params are not the message
            return _untranslated(node.left)
        return _untranslated(node.left) or _untranslated(node.right)
    if isinstance(node, ast.Dict):  # {"field": message}: the keys are field names
        return any(_untranslated(value) for value in node.values)
    if isinstance(node, ast.List | ast.Tuple):
        return any(_untranslated(element) for element in node.elts)
    if isinstance(node, ast.Call):
        if _name(node.func) in TRANSLATORS:
            return False
        if isinstance(node.func, ast.Attribute) and node.func.attr == "format":
            return _untranslated(node.func.value)
        # lazy_message(_("..."), ...) and the like: look at what they are handed.
        return any(_untranslated(arg) for arg in node.args[:1])
    return False


def raised_literals() -> tuple[list[str], set[tuple[str, str]]]:
    found, excused = [], set()
    for path in sorted(APPS.rglob("*.py")):
        relative = path.relative_to(APPS).as_posix()
        if "/management/commands/" in f"/{relative}":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)):
                continue
            call = node.exc
            messages = [*call.args, *(keyword.value for keyword in call.keywords)]
            if not any(_untranslated(message) for message in messages):
                continue
            exception = _name(call.func)
            for key in ((relative, exception), (relative, "*")):
                if key in ENGLISH_ON_PURPOSE:
                    excused.add(key)
                    break
            else:
                found.append(f"apps/{relative}:{node.lineno}: raise {exception}(...)")
    return found, excused


def test_every_raised_message_goes_through_gettext():
    found, excused = raised_literals()
    assert not found, (
        "wrap these messages in gettext (`_()`; lazy_message from apps.core.i18n in "
        "services), add them to locale/zh_Hans (docs/ui.md), or say in "
        "ENGLISH_ON_PURPOSE why they stay English:\n" + "\n".join(found)
    )
    stale = set(ENGLISH_ON_PURPOSE) - excused
    assert not stale, f"ENGLISH_ON_PURPOSE entries that excuse nothing any more: {stale}"


def test_the_guard_sees_bare_and_formatted_literals():
    def flagged(source: str) -> bool:
        raise_node = ast.parse(source).body[0]
        return any(_untranslated(arg) for arg in raise_node.exc.args)

    assert flagged('raise ValidationError({"cluster": "A cluster rule names its cluster."})')
    assert flagged('raise PlacementError(f"{node} has no GPU {gpus}.")')
    assert flagged('raise PathRefused("%s is outside" % raw)')
    assert flagged('raise DeploymentError(lazy_message("Version %(v)s", v=v))')
    assert not flagged('raise ValidationError({"cluster": _("A cluster rule names it.")})')
    assert not flagged('raise PathRefused(lazy_message(_("%(path)s is outside"), path=raw))')
    assert not flagged('raise ValidationError({"detail": str(exc)})')
    assert not flagged('raise ValidationError({name: _("Choose one of %(c)s.") % {"c": "a, b"}})')
