"""The one place that decides access: `can`, `require` and `restrict`.

Views, viewsets, websocket consumers and services all ask here; nothing else
compares roles. Deny by default: an unknown action, an anonymous user, or a
target outside every bound scope is refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from django.core.exceptions import PermissionDenied
from django.db.models import Model, Q, QuerySet
from django.utils.translation import gettext as _

from apps.accounts.roles import (
    ALL_ACTIONS,
    DUTY_ROLES,
    GLOBAL_ONLY_ACTIONS,
    role_actions,
    separation_of_duties,
)

# Markers for views that need no role: PUBLIC (anyone, e.g. /healthz, login) and
# AUTHENTICATED (any logged-in user, e.g. their own API tokens).
PUBLIC = "public"
AUTHENTICATED = "authenticated"


@dataclass(frozen=True)
class Rights:
    """A user's effective rights: roles everywhere and roles per cluster id."""

    global_roles: frozenset[str] = frozenset()
    cluster_roles: dict[int, frozenset[str]] = field(default_factory=dict)

    def actions_in(self, cluster_id: int | None) -> frozenset[str]:
        table = role_actions()
        actions = set().union(*(table[r] for r in self.global_roles))
        if cluster_id is not None:
            scoped = set().union(*(table[r] for r in self.cluster_roles.get(cluster_id, ())))
            actions |= scoped - GLOBAL_ONLY_ACTIONS
        return frozenset(actions)

    def clusters_with(self, action: str) -> set[int]:
        return {
            cid
            for cid, roles in self.cluster_roles.items()
            if any(action in role_actions()[r] for r in roles)
        }

    def has_anywhere(self, action: str) -> bool:
        if action in self.actions_in(None):
            return True
        return action not in GLOBAL_ONLY_ACTIONS and bool(self.clusters_with(action))


def rights_of(user) -> Rights:
    """Compute (once per request: cached on the user object) the user's rights."""
    if user is None or not user.is_authenticated or not user.is_active:
        return Rights()
    cached = getattr(user, "_hangar_rights", None)
    if cached is not None:
        return cached
    from apps.accounts.models import RoleBinding

    global_roles: set[str] = set()
    cluster_roles: dict[int, set[str]] = {}
    for role, cluster_id in RoleBinding.objects.for_user(user).values_list("role", "cluster_id"):
        if cluster_id is None:
            global_roles.add(role)
        else:
            cluster_roles.setdefault(cluster_id, set()).add(role)
    if separation_of_duties():
        global_roles, cluster_roles = _without_conflicting_duties(global_roles, cluster_roles)
    rights = Rights(
        frozenset(global_roles), {cid: frozenset(roles) for cid, roles in cluster_roles.items()}
    )
    user._hangar_rights = rights
    return rights


def _without_conflicting_duties(global_roles: set[str], cluster_roles: dict[int, set[str]]):
    """Deny by default when bindings collide in separation mode.

    Binding refuses a second role for a duty holder (apps.accounts.services.
    check_separation), but LDAP groups can still meet in one person: whoever ends
    up with a duty role and any other role gets none of their roles at all.
    """
    held = set(global_roles).union(*cluster_roles.values())
    if held & DUTY_ROLES and len(held) > 1:
        return set(), {}
    return global_roles, cluster_roles


def forget_rights(user) -> None:
    """Drop the rights cached on this user object.

    Only this object: a live socket's user is another object, and its sockets are
    closed by apps/accounts/signals.py when bindings or the active flag change.
    """
    user.__dict__.pop("_hangar_rights", None)


def cluster_id_of(target) -> int | None:
    """The cluster a target belongs to; None for global objects."""
    if target is None:
        return None
    if isinstance(target, int):
        return target
    resolver = getattr(target, "policy_cluster_id", None)
    if resolver is not None:
        return resolver
    return None


def can(user, action: str, target=None) -> bool:
    """May `user` do `action` on `target` (a model instance, a cluster id, or None)?

    With target None the question is "anywhere at all", used to decide whether a
    list endpoint may be opened; its rows are then narrowed by `restrict`.
    """
    if action == PUBLIC:
        return True
    if user is None or not user.is_authenticated or not user.is_active:
        return False
    if action == AUTHENTICATED:
        return True
    if action not in ALL_ACTIONS:
        return False
    rights = rights_of(user)
    if target is None:
        return rights.has_anywhere(action)
    if isinstance(target, Model) and not hasattr(target, "policy_cluster_id"):
        return action in rights.actions_in(None)
    return action in rights.actions_in(cluster_id_of(target))


def can_globally(user, action: str) -> bool:
    """May `user` do `action` everywhere (e.g. create a cluster)?"""
    if not can(user, action):
        return False
    return action in rights_of(user).actions_in(None)


def require(user, action: str, target=None) -> None:
    if not can(user, action, target):
        raise PermissionDenied(_("Your roles do not allow %(action)s here.") % {"action": action})


def restrict(queryset: QuerySet, user, action: str) -> QuerySet:
    """Narrow a queryset to the rows `user` may `action`.

    A model declares `policy_cluster_path` (e.g. "cluster" or "node__cluster")
    when its rows belong to a cluster; rows of other models are global.
    """
    if not can(user, action):
        return queryset.none()
    rights = rights_of(user)
    if action in rights.actions_in(None):
        return queryset
    path = getattr(queryset.model, "policy_cluster_path", None)
    if path is None:
        return queryset.none()
    return queryset.filter(**{f"{path}__in": rights.clusters_with(action)})


def visible_cluster_ids(user, action: str = "inventory.view") -> set[int] | None:
    """Cluster ids the user may `action` in; None means every cluster."""
    rights = rights_of(user)
    if action in rights.actions_in(None):
        return None
    return rights.clusters_with(action)


def effective_rights(user) -> dict:
    """A description of the rights for /api/v1/me/ and the user menu."""
    rights = rights_of(user)
    return {
        "global": sorted(rights.global_roles),
        "clusters": {str(cid): sorted(roles) for cid, roles in rights.cluster_roles.items()},
        "actions": sorted(rights.actions_in(None)),
        "cluster_actions": {
            str(cid): sorted(rights.actions_in(cid) - rights.actions_in(None))
            for cid in rights.cluster_roles
        },
    }


def declared(actions: Iterable[str]) -> bool:
    return all(a in ALL_ACTIONS or a in (PUBLIC, AUTHENTICATED) for a in actions)


def allowed_in_scope(user, action: str, cluster) -> bool:
    """May `user` do `action` in `cluster`? None means every cluster: that needs
    the right everywhere (a rule or silence for every cluster is a global act)."""
    return can(user, action, cluster.pk if cluster is not None else None) and (
        cluster is not None or action in rights_of(user).actions_in(None)
    )


def with_global_rows(restricted: QuerySet, unrestricted: QuerySet, user, viewing: str) -> QuerySet:
    """`restricted` (restrict()ed to `viewing`) plus the rows without a cluster
    (rules and silences for everywhere), which everyone who may view at all sees."""
    if not can(user, viewing) or viewing in rights_of(user).actions_in(None):
        return restricted
    clusters = rights_of(user).clusters_with(viewing)
    return unrestricted.all().filter(Q(cluster__isnull=True) | Q(cluster__in=clusters))
