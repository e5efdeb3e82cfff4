"""Projects and their people: who belongs, who owns, what they may see and change.

The role table (apps/accounts/roles.py) says who may act on every project
(`projects.manage`, admins). Everything an owner or a member may do in *their*
project is an object check, decided here and nowhere else: `is_owner`,
`projects_visible_to`, `require_owner`. Membership counts a user directly or
through an LDAP group they were in at their last login
(apps.accounts.models.DirectoryMembership).
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.utils.translation import gettext_lazy as _

from apps.accounts.models import DirectoryMembership
from apps.accounts.policy import can
from apps.audit import recorder
from apps.gateway.models import (
    LIMIT_FIELDS,
    GatewayPolicy,
    Limit,
    LimitScope,
    Project,
    ProjectMember,
    ProjectRole,
)

MANAGE = "projects.manage"


class ProjectRefused(ValueError):
    """A change to a project, member, limit or policy that can't be made; str() says why."""


def manages_projects(user) -> bool:
    return can(user, MANAGE)


def _subject(user) -> Q:
    """The membership rows naming `user`: directly or through one of their LDAP groups."""
    groups = DirectoryMembership.groups_of(user)
    # LDAP DNs compare case-insensitively; groups_of keeps the directory's spelling.
    subject = Q(user=user)
    for dn in groups:
        subject |= Q(ldap_group__iexact=dn)
    return subject


def memberships_of(user) -> QuerySet:
    if user is None or not user.is_authenticated:
        return ProjectMember.objects.none()
    return ProjectMember.objects.filter(_subject(user), project__is_active=True)


def project_ids_of(user, role: str | None = None) -> set[int]:
    """Projects `user` belongs to (as `role`, or any role)."""
    rows = memberships_of(user)
    if role is not None:
        rows = rows.filter(role=role)
    return set(rows.values_list("project_id", flat=True))


def owned_project_ids(user) -> set[int]:
    return project_ids_of(user, ProjectRole.OWNER)


def is_owner(user, project: Project | None) -> bool:
    """May `user` manage this project's members and keys? Owners and admins."""
    if project is None:
        return False
    return manages_projects(user) or project.pk in owned_project_ids(user)


def require_owner(user, project: Project | None) -> None:
    if not is_owner(user, project):
        raise PermissionDenied(_("Only the project's owners and administrators may do this."))


def projects_visible_to(user) -> QuerySet:
    """Every project to admins; to anyone else the active projects they belong to."""
    projects = Project.objects.select_related("created_by")
    if manages_projects(user):
        return projects
    return projects.filter(pk__in=project_ids_of(user))


def projects_for_new_keys(user) -> QuerySet:
    """Projects `user` may make a key in: the active ones they belong to (admins: any active)."""
    return projects_visible_to(user).filter(is_active=True)


# --- projects ------------------------------------------------------------------------

# What an owner may change of their own project; the rest (name, weight, active) is
# the administrators': a weight is a share of the whole appliance.
OWNER_FIELDS = frozenset({"title", "description", "require_approval"})


def check_project_change(user, project: Project, fields: set[str]) -> None:
    require_owner(user, project)
    if manages_projects(user):
        return
    refused = sorted(fields - OWNER_FIELDS)
    if refused:
        raise PermissionDenied(
            _("Only administrators change a project's %(fields)s.") % {"fields": ", ".join(refused)}
        )


def save_project(serializer, user) -> Project:
    """Create (admins) or change (owners: OWNER_FIELDS) from a valid serializer."""
    if serializer.instance is None:
        if not manages_projects(user):
            raise PermissionDenied(_("Only administrators create projects."))
        project = serializer.save(created_by=user)
    else:
        check_project_change(user, serializer.instance, set(serializer.validated_data))
        project = serializer.save()
    # Weights and activity reach the gateways through the snapshot (receivers.py).
    return project


# --- members -------------------------------------------------------------------------


@transaction.atomic
def add_member(project: Project, *, by, user=None, ldap_group: str = "", role=ProjectRole.MEMBER):
    """Bind a user or an LDAP group (a whole department) to the project."""
    require_owner(by, project)
    ldap_group = (ldap_group or "").strip()
    if (user is None) == (not ldap_group):
        raise ProjectRefused(_("Name a user or an LDAP group, not both."))
    if role not in ProjectRole.values:
        raise ProjectRefused(_("A member's role is member or owner."))
    if role == ProjectRole.OWNER and not manages_projects(by) and user is None:
        # An owner may name further owners, but binding a whole directory group as
        # owners is a site decision.
        raise ProjectRefused(_("Only administrators make an LDAP group the owners of a project."))
    try:
        with transaction.atomic():
            member = ProjectMember.objects.create(
                project=project, user=user, ldap_group=ldap_group, role=role
            )
    except IntegrityError:
        raise ProjectRefused(_("That user or group is already in this project.")) from None
    recorder.describe(target=member, changes={"created": member_record(member)})
    return member


