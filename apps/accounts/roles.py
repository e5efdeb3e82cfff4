"""Roles and the actions each grants. This table is the whole RBAC policy.

Rights are additive: a user's rights in a scope are the union of the actions of
every role bound to them (or to one of their LDAP groups) globally or in that
cluster. docs/identity.md renders this table for people.

Separation of duties (三员分立, `HANGAR_SEPARATION_OF_DUTIES=true`) swaps in a
second table, SEPARATED_ROLE_ACTIONS: the all-powerful `admin` grants nothing,
its work is split between the system, security and audit administrators, and the
audit log belongs to the audit administrator alone. `role_actions()` is the table
in force; nothing else chooses between the two.
"""

from django.conf import settings
from django.db import models


class Role(models.TextChoices):
    VIEWER = "viewer", "Viewer"
    OPERATOR = "operator", "Operator"
    MODEL_MANAGER = "model-manager", "Model manager"
    AUDITOR = "auditor", "Auditor"
    ADMIN = "admin", "Administrator"
    SYSTEM_ADMIN = "system-admin", "System administrator"
    SECURITY_ADMIN = "security-admin", "Security administrator"
    AUDIT_ADMIN = "audit-admin", "Audit administrator"
    # Uses the gateway and nothing else: routes open to them, their own keys
    # within their projects' policy, their own usage (docs/limits.md).
    CONSUMER = "consumer", "Consumer"


# Reading the inventory and telemetry comes with every role: an operator who
# cannot see the node they restart is no use. Secrets are never readable.
_READ = {
    "inventory.view",
    "telemetry.view",
    "deployments.view",
    "models.view",
    "alerts.view",
    "gateway.view",
    "gateway.use",
}

ROLE_ACTIONS: dict[str, frozenset[str]] = {
    Role.VIEWER: frozenset(_READ),
    Role.OPERATOR: frozenset(_READ | {"deployments.operate", "alerts.acknowledge"}),
    Role.MODEL_MANAGER: frozenset(_READ | {"models.manage", "gateway.manage"}),
    Role.AUDITOR: frozenset(_READ | {"audit.view", "audit.export"}),
    # The three separated administrators (三员分立); in the ordinary mode they are
    # simply smaller roles, and together they are the admin (below).
    Role.SYSTEM_ADMIN: frozenset(
        _READ
        | {
            "deployments.operate",
            "deployments.manage",
            "alerts.acknowledge",
            "alerts.manage",
            "models.manage",
            "gateway.manage",
            "inventory.change",
            "inventory.enroll",
            "settings.manage",
            "projects.manage",
        }
    ),
    # Users, role bindings, keys, 2FA and password policy, lockouts: no inventory,
    # no deployments, no audit log.
    Role.SECURITY_ADMIN: frozenset(
        {"accounts.view", "accounts.manage", "keys.manage", "security.view"}
    ),
    Role.AUDIT_ADMIN: frozenset({"audit.view", "audit.export"}),
    # No inventory, no deployments: the gateway's door only. Projects, keys and
    # usage of one's own need no action (object checks in apps.gateway.projects).
    Role.CONSUMER: frozenset({"gateway.use"}),
}
# The admin holds exactly what the three separated administrators hold between
# them: one list per duty, so the two modes cannot drift apart.
ROLE_ACTIONS[Role.ADMIN] = (
    ROLE_ACTIONS[Role.SYSTEM_ADMIN]
    | ROLE_ACTIONS[Role.SECURITY_ADMIN]
    | ROLE_ACTIONS[Role.AUDIT_ADMIN]
)

# The three roles of separation mode: an account holding one holds no other role.
DUTY_ROLES = frozenset({Role.SYSTEM_ADMIN, Role.SECURITY_ADMIN, Role.AUDIT_ADMIN})

SEPARATED_ROLE_ACTIONS: dict[str, frozenset[str]] = {
    **ROLE_ACTIONS,
    # Nobody holds everything; an old admin binding lapses when the mode is on.
    Role.ADMIN: frozenset(),
    # Reading the audit log is the audit administrator's function only.
    Role.AUDITOR: frozenset(_READ),
}


def separation_of_duties() -> bool:
    return bool(getattr(settings, "SEPARATION_OF_DUTIES", False))


def role_actions() -> dict[str, frozenset[str]]:
    """The table in force: SEPARATED_ROLE_ACTIONS in separation mode, else ROLE_ACTIONS."""
    return SEPARATED_ROLE_ACTIONS if separation_of_duties() else ROLE_ACTIONS


def bindable_roles() -> list[str]:
    """Roles a new binding may name: in separation mode `admin` is not one."""
    if separation_of_duties():
        return [r for r in Role.values if r != Role.ADMIN]
    return list(Role.values)


ALL_ACTIONS = frozenset().union(*ROLE_ACTIONS.values())

# Actions that only make sense everywhere: a cluster-scoped binding never grants them.
# Routes and keys span clusters (one route may send traffic to deployments in
# several), so changing them is global too; any user manages their own keys.
GLOBAL_ONLY_ACTIONS = frozenset(
    {
        "audit.view",
        "audit.export",
        "accounts.view",
        "accounts.manage",
        "settings.manage",
        "gateway.manage",
        "keys.manage",
        "security.view",
        "projects.manage",
    }
)


def roles_table_markdown() -> str:
    """The table above as Markdown, for docs/identity.md (a test keeps the two equal)."""
    roles = list(Role)
    lines = [
        "| action | " + " | ".join(f"`{r.value}`" for r in roles) + " |",
        "|---|" + "---|" * len(roles),
    ]
    for action in sorted(ALL_ACTIONS):
        marks = " | ".join("yes" if action in ROLE_ACTIONS[r] else "" for r in roles)
        scope = " (global only)" if action in GLOBAL_ONLY_ACTIONS else ""
        lines.append(f"| `{action}`{scope} | {marks} |")
    return "\n".join(lines)
