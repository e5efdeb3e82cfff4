from __future__ import annotations

from django.contrib.auth import get_user_model
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts import lockout
from apps.accounts.api.serializers import (
    ApiTokenCreatedSerializer,
    ApiTokenSerializer,
    RoleBindingSerializer,
    UserSerializer,
)
from apps.accounts.models import ApiToken, LoginLock, RoleBinding
from apps.accounts.policy import AUTHENTICATED, effective_rights
from apps.accounts.services import activate_user, deactivate_user
from apps.accounts.tokens import create_api_token, revoke_api_token
from apps.audit import recorder
from apps.core.viewsets import HangarViewSet

READ = {"list": "accounts.view", "retrieve": "accounts.view"}
MANAGE = "accounts.manage"


class UserViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    HangarViewSet,
):
    """Users. DELETE deactivates (the audit log keeps naming them) and revokes tokens."""

    queryset = get_user_model().objects.order_by("username")
    serializer_class = UserSerializer
    policy = {
        **READ,
        "create": MANAGE,
        "update": MANAGE,
        "partial_update": MANAGE,
        "destroy": MANAGE,
        "unlock": MANAGE,
        "activate": MANAGE,
    }

    def perform_destroy(self, instance):
        recorder.describe(target=instance, changes={"is_active": [instance.is_active, False]})
        deactivate_user(instance)

    @extend_schema(request=None, responses={200: None})
    @action(detail=True, methods=["post"])
    def unlock(self, request, pk=None):
        """Lift login locks on this username (locks by address lift on expiry)."""
        user = self.get_object()
        locks = LoginLock.objects.filter(
            scope=LoginLock.Scope.USERNAME, key=user.username.lower(), unlocked_at__isnull=True
        )
        lifted = 0
        for lock in locks:
            lockout.lift_lock(lock, by=request.user)
            lifted += 1
        recorder.describe(action="auth.unlock", target=user, changes={"locks_lifted": lifted})
        return Response({"locks_lifted": lifted})

    @extend_schema(request=None, responses={200: UserSerializer})
    @action(detail=True, methods=["post"])
    def activate(self, request, pk=None):
        """Activate an account: approve a new SSO user, or undo a deactivation."""
        user = self.get_object()
        recorder.describe(
            action="accounts.user.activate",
            target=user,
            changes={"is_active": [user.is_active, True]},
        )
        activate_user(user)
        return Response(UserSerializer(user, context=self.get_serializer_context()).data)


class RoleBindingViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    HangarViewSet,
):
    """Role bindings: a role for a user or LDAP group DN, everywhere or in one cluster."""

    queryset = RoleBinding.objects.select_related("user", "cluster")
    serializer_class = RoleBindingSerializer
    policy = {**READ, "create": MANAGE, "destroy": MANAGE}


class ApiTokenViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    HangarViewSet,
):
    """The caller's own API tokens. The secret is returned once, at creation."""

    queryset = ApiToken.objects.none()  # typed for the schema; get_queryset narrows
    serializer_class = ApiTokenSerializer
    policy = {
        "list": AUTHENTICATED,
        "retrieve": AUTHENTICATED,
        "create": AUTHENTICATED,
        "destroy": AUTHENTICATED,
    }

    def get_queryset(self):
        return ApiToken.objects.filter(user=self.request.user)

    @extend_schema(responses={201: ApiTokenCreatedSerializer})
    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            token, secret = create_api_token(
                request.user, serializer.validated_data["name"], serializer.validated_data["days"]
            )
        except ValueError as exc:
            raise serializers.ValidationError({"days": str(exc)}) from None
        recorder.describe(
            action="accounts.token.create",
            target=token,
            changes={"created": recorder.snapshot(token)},
        )
        data = ApiTokenCreatedSerializer(token).data | {"secret": secret}
        return Response(data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance):
        recorder.describe(
            action="accounts.token.revoke", target=instance, changes={"revoked": True}
        )
        revoke_api_token(instance)


class MeView(APIView):
    """The caller and their effective rights."""

    policy = {"get": AUTHENTICATED}

    @extend_schema(responses={200: None})
    def get(self, request):
        user = request.user
        return Response(
            {
                "id": user.pk,
                "username": user.get_username(),
                "name": user.get_full_name(),
                "email": user.email,
                "rights": effective_rights(user),
            }
        )
