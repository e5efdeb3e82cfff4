"""Every HTTP endpoint of the console, one row each: the table the role matrix
(tests/test_role_matrix.py) and the audit coverage test
(tests/audit/test_every_mutation_is_audited.py) run.

Adding an endpoint? Add ONE row to ENDPOINTS. The coverage tests fail for any
route and method without a row, so a new route cannot slip past the matrix.

A row says which policy action the route needs and what a caller who may do it
gets back. What each role may do is not written here: `expected_status` works it
out from apps/accounts/roles.py (the RBAC table itself), so the matrix checks the
enforcement in the views against the table, not against a second copy of it.

Placeholders in paths and bodies are filled from a fresh `World` per test:
  {cluster} {spare} {node} {gpu} {etoken}  objects in a cluster; for a row with
      scoped=True they are taken from inside the cluster-scoped role's clusters
      ("in") and from outside them ("out"), and the row runs for both;
  {user} {binding} {event} {token}  global objects (a person, a role binding,
      an audit event, an API token of the caller).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone

from apps.accounts.models import ApiToken, RoleBinding
from apps.accounts.policy import AUTHENTICATED, PUBLIC
from apps.accounts.roles import GLOBAL_ONLY_ACTIONS, role_actions
from apps.audit import recorder
from apps.inventory.models import GPU, Cluster, EnrollmentToken, Node, NodeState, PreflightRun
from tests.deployments.world import MODEL_DIR, model_directory

STRONG_PASSWORD = "a long passphrase nobody guesses"
LOGIN_REDIRECT = "login"  # expected_status for an anonymous visitor of a page


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    action: str  # the policy action the route declares (or PUBLIC / AUTHENTICATED)
    ok: int  # the status of an allowed call
    # "list": no object; "object": the URL names one; "create": the body names where.
    kind: str = "list"
    scoped: bool = False  # the object / body target lies in a cluster: run "in" and "out"
    view: str | None = None  # action needed to see the object (else 404); default: `action`
    body: dict | Callable | None = None  # dict with placeholders, or f(world) -> dict
    page: bool = False  # an HTML page: anonymous visitors are sent to the login page
    audit_action: str | None = None  # the audit event's action when allowed, if not `action`
    setup: Callable | None = None  # f(monkeypatch) run before the request

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}"


def _enroll_body(world: World) -> dict:
    from apps.inventory.services import create_enrollment_token

    _token, secret = create_enrollment_token(world.clusters["in"], None, 1)
    return {"token": secret, "hostname": "fresh-host"}


def _agents_answer_fast(monkeypatch, settings) -> None:
    """No agent runs here, and the matrix tests who may ask, not the round trip
    (tests/inventory does that with real agents): answer "unreachable" at once."""
    from apps.inventory import commands

    def unreachable(node, verb, *args, **kwargs):
        raise commands.NodeUnreachable(f"{node} did not answer {verb}")

    monkeypatch.setattr(commands, "ask_node", unreachable)


def _sso_on(monkeypatch, settings) -> None:
    """CAS and OIDC configured as console/settings.py does, at addresses nothing
    answers: the matrix rows ask who may call, not the identity server."""
    from console.sso import sso_settings

    nowhere = "http://127.0.0.1:9"
    for name, value in {
        "HANGAR_CAS_SERVER_URL": f"{nowhere}/cas/",
        "HANGAR_OIDC_CLIENT_ID": "hangar",
        "HANGAR_OIDC_CLIENT_SECRET": "matrix-secret",
        "HANGAR_OIDC_AUTHORIZATION_ENDPOINT": f"{nowhere}/authorize",
        "HANGAR_OIDC_TOKEN_ENDPOINT": f"{nowhere}/token",
        "HANGAR_OIDC_USERINFO_ENDPOINT": f"{nowhere}/userinfo",
        "HANGAR_OIDC_JWKS_ENDPOINT": f"{nowhere}/jwks",
    }.items():
        monkeypatch.setenv(name, value)
    # Through pytest-django's `settings` fixture, which stacks and undoes its
    # overrides in order. A layer of our own swapped into settings._wrapped was
    # put back in the wrong order against that fixture (which turns on fast MD5
    # password hashing here): MD5 stayed on for the rest of the session, so every
    # later live console refused the passwords the tests had set.
    for name, value in sso_settings().items():
        setattr(settings, name, value)


# A CAS server's single-logout request for a ticket no session holds.
_CAS_LOGOUT_REQUEST = (
    '<samlp:LogoutRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" '
    'xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="matrix" Version="2.0" '
    'IssueInstant="2026-12-01T00:00:00Z"><saml:NameID>@NOT_USED@</saml:NameID>'
    "<samlp:SessionIndex>ST-matrix-unknown</samlp:SessionIndex></samlp:LogoutRequest>"
)


INVENTORY_VIEW = "inventory.view"
E = Endpoint
ENDPOINTS: list[Endpoint] = [
    # -- accounts --------------------------------------------------------------------
    E("GET", "/api/v1/", PUBLIC, 200),
    E("GET", "/api/v1/me/", AUTHENTICATED, 200),
    E("GET", "/api/v1/users/", "accounts.view", 200),
    E("POST", "/api/v1/users/", "accounts.manage", 201, kind="create",
      body={"username": "newcomer", "password": STRONG_PASSWORD}),
    E("GET", "/api/v1/users/{user}/", "accounts.view", 200, kind="object"),
    E("PUT", "/api/v1/users/{user}/", "accounts.manage", 200, kind="object",
      view="accounts.view", body={"username": "person", "email": "p@example.org"}),
    E("PATCH", "/api/v1/users/{user}/", "accounts.manage", 200, kind="object",
      view="accounts.view", body={"first_name": "Pat"}),
    E("DELETE", "/api/v1/users/{user}/", "accounts.manage", 204, kind="object",
      view="accounts.view"),
    E("POST", "/api/v1/users/{user}/unlock/", "accounts.manage", 200, kind="object",
      view="accounts.view", audit_action="auth.unlock"),
    E("POST", "/api/v1/users/{user}/activate/", "accounts.manage", 200, kind="object",
      view="accounts.view", audit_action="accounts.user.activate"),
    E("GET", "/api/v1/role-bindings/", "accounts.view", 200),
    E("POST", "/api/v1/role-bindings/", "accounts.manage", 201, kind="create",
      body={"role": "auditor", "user": "{user}"}),
    E("GET", "/api/v1/role-bindings/{binding}/", "accounts.view", 200, kind="object"),
    E("DELETE", "/api/v1/role-bindings/{binding}/", "accounts.manage", 204, kind="object",
      view="accounts.view"),
    E("GET", "/api/v1/tokens/", AUTHENTICATED, 200),
    E("POST", "/api/v1/tokens/", AUTHENTICATED, 201, body={"name": "ci", "days": 1},
      audit_action="accounts.token.create"),
    E("GET", "/api/v1/tokens/{token}/", AUTHENTICATED, 200, kind="object"),
    E("DELETE", "/api/v1/tokens/{token}/", AUTHENTICATED, 204, kind="object",
      audit_action="accounts.token.revoke"),
    # -- audit -----------------------------------------------------------------------
    E("GET", "/api/v1/audit-events/", "audit.view", 200),
    E("GET", "/api/v1/audit-events/export/", "audit.export", 200),
    E("GET", "/api/v1/audit-events/{event}/", "audit.view", 200, kind="object"),
    # -- inventory -------------------------------------------------------------------
    E("GET", "/api/v1/clusters/", INVENTORY_VIEW, 200),
    E("POST", "/api/v1/clusters/", "inventory.change", 201, kind="create",
      body={"name": "brand-new"}),
    E("GET", "/api/v1/clusters/{cluster}/", INVENTORY_VIEW, 200, kind="object", scoped=True),
    E("PUT", "/api/v1/clusters/{cluster}/", "inventory.change", 200, kind="object",
      scoped=True, view=INVENTORY_VIEW, body={"name": "renamed", "description": "x"}),
    E("PATCH", "/api/v1/clusters/{cluster}/", "inventory.change", 200, kind="object",
      scoped=True, view=INVENTORY_VIEW, body={"description": "x"}),
    E("DELETE", "/api/v1/clusters/{spare}/", "inventory.change", 204, kind="object",
      scoped=True, view=INVENTORY_VIEW),
    E("GET", "/api/v1/nodes/", INVENTORY_VIEW, 200),
    E("GET", "/api/v1/nodes/{node}/", INVENTORY_VIEW, 200, kind="object", scoped=True),
    E("PUT", "/api/v1/nodes/{node}/", "inventory.change", 200, kind="object", scoped=True,
      view=INVENTORY_VIEW, body={"name": "renamed", "labels": {}, "cluster": "{cluster}"}),
    E("PATCH", "/api/v1/nodes/{node}/", "inventory.change", 200, kind="object", scoped=True,
      view=INVENTORY_VIEW, body={"labels": {"rack": "r1"}}),
    E("POST", "/api/v1/nodes/{node}/drain/", "inventory.change", 200, kind="object",
      scoped=True, view=INVENTORY_VIEW),
    E("POST", "/api/v1/nodes/{node}/undrain/", "inventory.change", 200, kind="object",
      scoped=True, view=INVENTORY_VIEW),
    E("POST", "/api/v1/nodes/{node}/retire/", "inventory.enroll", 200, kind="object",
      scoped=True, view=INVENTORY_VIEW),
    E("POST", "/api/v1/nodes/{node}/revoke-credential/", "inventory.enroll", 200,
      kind="object", scoped=True, view=INVENTORY_VIEW),
    E("POST", "/api/v1/nodes/{node}/ping/", INVENTORY_VIEW, 504, kind="object", scoped=True,
      setup=_agents_answer_fast),
    E("POST", "/api/v1/nodes/{node}/collect-facts/", "inventory.change", 504, kind="object",
      scoped=True, view=INVENTORY_VIEW, setup=_agents_answer_fast),
    E("GET", "/api/v1/nodes/{node}/metrics/?metric=gpu.0.temperature", "telemetry.view", 200,
      kind="object", scoped=True, view=INVENTORY_VIEW),
    E("POST", "/api/v1/nodes/{node}/preflight/", "inventory.change", 504, kind="object",
      scoped=True, view=INVENTORY_VIEW, setup=_agents_answer_fast),
    E("GET", "/api/v1/nodes/{node}/preflight-runs/", INVENTORY_VIEW, 200, kind="object",
      scoped=True),
    E("POST", "/api/v1/nodes/{node}/preflight-override/", "inventory.change", 200,
      kind="object", scoped=True, view=INVENTORY_VIEW, body={"reason": "known fault"}),
    E("GET", "/api/v1/gpus/", INVENTORY_VIEW, 200),
    E("GET", "/api/v1/gpus/{gpu}/", INVENTORY_VIEW, 200, kind="object", scoped=True),
    E("POST", "/api/v1/gpus/{gpu}/cordon/", "inventory.change", 200, kind="object",
      scoped=True, view=INVENTORY_VIEW, body={"reason": "fan swap"}),
    E("POST", "/api/v1/gpus/{gpu}/uncordon/", "inventory.change", 200, kind="object",
      scoped=True, view=INVENTORY_VIEW),
    E("GET", "/api/v1/health-policy/", INVENTORY_VIEW, 200),
    E("PUT", "/api/v1/health-policy/", "settings.manage", 200,
      body={"critical_xids": [48, 79, 95], "stop_workers_when_unhealthy": True}),
    E("PATCH", "/api/v1/health-policy/", "settings.manage", 200,
      body={"degrade_on_link_gen_below_max": True}),
    E("GET", "/api/v1/enrollment-tokens/", "inventory.enroll", 200),
    E("POST", "/api/v1/enrollment-tokens/", "inventory.enroll", 201, kind="create",
      scoped=True, body={"cluster": "{cluster}", "hours": 1}),
    E("GET", "/api/v1/enrollment-tokens/{etoken}/", "inventory.enroll", 200, kind="object",
      scoped=True),
    E("DELETE", "/api/v1/enrollment-tokens/{etoken}/", "inventory.enroll", 204,
      kind="object", scoped=True),
    E("POST", "/api/v1/agent/enroll/", PUBLIC, 201, body=_enroll_body,
      audit_action="inventory.enroll"),
    E("GET", "/metrics", "telemetry.view", 200),
    E("GET", "/", INVENTORY_VIEW, 200, page=True),
    E("GET", "/nodes/", INVENTORY_VIEW, 200, page=True),
    E("GET", "/nodes/{node}/", INVENTORY_VIEW, 200, kind="object", scoped=True, page=True),
    E("POST", "/nodes/{node}/drain/", "inventory.change", 302, kind="object", scoped=True,
      view=INVENTORY_VIEW, page=True),
    E("POST", "/nodes/{node}/undrain/", "inventory.change", 302, kind="object", scoped=True,
      view=INVENTORY_VIEW, page=True),
    E("POST", "/nodes/{node}/preflight/", "inventory.change", 302, kind="object", scoped=True,
      view=INVENTORY_VIEW, page=True, setup=_agents_answer_fast),
    E("POST", "/nodes/{node}/preflight/override/", "inventory.change", 302, kind="object",
      scoped=True, view=INVENTORY_VIEW, page=True),
    E("POST", "/nodes/{node}/gpus/0/cordon/", "inventory.change", 302, kind="object",
      scoped=True, view=INVENTORY_VIEW, page=True),
    E("POST", "/nodes/{node}/gpus/0/uncordon/", "inventory.change", 302, kind="object",
      scoped=True, view=INVENTORY_VIEW, page=True),
    E("POST", "/nodes/{node}/retire/", "inventory.enroll", 302, kind="object", scoped=True,
      view=INVENTORY_VIEW, page=True),
    E("POST", "/nodes/{node}/revoke-credential/", "inventory.enroll", 302, kind="object",
      scoped=True, view=INVENTORY_VIEW, page=True),
    E("GET", "/enroll/", "inventory.enroll", 200, page=True),
    E("POST", "/enroll/", "inventory.enroll", 200, kind="create", scoped=True, page=True,
      body={"cluster": "{cluster}", "hours": 1}),
    # -- pages: accounts and audit ---------------------------------------------------
    E("POST", "/i18n/setlang/", PUBLIC, 302, page=True, audit_action="accounts.set-language",
      body={"language": "zh-hans", "next": "/"}),
    E("GET", "/tokens/", AUTHENTICATED, 200, page=True),
    E("POST", "/tokens/", AUTHENTICATED, 200, page=True, body={"name": "ci", "days": 1},
      audit_action="accounts.token.create"),
    E("POST", "/tokens/{token}/revoke/", AUTHENTICATED, 302, kind="object", page=True,
      audit_action="accounts.token.revoke"),
    E("GET", "/users/", "accounts.view", 200, page=True),
    E("POST", "/users/new/", "accounts.manage", 302, kind="create", page=True,
      body={"username": "newcomer", "password": STRONG_PASSWORD}),
    E("POST", "/users/{user}/deactivate/", "accounts.manage", 302, kind="object",
      view="accounts.view", page=True),
    E("POST", "/users/bindings/", "accounts.manage", 302, kind="create", page=True,
      body={"role": "auditor", "user": "{user}"}),
    E("POST", "/users/bindings/{binding}/delete/", "accounts.manage", 302, kind="object",
      view="accounts.view", page=True),
    E("GET", "/audit/", "audit.view", 200, page=True),
    E("GET", "/audit/chain/", "audit.view", 200, page=True),
    E("GET", "/alerts/", "alerts.view", 200, page=True),
    E("GET", "/alerts/count/", "alerts.view", 200, page=True),
    E("GET", "/models/", "models.view", 200, page=True),
    E("POST", "/models/new/", "models.manage", 302, kind="create", page=True,
      body={"name": "page-model"}),
    E("POST", "/models/versions/", "models.manage", 302, kind="create", page=True,
      setup=model_directory, body=lambda world: {
          "model": world.extra["model"]["in"], "label": "v9", "format": "gguf",
          "path": MODEL_DIR["path"]}),
    E("POST", "/models/versions/{spare_version}/retire/", "models.manage", 302,
      kind="object", view="models.view", page=True),
    E("POST", "/alerts/{alert}/acknowledge/", "alerts.acknowledge", 302, kind="object",
      scoped=True, view="alerts.view", page=True, body={"note": "on it"}),
    E("GET", "/alerts/rules/", "alerts.view", 200, page=True),
    E("POST", "/alerts/rules/new/", "alerts.manage", 302, kind="create", scoped=True,
      page=True, body={"name": "page rule", "metric": "gpu.*.temperature", "scope": "cluster",
                       "cluster": "{cluster}", "comparison": ">", "threshold": 90}),
    E("GET", "/alerts/rules/{rule}/", "alerts.manage", 200, kind="object", scoped=True,
      view="alerts.view", page=True),
    E("POST", "/alerts/rules/{rule}/", "alerts.manage", 302, kind="object", scoped=True,
      view="alerts.view", page=True, body={"name": "renamed", "metric": "gpu.*.temperature",
                                           "scope": "cluster", "cluster": "{cluster}",
                                           "comparison": ">", "threshold": 90}),
    E("POST", "/alerts/rules/{rule}/enable/", "alerts.manage", 302, kind="object",
      scoped=True, view="alerts.view", page=True, body={"enabled": "false"}),
    E("POST", "/alerts/rules/{rule}/delete/", "alerts.manage", 302, kind="object",
      scoped=True, view="alerts.view", page=True),
    E("GET", "/alerts/silences/", "alerts.view", 200, page=True),
    E("POST", "/alerts/silences/new/", "alerts.acknowledge", 302, kind="create", scoped=True,
      page=True, audit_action="alerts.silence",
      body={"cluster": "{cluster}", "ends_at": "2099-01-01T00:00", "reason": "works"}),
    E("POST", "/alerts/silences/{silence}/expire/", "alerts.acknowledge", 302, kind="object",
      scoped=True, view="alerts.view", page=True, audit_action="alerts.silence.expire"),
    E("GET", "/alerts/receivers/", "alerts.manage", 200, page=True),
    E("POST", "/alerts/receivers/new/", "alerts.manage", 302, kind="create", page=True,
      body={"name": "pager", "kind": "webhook", "url": "https://pager.example.org/h",
            "secret": "s3cret", "enabled": "on"}),
    E("GET", "/alerts/receivers/{receiver}/", "alerts.manage", 200, kind="object", page=True),
    E("POST", "/alerts/receivers/{receiver}/", "alerts.manage", 302, kind="object", page=True,
      body={"name": "renamed", "kind": "email", "emails": "ops@example.org"}),
    E("POST", "/alerts/receivers/{receiver}/delete/", "alerts.manage", 302, kind="object",
      page=True),
    E("GET", "/alerts/deliveries/", "alerts.manage", 200, page=True),
    E("GET", "/deployments/", "deployments.view", 200, page=True),
    E("POST", "/deployments/new/", "deployments.manage", 302, kind="create", page=True,
      audit_action="deployments.create", body=lambda world: {
          "name": "page-new", "cluster": world.clusters["in"].pk,
          "model_version": world.extra["version"]["in"], "engine": "vllm",
          "engine_args": "--max-model-len 4096", "replicas": 1, "port": 9200,
          "placement_mode": "pinned",
          "pin": GPU.objects.get(node=world.extra["work_node"]["in"], index=1).pk}),
    E("GET", "/deployments/{deployment}/", "deployments.view", 200, kind="object",
      scoped=True, page=True),
    E("POST", "/deployments/{deployment}/start/", "deployments.operate", 302, kind="object",
      scoped=True, view="deployments.view", page=True, audit_action="deployments.start"),
    E("POST", "/deployments/{deployment}/stop/", "deployments.operate", 302, kind="object",
      scoped=True, view="deployments.view", page=True, audit_action="deployments.stop"),
    E("POST", "/deployments/{deployment}/scale/", "deployments.operate", 302, kind="object",
      scoped=True, view="deployments.view", page=True, body={"replicas": 1},
      audit_action="deployments.scale"),
    E("POST", "/deployments/{deployment}/rollout/", "deployments.operate", 302,
      kind="object", scoped=True, view="deployments.view", page=True,
      body={"model_version": "{version2}"}, audit_action="deployments.rollout"),
    E("POST", "/deployments/{deployment}/rollback/", "deployments.operate", 302,
      kind="object", scoped=True, view="deployments.view", page=True,
      audit_action="deployments.rollback"),
    E("POST", "/deployments/workers/{worker}/restart/", "deployments.operate", 302,
      kind="object", scoped=True, view="deployments.view", page=True,
      audit_action="deployments.restart-worker"),
    # -- registry and deployments (objects from tests/deployments/world.py) ----------
    E("GET", "/api/v1/models/", "models.view", 200),
    E("POST", "/api/v1/models/", "models.manage", 201, kind="create",
      body={"name": "new-model", "task": "chat"}),
    E("GET", "/api/v1/models/{model}/", "models.view", 200, kind="object"),
    E("PUT", "/api/v1/models/{model}/", "models.manage", 200, kind="object",
      view="models.view", body={"name": "renamed-model", "task": "completion"}),
    E("PATCH", "/api/v1/models/{model}/", "models.manage", 200, kind="object",
      view="models.view", body={"family": "Qwen"}),
    E("GET", "/api/v1/model-versions/", "models.view", 200),
    E("POST", "/api/v1/model-versions/", "models.manage", 201, kind="create",
      setup=model_directory, body=lambda world: {
          "model": world.extra["model"]["in"], "label": "v9", "format": "gguf",
          "path": MODEL_DIR["path"]}),
    E("GET", "/api/v1/model-versions/{version}/", "models.view", 200, kind="object"),
    E("DELETE", "/api/v1/model-versions/{draft}/", "models.manage", 204, kind="object",
      view="models.view"),
    E("POST", "/api/v1/model-versions/{spare_version}/retire/", "models.manage", 200,
      kind="object", view="models.view"),
    E("GET", "/api/v1/deployments/", "deployments.view", 200),
    E("POST", "/api/v1/deployments/", "deployments.manage", 201, kind="create", scoped=True,
      audit_action="deployments.create", body={
          "name": "matrix-new", "cluster": "{cluster}", "model_version": "{version}",
          "engine": "vllm", "engine_args": ["--max-model-len", "4096"], "replicas": 1,
          "port": 9200, "placement": {"mode": "pinned",
                                      "targets": [{"node": "{work_node}", "gpus": [1]}]}}),
    E("GET", "/api/v1/deployments/{deployment}/", "deployments.view", 200, kind="object",
      scoped=True),
    E("POST", "/api/v1/deployments/{deployment}/start/", "deployments.operate", 200,
      kind="object", scoped=True, view="deployments.view", audit_action="deployments.start"),
    E("POST", "/api/v1/deployments/{deployment}/stop/", "deployments.operate", 200,
      kind="object", scoped=True, view="deployments.view", audit_action="deployments.stop"),
    E("POST", "/api/v1/deployments/{deployment}/scale/", "deployments.operate", 200,
      kind="object", scoped=True, view="deployments.view", body={"replicas": 1},
      audit_action="deployments.scale"),
    E("POST", "/api/v1/deployments/{deployment}/rollout/", "deployments.operate", 200,
      kind="object", scoped=True, view="deployments.view", body={"model_version": "{version2}"},
      audit_action="deployments.rollout"),
    E("POST", "/api/v1/deployments/{deployment}/rollback/", "deployments.operate", 200,
      kind="object", scoped=True, view="deployments.view", audit_action="deployments.rollback"),
    E("GET", "/api/v1/workers/", "deployments.view", 200),
    E("GET", "/api/v1/workers/{worker}/", "deployments.view", 200, kind="object", scoped=True),
    E("POST", "/api/v1/workers/{worker}/restart/", "deployments.operate", 200, kind="object",
      scoped=True, view="deployments.view", audit_action="deployments.restart-worker"),
    E("GET", "/api/v1/workers/{worker}/logs/", "deployments.view", 504, kind="object",
      scoped=True, setup=_agents_answer_fast),
    E("GET", "/api/v1/workers/{worker}/runs/", "deployments.view", 504, kind="object",
      scoped=True, setup=_agents_answer_fast),
    E("GET", "/api/v1/workers/{worker}/runs/1/log/", "deployments.view", 504, kind="object",
      scoped=True, setup=_agents_answer_fast),
    # -- alerts (objects from tests/alerts/world.py) ---------------------------------
    E("GET", "/api/v1/alert-rules/", "alerts.view", 200),
    E("POST", "/api/v1/alert-rules/", "alerts.manage", 201, kind="create", scoped=True,
      body={"name": "new rule", "metric": "gpu.*.temperature", "scope": "cluster",
            "cluster": "{cluster}", "comparison": ">", "threshold": 90}),
    E("GET", "/api/v1/alert-rules/{rule}/", "alerts.view", 200, kind="object", scoped=True),
    E("PUT", "/api/v1/alert-rules/{rule}/", "alerts.manage", 200, kind="object", scoped=True,
      view="alerts.view", body={"name": "renamed", "metric": "gpu.*.temperature",
                                "scope": "cluster", "cluster": "{cluster}", "comparison": ">",
                                "threshold": 90}),
    E("PATCH", "/api/v1/alert-rules/{rule}/", "alerts.manage", 200, kind="object",
      scoped=True, view="alerts.view", body={"threshold": 95}),
    E("DELETE", "/api/v1/alert-rules/{rule}/", "alerts.manage", 204, kind="object",
      scoped=True, view="alerts.view"),
    E("GET", "/api/v1/alerts/", "alerts.view", 200),
    E("GET", "/api/v1/alerts/{alert}/", "alerts.view", 200, kind="object", scoped=True),
    E("POST", "/api/v1/alerts/{alert}/acknowledge/", "alerts.acknowledge", 200,
      kind="object", scoped=True, view="alerts.view", body={"note": "on it"}),
    E("GET", "/api/v1/silences/", "alerts.view", 200),
    E("POST", "/api/v1/silences/", "alerts.acknowledge", 201, kind="create", scoped=True,
      body={"cluster": "{cluster}", "ends_at": "2099-01-01T00:00:00Z", "reason": "works"},
      audit_action="alerts.silence"),
    E("GET", "/api/v1/silences/{silence}/", "alerts.view", 200, kind="object", scoped=True),
    E("POST", "/api/v1/silences/{silence}/expire/", "alerts.acknowledge", 200, kind="object",
      scoped=True, view="alerts.view", audit_action="alerts.silence.expire"),
    E("GET", "/api/v1/receivers/", "alerts.manage", 200),
    E("POST", "/api/v1/receivers/", "alerts.manage", 201, kind="create",
      body={"name": "pager", "kind": "webhook", "url": "https://pager.example.org/h"}),
    E("GET", "/api/v1/receivers/{receiver}/", "alerts.manage", 200, kind="object"),
    E("PUT", "/api/v1/receivers/{receiver}/", "alerts.manage", 200, kind="object",
      body={"name": "renamed", "kind": "email", "emails": ["ops@example.org"]}),
    E("PATCH", "/api/v1/receivers/{receiver}/", "alerts.manage", 200, kind="object",
      body={"enabled": False}),
    E("DELETE", "/api/v1/receivers/{receiver}/", "alerts.manage", 204, kind="object"),
    E("GET", "/api/v1/alert-deliveries/", "alerts.manage", 200),
    E("GET", "/api/v1/alert-deliveries/{delivery}/", "alerts.manage", 200, kind="object"),
    # -- gateway (objects from tests/gateway/world.py) -------------------------------
    E("GET", "/api/v1/routes/", "gateway.view", 200),
    E("POST", "/api/v1/routes/", "gateway.manage", 201, kind="create",
      body={"name": "matrix-new", "targets": [{"deployment": "{deployment}", "weight": 5}]}),
    E("GET", "/api/v1/routes/{route}/", "gateway.view", 200, kind="object"),
    E("PUT", "/api/v1/routes/{route}/", "gateway.manage", 200, kind="object",
      view="gateway.view", body={"name": "renamed-route", "enabled": True,
                                 "targets": [{"deployment": "{deployment}", "weight": 7}]}),
    E("PATCH", "/api/v1/routes/{route}/", "gateway.manage", 200, kind="object",
      view="gateway.view", body={"description": "patched"}),
    E("DELETE", "/api/v1/routes/{route}/", "gateway.manage", 204, kind="object",
      view="gateway.view"),
    E("GET", "/api/v1/service-accounts/", "gateway.manage", 200),
    E("POST", "/api/v1/service-accounts/", "gateway.manage", 201, kind="create",
      body={"name": "library-search"}),
    E("GET", "/api/v1/service-accounts/{saccount}/", "gateway.manage", 200, kind="object"),
    E("PUT", "/api/v1/service-accounts/{saccount}/", "gateway.manage", 200, kind="object",
      body={"name": "renamed-app", "description": "x", "is_active": True}),
    E("PATCH", "/api/v1/service-accounts/{saccount}/", "gateway.manage", 200, kind="object",
      body={"is_active": False}),
    E("GET", "/api/v1/consumer-keys/", AUTHENTICATED, 200),
    E("POST", "/api/v1/consumer-keys/", AUTHENTICATED, 201, audit_action="gateway.key.create",
      body={"name": "matrix", "days": 1, "all_routes": True}),
    E("GET", "/api/v1/consumer-keys/{ckey}/", AUTHENTICATED, 200, kind="object"),
    E("POST", "/api/v1/consumer-keys/{ckey}/revoke/", AUTHENTICATED, 200, kind="object",
      audit_action="gateway.key.revoke"),
    E("POST", "/api/v1/consumer-keys/{pkey}/approve/", AUTHENTICATED, 200, kind="object",
      audit_action="gateway.key.approve"),
    E("GET", "/api/v1/open-routes/", "gateway.use", 200),
    E("GET", "/api/v1/projects/", AUTHENTICATED, 200),
    E("POST", "/api/v1/projects/", "projects.manage", 201, kind="create",
      body={"name": "new-project", "weight": 300}),
    E("GET", "/api/v1/projects/{project}/", AUTHENTICATED, 200, kind="object"),
    E("PATCH", "/api/v1/projects/{project}/", AUTHENTICATED, 200, kind="object",
      body={"require_approval": False}, audit_action="gateway.project.change"),
    E("GET", "/api/v1/project-members/", AUTHENTICATED, 200),
    E("POST", "/api/v1/project-members/", AUTHENTICATED, 201,
      body={"project": "matrix-project", "ldap_group": "cn=cs,ou=groups,dc=example,dc=edu"},
      audit_action="gateway.project.member.add"),
    E("GET", "/api/v1/project-members/{member}/", AUTHENTICATED, 200, kind="object"),
    E("PATCH", "/api/v1/project-members/{member}/", AUTHENTICATED, 200, kind="object",
      body={"role": "owner"}, audit_action="gateway.project.member.change"),
    E("DELETE", "/api/v1/project-members/{member}/", AUTHENTICATED, 204, kind="object",
      audit_action="gateway.project.member.remove"),
    E("GET", "/api/v1/limits/", AUTHENTICATED, 200),
    E("POST", "/api/v1/limits/", "projects.manage", 201, kind="create",
      body={"scope": "each-member", "project": "matrix-project", "route": "matrix-route",
            "tokens_per_minute": 1000}),
    E("GET", "/api/v1/limits/{limit}/", AUTHENTICATED, 200, kind="object"),
    E("PATCH", "/api/v1/limits/{limit}/", "projects.manage", 200, kind="object",
      body={"tokens_per_week": 50_000}),
    E("DELETE", "/api/v1/limits/{limit}/", "projects.manage", 204, kind="object"),
    E("GET", "/api/v1/gateway-policy/", AUTHENTICATED, 200),
    E("PATCH", "/api/v1/gateway-policy/", "projects.manage", 200,
      body={"max_key_days": 30}),
    E("GET", "/api/v1/usage/?range=7d&group_by=user", AUTHENTICATED, 200),
    E("GET", "/api/v1/usage/energy/", AUTHENTICATED, 200),
    E("GET", "/projects/", AUTHENTICATED, 200, page=True),
    E("POST", "/projects/new/", "projects.manage", 302, kind="create", page=True,
      body={"name": "page-project", "weight": 200}),
    E("GET", "/projects/{project}/", AUTHENTICATED, 200, kind="object", page=True),
    E("POST", "/projects/{project}/", AUTHENTICATED, 302, kind="object", page=True,
      body={"title": "Matrix course", "require_approval": "on"},
      audit_action="gateway.project.change"),
    E("POST", "/projects/{project}/members/", AUTHENTICATED, 302, kind="object", page=True,
      body={"ldap_group": "cn=nlp,ou=groups,dc=example,dc=edu"},
      audit_action="gateway.project.member.add"),
    E("POST", "/projects/members/{member}/delete/", AUTHENTICATED, 302, kind="object",
      page=True, audit_action="gateway.project.member.remove"),
    E("POST", "/projects/{project}/limits/", "projects.manage", 302, kind="object", page=True,
      body={"scope": "each-key", "requests_per_minute": 5}),
    E("POST", "/limits/{limit}/delete/", "projects.manage", 302, kind="object", page=True),
    E("POST", "/keys/{pkey}/approve/", AUTHENTICATED, 302, kind="object", page=True,
      audit_action="gateway.key.approve"),
    E("GET", "/policy/", "projects.manage", 200, page=True),
    E("POST", "/policy/", "projects.manage", 302, page=True,
      body={"self_service": "on", "keys_without_project": "on", "max_key_days": 30}),
    E("GET", "/usage/", AUTHENTICATED, 200, page=True),
    E("GET", "/usage/mine/", AUTHENTICATED, 200, page=True),
    E("GET", "/usage/export/?range=7d", AUTHENTICATED, 200, page=True),
    E("GET", "/routes/", "gateway.view", 200, page=True),
    E("POST", "/routes/new/", "gateway.manage", 302, kind="create", page=True,
      body={"name": "page-route", "target_deployment": "{deployment}", "target_weight": 9,
            "enabled": "on"}),
    E("GET", "/routes/{route}/", "gateway.manage", 200, kind="object", view="gateway.view",
      page=True),
    E("POST", "/routes/{route}/", "gateway.manage", 302, kind="object", view="gateway.view",
      page=True, body={"name": "renamed-route", "target_deployment": "{deployment}",
                       "target_weight": 3, "enabled": "on"}),
    E("POST", "/routes/{route}/delete/", "gateway.manage", 302, kind="object",
      view="gateway.view", page=True),
    E("GET", "/keys/", AUTHENTICATED, 200, page=True),
    E("POST", "/keys/", AUTHENTICATED, 200, page=True, audit_action="gateway.key.create",
      body={"name": "page key", "days": 1, "all_routes": "on"}),
    E("GET", "/keys/all/", "keys.manage", 200, page=True),
    E("POST", "/keys/{ckey}/revoke/", AUTHENTICATED, 302, kind="object", page=True,
      audit_action="gateway.key.revoke"),
    # -- the first-run demo (apps/gateway/demo.py): none in the World, so removal is 409
    E("GET", "/api/v1/demo/", "settings.manage", 200),
    E("POST", "/api/v1/demo/remove/", "settings.manage", 409),
    E("POST", "/demo/remove/", "settings.manage", 302, page=True),
    # -- core and login --------------------------------------------------------------
    E("GET", "/healthz", PUBLIC, 200),
    E("GET", "/api/schema/", PUBLIC, 200),
    E("GET", "/api/docs/", PUBLIC, 200),
    E("GET", "/login/", PUBLIC, 200, page=True),
    E("POST", "/login/", PUBLIC, 302, page=True, audit_action="auth.login",
      body={"username": "person", "password": STRONG_PASSWORD}),
    E("POST", "/logout/", AUTHENTICATED, 302, page=True, audit_action="auth.logout"),
    # -- single sign-on (with a CAS and an OIDC server configured; none is asked here:
    # tests/accounts/test_sso.py logs in against real ones) --------------------------
    E("GET", "/sso/cas/login/", PUBLIC, 302, page=True, setup=_sso_on),
    E("POST", "/sso/cas/login/", PUBLIC, 302, page=True, setup=_sso_on,
      audit_action="auth.sso-logout", body={"logoutRequest": _CAS_LOGOUT_REQUEST}),
    E("GET", "/sso/oidc/login/", PUBLIC, 302, page=True, setup=_sso_on),
    E("GET", "/sso/oidc/callback/", PUBLIC, 302, page=True, setup=_sso_on),
    # No password step came first, so the code step is refused (a clear 400).
    E("POST", "/login/code/", PUBLIC, 400, page=True, audit_action="auth.login.second-factor",
      body={"code": "123456"}),
    E("GET", "/account/password/", AUTHENTICATED, 200, page=True),
    E("POST", "/account/password/", AUTHENTICATED, 302, page=True,
      audit_action="accounts.password.change",
      body={"current_password": "correct horse battery staple",
            "new_password": "A brand-new passphrase 2026",
            "new_password_again": "A brand-new passphrase 2026"}),
    E("GET", "/account/second-factor/", AUTHENTICATED, 200, page=True),
    # A code that cannot match: the enrolment is refused with 400, and audited.
    E("POST", "/account/second-factor/", AUTHENTICATED, 400, page=True,
      audit_action="accounts.second-factor.enrol", body={"code": "abc"}),
    E("GET", "/security/policy/", "security.view", 200, page=True),
]  # fmt: skip


# -- who: the subjects of the matrix --------------------------------------------------

#: subject -> role bindings; a binding's scope is None (everywhere) or "in".
SUBJECTS: dict[str, list[tuple[str, str | None]] | None] = {
    "anonymous": None,
    "viewer": [("viewer", None)],
    "operator": [("operator", None)],
    "model-manager": [("model-manager", None)],
    "auditor": [("auditor", None)],
    "admin": [("admin", None)],
    "cluster-operator": [("operator", "in")],
    "system-admin": [("system-admin", None)],
    "security-admin": [("security-admin", None)],
    "audit-admin": [("audit-admin", None)],
    "consumer": [("consumer", None)],
}

#: The subjects whose rights separation of duties changes: the matrix runs them
#: again with HANGAR_SEPARATION_OF_DUTIES=true (where `admin` grants nothing).
SEPARATION_SUBJECTS = ("admin", "auditor", "system-admin", "security-admin", "audit-admin")


def actions_at(subject: str, where: str | None) -> set[str]:
    """What roles.py grants `subject` at `where` (None: everywhere, i.e. global objects)."""
    actions: set[str] = set()
    table = role_actions()  # the table of the mode the test runs in
    for role, scope in SUBJECTS[subject] or ():
        if scope is None:
            actions |= table[role]
        elif scope == where:
            actions |= table[role] - GLOBAL_ONLY_ACTIONS
    return actions


def actions_anywhere(subject: str) -> set[str]:
    return actions_at(subject, None) | actions_at(subject, "in")


def expected_status(row: Endpoint, subject: str, where: str | None) -> int | str:
    """The status the policy promises: row.ok, 403, 404, 401 or LOGIN_REDIRECT.

    The order follows what a caller may learn: without the right anywhere, 403;
    an object they cannot even see, 404 (its existence stays hidden); an object
    they see but may not act on, 403.
    """
    if row.action == PUBLIC:
        return row.ok
    if SUBJECTS[subject] is None:
        return LOGIN_REDIRECT if row.page else 401
    if row.action == AUTHENTICATED:
        return row.ok
    if row.action not in actions_anywhere(subject):
        return 403
    if row.kind == "object" and (row.view or row.action) not in actions_at(subject, where):
        return 404
    if row.kind in ("object", "create") and row.action not in actions_at(subject, where):
        return 403
    return row.ok


def wheres(row: Endpoint) -> list[str | None]:
    return ["in", "out"] if row.scoped else [None]


# -- the world each matrix case runs in -------------------------------------------------

OUTSIDE_NAMES = ("outside-cluster", "outside-node")


@dataclass
class World:
    """Objects the rows point at, inside and outside the scoped role's clusters."""

    clusters: dict[str, Cluster] = field(default_factory=dict)
    spares: dict[str, Cluster] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    gpus: dict[str, GPU] = field(default_factory=dict)
    etokens: dict[str, EnrollmentToken] = field(default_factory=dict)
    person: object = None
    binding: RoleBinding | None = None
    event_seq: int = 0
    token: ApiToken | None = None
    # More placeholders from apps' own builders: name -> place ("in"/"out") -> pk.
    extra: dict[str, dict[str, int]] = field(default_factory=dict)
    # Rows with a `user` that become the caller's, as the API token does.
    owned: list = field(default_factory=list)

    def values(self, where: str | None) -> dict[str, object]:
        place = where or "in"
        return {
            **{name: pks[place] for name, pks in self.extra.items()},
            "cluster": self.clusters[place].pk,
            "spare": self.spares[place].pk,
            "node": self.nodes[place].pk,
            "gpu": self.gpus[place].pk,
            "etoken": self.etokens[place].pk,
            "user": self.person.pk,
            "binding": self.binding.pk,
            "event": self.event_seq,
            "token": self.token.pk,
        }

    def path(self, row: Endpoint, where: str | None) -> str:
        return row.path.format(**self.values(where))

    def body(self, row: Endpoint, where: str | None):
        if row.body is None:
            return None
        if callable(row.body):
            return row.body(self)
        values = self.values(where)

        def fill(value):
            if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
                return values[value[1:-1]]
            if isinstance(value, dict):
                return {k: fill(v) for k, v in value.items()}
            if isinstance(value, list):
                return [fill(v) for v in value]
            return value

        return fill(row.body)


