"""Rights end on live sockets too: a change to a user's rights closes their sockets.

A browser websocket keeps its user for the socket's whole life, and the rights
`policy.rights_of` computed for it would outlive a removed binding or a
deactivation. Every socket that acts for a user joins the channel group
`user_group(user.pk)`; whenever something that decides a user's rights changes
(a role binding for them or for one of their LDAP groups, their directory
groups, their active flag), that group is told `user.rights_changed` once the
change is committed, and the sockets close. The browser reconnects and its
subscriptions are checked afresh. A new binding or a new user only adds rights,
which the next subscribe reads anyway, so those close nothing.

Model signals rather than calls in each view: the API, the pages, LDAP login,
management commands and cascading deletes all change these rows, and all of them
pass through here without remembering to.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver

from apps.accounts.models import DirectoryMembership, RoleBinding

log = logging.getLogger(__name__)


def user_group(user_id: int) -> str:
    """The channel group of every live socket acting for this user."""
    return f"user.{user_id}"


def end_live_sessions_of(user_ids: Iterable[int]) -> None:
    """Close the live sockets of these users once the current transaction commits.

    After the commit, so a socket's re-check on reconnect reads the new rights.
    """
    ids = sorted(set(user_ids))
    if ids:
        transaction.on_commit(lambda: _send_rights_changed(ids))


def _send_rights_changed(user_ids: list[int]) -> None:
    layer = get_channel_layer()
    for user_id in user_ids:
        try:
            async_to_sync(layer.group_send)(user_group(user_id), {"type": "user.rights_changed"})
        except Exception:
            # The change is committed either way; a socket that stays open still
            # has its rights re-read at its next subscribe.
            log.warning("could not close the live sockets of user %s", user_id, exc_info=True)


def _users_of_binding(binding: RoleBinding) -> list[int]:
    if binding.user_id is not None:
        return [binding.user_id]
    # Filtered here, not with a JSON `contains` lookup, which SQLite lacks; there
    # is one row per user who ever logged in through LDAP.
    return [
        membership.user_id
        for membership in DirectoryMembership.objects.only("user_id", "group_dns")
        if binding.ldap_group in membership.group_dns
    ]


@receiver(post_save, sender=RoleBinding, dispatch_uid="hangar-rights-binding-saved")
def _binding_saved(sender, instance: RoleBinding, created: bool, **kwargs) -> None:
    if not created:
        end_live_sessions_of(_users_of_binding(instance))


@receiver(post_delete, sender=RoleBinding, dispatch_uid="hangar-rights-binding-deleted")
def _binding_deleted(sender, instance: RoleBinding, **kwargs) -> None:
    end_live_sessions_of(_users_of_binding(instance))


@receiver(pre_save, sender=DirectoryMembership, dispatch_uid="hangar-rights-groups-before")
def _remember_groups(sender, instance: DirectoryMembership, **kwargs) -> None:
    old = DirectoryMembership.objects.filter(pk=instance.pk).values_list("group_dns", flat=True)
    instance._groups_before = old.first() if instance.pk else None


@receiver(post_save, sender=DirectoryMembership, dispatch_uid="hangar-rights-groups-saved")
def _groups_changed(sender, instance: DirectoryMembership, **kwargs) -> None:
    # Every LDAP login re-reads the groups; only a change ends the user's sockets.
    before = getattr(instance, "_groups_before", None)
    if before is not None and before != instance.group_dns:
        end_live_sessions_of([instance.user_id])


@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="hangar-rights-user-saved")
def _user_saved(sender, instance, created: bool, **kwargs) -> None:
    if not created and not instance.is_active:
        end_live_sessions_of([instance.pk])


@receiver(post_delete, sender=settings.AUTH_USER_MODEL, dispatch_uid="hangar-rights-user-deleted")
def _user_deleted(sender, instance, **kwargs) -> None:
    end_live_sessions_of([instance.pk])
