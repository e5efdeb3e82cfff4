"""`/api/v1/demo/`: whether the first-run demo is there, and removing it in one call."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.gateway import demo


def demo_summary() -> dict:
    found = demo.objects()
    return {
        "installed": bool(found),
        "deployment": found["deployment"].pk if found.get("deployment") else None,
        "route": found["route"].name if found.get("route") else None,
        "key_prefix": found["key"].prefix if found.get("key") else None,
    }


class DemoView(APIView):
    """The demo `make run` made on its first start (README, "First five minutes")."""

    policy = {"get": "settings.manage"}

    @extend_schema(responses={200: None})
    def get(self, request):
        return Response(demo_summary())


class DemoRemoveView(APIView):
    """Stop the demo's deployment, delete its route and revoke its key (audited)."""

    policy = {"post": "settings.manage"}

    @extend_schema(request=None, responses={200: None, 409: None})
    def post(self, request):
        try:
            removed = demo.remove()
        except demo.DemoError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response({"removed": removed, **demo_summary()})