def build_world(caller) -> World:
    from apps.inventory.services import create_enrollment_token

    world = World()
    names = {"in": ("campus-a", "gpu-a1"), "out": OUTSIDE_NAMES}
    for place, (cluster_name, hostname) in names.items():
        cluster = Cluster.objects.create(name=cluster_name)
        world.clusters[place] = cluster
        world.spares[place] = Cluster.objects.create(name=f"{cluster_name}-spare")
        # Draining, so that both drain and undrain are valid transitions.
        node = Node.objects.create(cluster=cluster, hostname=hostname, state=NodeState.DRAINING)
        world.nodes[place] = node
        # Cordoned, so that both cordon and uncordon are valid (the node drains anyway).
        world.gpus[place] = GPU.objects.create(
            node=node, index=0, name="H100", cordoned=True, cordon_reason="matrix"
        )
        world.etokens[place], _secret = create_enrollment_token(cluster, None, 1)
        # A failed preflight, so that an override is valid (the node drains anyway).
        PreflightRun.objects.create(node=node, started_at=timezone.now(), status="fail")
    world.person = get_user_model().objects.create_user("person", password=STRONG_PASSWORD)
    world.binding = RoleBinding.objects.create(role="viewer", user=world.person)
    world.event_seq = recorder.record("matrix.setup").seq
    world.token = ApiToken.objects.create(
        user=caller or world.person,
        name="existing",
        prefix=f"p{(caller or world.person).pk}",
        secret_hash="0" * 64,
        expires_at=timezone.now() + timedelta(days=1),
    )
    from tests.alerts.world import alerting_world

    world.extra.update(alerting_world(world))
    from tests.deployments.world import deployments_world

    world.extra.update(deployments_world(world))
    from tests.gateway.world import gateway_world

    world.extra.update(gateway_world(world))
    return world


