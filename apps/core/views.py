from __future__ import annotations

from django.http import JsonResponse
from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.policy import PUBLIC
from apps.core.health import health_report
from apps.core.outbox import DATABASE_AWAY
from console.api import API_ENDPOINTS


def healthz(request):
    try:
        detailed = request.user.is_authenticated
    except DATABASE_AWAY:  # the session is in the database: answer as for anyone
        detailed = False
    report, healthy = health_report(detailed=detailed)
    return JsonResponse(report, status=200 if healthy else 503)


healthz.policy_action = PUBLIC


class ApiRootView(APIView):
    """The entry point of the REST API: every collection with its URL."""

    policy = {"get": PUBLIC}

    @extend_schema(exclude=True)
    def get(self, request):
        endpoints = {
            name: request.build_absolute_uri(f"/api/v1/{prefix}/") for name, prefix in API_ENDPOINTS
        }
        return Response(
            {
                "version": 1,
                "endpoints": endpoints,
                "schema": request.build_absolute_uri(reverse("schema")),
                "docs": request.build_absolute_uri(reverse("swagger-ui")),
            }
        )
