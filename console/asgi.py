"""ASGI entry point: HTTP and both websockets on one Daphne port."""

import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

from console.config import ConfigError

try:
    from django.core.asgi import get_asgi_application

    django_http = get_asgi_application()
except ConfigError as exc:
    sys.exit(f"hangar: configuration error: {exc}")

from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from django.conf import settings
from django.urls import path

from apps.core.forwarded import ForwardedClientMiddleware
from apps.telemetry import listening
from apps.telemetry.consumers import AgentConsumer, TelemetryConsumer

# The client address (audit source, login lockout, agent sockets) comes from the
# direct peer, or from X-Forwarded-For only when that peer is a trusted proxy.
# Agents authenticate with their node credential and send no Origin header, so
# only the browser socket goes through the origin check and the session.
routes = ProtocolTypeRouter(
    {
        "http": django_http,
        "websocket": URLRouter(
            [
                path("ws/agent/", AgentConsumer.as_asgi()),
                path(
                    "ws/telemetry/",
                    AllowedHostsOriginValidator(
                        AuthMiddlewareStack(URLRouter([path("", TelemetryConsumer.as_asgi())]))
                    ),
                ),
            ]
        ),
    }
)
application = ForwardedClientMiddleware(routes, settings.TRUSTED_PROXIES)

# The offline sweep counts a node's silence only while a web process listens.
listening.start_beating()