def change_member_role(member: ProjectMember, role: str, by) -> ProjectMember:
    require_owner(by, member.project)
    if role not in ProjectRole.values:
        raise ProjectRefused(_("A member's role is member or owner."))
    _refuse_last_owner(member, role)
    before = member.role
    member.role = role
    member.save(update_fields=["role"])
    recorder.describe(target=member, changes={"role": [before, role]})
    return member


def remove_member(member: ProjectMember, by) -> None:
    require_owner(by, member.project)
    _refuse_last_owner(member, None)
    recorder.describe(target=member, changes={"deleted": member_record(member)})
    # Membership is not in the gateways' snapshot: it decides who makes and
    # approves keys, not whether a key works.
    member.delete()


def _refuse_last_owner(member: ProjectMember, new_role: str | None) -> None:
    """A project keeps one owner bound by name, so someone can still approve its keys."""
    if member.role != ProjectRole.OWNER or new_role == ProjectRole.OWNER:
        return
    others = member.project.members.filter(role=ProjectRole.OWNER).exclude(pk=member.pk)
    if member.user_id and not others.exists():
        raise ProjectRefused(_("This is the project's last owner: make someone else owner first."))


def member_record(member: ProjectMember) -> dict:
    return {
        "project": member.project.name,
        "user": member.user.get_username() if member.user_id else None,
        "ldap_group": member.ldap_group or None,
        "role": member.role,
    }


def members_visible_to(user) -> QuerySet:
    return ProjectMember.objects.select_related("project", "user").filter(
        project__in=projects_visible_to(user)
    )


# --- limits --------------------------------------------------------------------------


def validate_limit(attrs: dict) -> dict:
    """At least one ceiling, a subject that matches the scope; the rest the serializer checks."""
    scope = attrs.get("scope")
    values = [attrs.get(f) for f in LIMIT_FIELDS]
    if all(v is None for v in values):
        raise ProjectRefused(
            _("Set at least one of %(fields)s.") % {"fields": ", ".join(LIMIT_FIELDS)}
        )
    if any(v is not None and v < 1 for v in values):
        raise ProjectRefused(_("A limit is a whole number above 0."))
    wanted = {
        LimitScope.KEY: "key",
        LimitScope.USER: "user",
        LimitScope.PROJECT: "project",
        LimitScope.EACH_MEMBER: "project",
        LimitScope.EACH_KEY: "project",
    }[scope]
    for subject in ("key", "user", "project"):
        given = attrs.get(subject) is not None
        if given != (subject == wanted):
            raise ProjectRefused(
                _("A limit of scope %(scope)s names a %(subject)s and nothing else.")
                % {"scope": scope, "subject": wanted}
            )
    return attrs


def limits_visible_to(user) -> QuerySet:
    """Admins: every limit. Others: the limits that apply to them (their keys, themselves,
    their projects) and, for owners, every limit of their projects."""
    limits = Limit.objects.select_related("key", "user", "project", "route")
    if manages_projects(user):
        return limits
    projects = project_ids_of(user)
    return limits.filter(Q(key__user=user) | Q(user=user) | Q(project__in=projects))


def limits_for_key(key) -> QuerySet:
    """Every limit that applies to requests with `key` (docs/limits.md "Limits")."""
    applies = Q(key=key)
    if key.user_id:
        applies |= Q(user_id=key.user_id)
    if key.project_id:
        applies |= Q(project_id=key.project_id)
    return Limit.objects.select_related("route", "project", "user", "key").filter(applies)


def save_limit(serializer, user) -> Limit:
    try:
        with transaction.atomic():
            if serializer.instance is None:
                limit = serializer.save(created_by=user)
            else:
                limit = serializer.save()
    except IntegrityError:
        raise ProjectRefused(
            _("That subject already has a limit on this route: change that one.")
        ) from None
    return limit


def delete_limit(limit: Limit) -> None:
    recorder.describe(target=limit, changes={"deleted": recorder.snapshot(limit)})
    limit.delete()  # the gateways hear of it through the snapshot (receivers.py)


# --- policy --------------------------------------------------------------------------


def save_policy(serializer) -> GatewayPolicy:
    policy = serializer.save()
    return policy


def current_policy() -> GatewayPolicy:
    return GatewayPolicy.current()
