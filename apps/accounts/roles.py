"""Roles and the actions each grants. This table is the whole RBAC policy.

Rights are additive: a user's rights in a scope are the union of the actions of
every role bound to them (or to one of their LDAP groups) globally or in that
cluster. docs/identity.md renders this table for people.
"""

from django.db import models


class Role(models.TextChoices):
    VIEWER = "viewer", "Viewer"
    OPERATOR = "operator", "Operator"
    MODEL_MANAGER = "model-manager", "Model manager"
    AUDITOR = "auditor", "Auditor"
    ADMIN = "admin", "Administrator"
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
    Role.ADMIN: frozenset(
        _READ
        | {
            "deployments.operate",
            "deployments.manage",
            "alerts.acknowledge",
            "alerts.manage",
            "models.manage",
            "gateway.manage",
            "keys.manage",
            "audit.view",
            "audit.export",
            "inventory.change",
            "inventory.enroll",
            "accounts.view",
            "accounts.manage",
            "settings.manage",
            "projects.manage",
        }
    ),
    # No inventory, no deployments: the gateway's door only. Projects, keys and
    # usage of one's own need no action (object checks in apps.gateway.projects).
    Role.CONSUMER: frozenset({"gateway.use"}),
}

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
