from __future__ import annotations

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.utils.translation import gettext as _
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response

from apps.accounts.policy import AUTHENTICATED
from apps.audit import recorder
from apps.core.viewsets import HangarViewSet
from apps.gateway import services
from apps.gateway.api.serializers import (
    ConsumerKeyCreatedSerializer,
    ConsumerKeyCreateSerializer,
    ConsumerKeySerializer,
    RouteSerializer,
    ServiceAccountSerializer,
)
from apps.gateway.keys import KeyRefused, revoke_consumer_key
from apps.gateway.models import ConsumerKey, Route, ServiceAccount

MANAGE = "gateway.manage"
READ = (mixins.ListModelMixin, mixins.RetrieveModelMixin)
WRITE = (mixins.CreateModelMixin, mixins.UpdateModelMixin)


class RouteViewSet(*READ, *WRITE, mixins.DestroyModelMixin, HangarViewSet):
    """Routes: the model names clients send, each to weighted deployments with an
    optional fallback route. `targets` is replaced as a whole when written."""

    queryset = services.with_targets(Route.objects.all())
    serializer_class = RouteSerializer
    policy = {
        "list": "gateway.view",
        "retrieve": "gateway.view",
        "create": MANAGE,
        "update": MANAGE,
        "partial_update": MANAGE,
        "destroy": MANAGE,
    }

    def perform_create(self, serializer):
        route = services.save_route(serializer, self.request.user)
        serializer.instance = self.get_queryset().get(pk=route.pk)

    def perform_update(self, serializer):
        route = services.save_route(serializer)
        serializer.instance = self.get_queryset().get(pk=route.pk)

    def perform_destroy(self, instance):
        services.delete_route(instance)


class ServiceAccountViewSet(*READ, *WRITE, HangarViewSet):
    """Applications that own keys. Deactivate one (`is_active: false`) to stop all its keys."""

    queryset = ServiceAccount.objects.select_related("created_by").prefetch_related("keys")
    serializer_class = ServiceAccountSerializer
    policy = {
        "list": MANAGE,
        "retrieve": MANAGE,
        "create": MANAGE,
        "update": MANAGE,
        "partial_update": MANAGE,
    }

    def perform_create(self, serializer):
        serializer.save(created_by=self.request.user)


class ConsumerKeyViewSet(*READ, HangarViewSet):
    """Consumer keys (`hk-…`) for the gateway. Everyone lists, makes and revokes their
    own; `keys.manage` sees and revokes every key, and those who may manage routes
    also the keys of service accounts. The key is in the create response only.
    Filters: owner (a username), service_account (a name or id), state."""

    queryset = ConsumerKey.objects.none()  # typed for the schema; get_queryset narrows
    serializer_class = ConsumerKeySerializer
    policy = {
        "list": AUTHENTICATED,
        "retrieve": AUTHENTICATED,
        "create": AUTHENTICATED,
        "revoke": AUTHENTICATED,
    }

    def get_queryset(self):
        keys = services.keys_visible_to(self.request.user)
        params = self.request.query_params
        if params.get("owner"):
            keys = keys.filter(user__username=params["owner"])
        account = params.get("service_account", "")
        if account.isdigit():
            keys = keys.filter(service_account_id=int(account))
        elif account:
            keys = keys.filter(service_account__name=account)
        state = params.get("state")
        if state and state not in services.KEY_STATES:
            choices = ", ".join(services.KEY_STATES)
            raise serializers.ValidationError(
                {"state": _("Choose one of %(choices)s.") % {"choices": choices}}
            )
        if state:
            keys = services.keys_in_state(keys, state)
        return keys

    @extend_schema(
        request=ConsumerKeyCreateSerializer, responses={201: ConsumerKeyCreatedSerializer}
    )
    def create(self, request, *args, **kwargs):
        recorder.describe(action="gateway.key.create")
        body = ConsumerKeyCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            key, raw = services.create_key_as(request.user, body.validated_data)
        except DjangoPermissionDenied as exc:
            raise PermissionDenied(str(exc)) from None
        except KeyRefused as exc:
            raise serializers.ValidationError({"detail": str(exc)}) from None
        key = services.keys_visible_to(request.user).get(pk=key.pk)
        # The key is in this one response only: Hangar keeps its SHA-256, never the key.
        key.key = raw
        return Response(ConsumerKeyCreatedSerializer(key).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=ConsumerKeySerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        """Revoke now: every gateway refuses it once it has the next snapshot (within 1 s)."""
        recorder.describe(action="gateway.key.revoke")
        key = self.get_object()
        revoke_consumer_key(key)
        return Response(ConsumerKeySerializer(key).data)