def make_subject(subject: str, world: World, make_user):
    """The user for `subject` (None for anonymous), bound as SUBJECTS says."""
    bindings = SUBJECTS[subject]
    if bindings is None:
        return None
    roles = []
    for role, scope in bindings:
        if scope is None:
            roles.append(role)
        else:
            roles += [(role, world.clusters[scope]), (role, world.spares[scope])]
    return make_user(f"as-{subject}", *roles)


def perform(row: Endpoint, subject: str, where: str | None, make_user, monkeypatch, settings):
    """Build a world, log `subject` in, make the row's request.

    Returns (world, response, the audit events the request wrote).
    """
    import json
    from urllib.parse import urlencode

    from rest_framework.test import APIClient

    from apps.audit.models import AuditEvent

    if row.setup is not None:
        row.setup(monkeypatch, settings)  # pytest's and pytest-django's fixtures
    world = build_world(None)
    user = make_subject(subject, world, make_user)
    client = APIClient()
    if user is not None:
        for owned in (world.token, *world.owned):
            owned.user = user
            owned.save(update_fields=["user"])
        # A real session, as a browser has, so pages and the API see the same login.
        client.force_login(user)
    body = world.body(row, where)
    encoded = {}
    if body is not None and row.page:
        encoded = {"data": urlencode(body), "content_type": "application/x-www-form-urlencoded"}
    elif body is not None:
        encoded = {"data": json.dumps(body), "content_type": "application/json"}
    last_seq = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0
    response = client.generic(row.method, world.path(row, where), **encoded)
    return world, response, list(AuditEvent.objects.filter(seq__gt=last_seq).order_by("seq"))


# -- the routes the console serves --------------------------------------------------------

HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
MUTATING = ("POST", "PUT", "PATCH", "DELETE")


@dataclass(frozen=True)
class Route:
    route: str  # as ResolverMatch.route spells it
    name: str | None
    callback: Callable

    @property
    def drf_class(self):
        return getattr(self.callback, "cls", None)

    def methods(self) -> list[str]:
        """The methods the route answers (HEAD and OPTIONS aside)."""
        actions = getattr(self.callback, "actions", None)
        if actions:
            return [m.upper() for m in actions if m.upper() in HTTP_METHODS]
        if self.drf_class is not None:
            return [m for m in HTTP_METHODS if hasattr(self.drf_class, m.lower())]
        declared = getattr(self.callback, "policy_methods", None)
        if declared is not None:
            return [m for m in declared if m in HTTP_METHODS]
        return ["GET"]


def all_routes() -> list[Route]:
    found: list[Route] = []

    join = URLResolver._join_route  # spelled as ResolverMatch.route spells it

    def walk(patterns, prefix: str) -> None:
        for pattern in patterns:
            route = join(prefix, str(pattern.pattern))
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, route)
            elif isinstance(pattern, URLPattern):
                found.append(Route(route, pattern.name, pattern.callback))

    walk(get_resolver().url_patterns, "")
    # DRF's format-suffix twins (…\.(?P<format>[a-z0-9]+)/?$) behave like their originals.
    return [r for r in found if "(?P<format>" not in r.route]


PLACEHOLDERS = ("cluster", "spare", "node", "gpu", "etoken", "user", "binding", "event", "token")
PLACEHOLDERS += ("rule", "alert", "silence", "receiver", "delivery")  # tests/alerts/world.py
PLACEHOLDERS += ("model", "version", "version2", "spare_version", "draft", "deployment", "worker")
PLACEHOLDERS += ("route", "saccount", "ckey", "project", "member", "pkey", "limit")  # gateway


def route_of(path: str) -> str:
    """The route a row's path (placeholders and all) resolves to."""
    from django.urls import resolve

    concrete = path.split("?")[0].format(**dict.fromkeys(PLACEHOLDERS, 1))
    return resolve(concrete).route
