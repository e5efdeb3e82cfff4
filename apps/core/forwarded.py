"""The client's address behind reverse proxies, for the console and the gateway alike.

A request's direct peer is the only address nobody can forge. `X-Forwarded-For`
is believed only when that peer is a proxy we were told to trust
(`HANGAR_TRUSTED_PROXIES`, `HANGAR_GATEWAY_TRUSTED_PROXIES`), and then only as
far back as the chain of trusted proxies reaches: walking the header from the
right, the first address that is not itself a trusted proxy is the one the last
trusted proxy saw. Anything further left was written by the client.

Standard library only: `hangar-gateway` (apps/gateway/proxy) imports this module
and no Django (docs/architecture.md, Imports).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Headers a client could write to claim another address or scheme. From a peer
# we don't trust they are removed before the application sees the request, so no
# later code (Django's SECURE_PROXY_SSL_HEADER among them) can believe them.
FORWARDING_HEADERS = {b"x-forwarded-for", b"x-forwarded-proto", b"x-real-ip", b"forwarded"}


def parse_networks(text: str) -> tuple[Network, ...]:
    """`10.0.0.1, 192.168.0.0/24, ::1` as networks; ValueError names the bad item."""
    networks = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
    return tuple(networks)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [2001:db8::1]:443 as some proxies write it
        text = text[1 : text.index("]")]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # An IPv4 peer on a dual-stack socket arrives as ::ffff:a.b.c.d.
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def is_trusted(address: str, trusted: Sequence[Network]) -> bool:
    parsed = _address(address) if address else None
    return parsed is not None and any(parsed in network for network in trusted)


def client_address(peer: str, forwarded_for: Iterable[str], trusted: Sequence[Network]) -> str:
    """The client's address: `peer`, or what the trusted proxies in front of it saw.

    `forwarded_for` holds the values of every X-Forwarded-For header in order.
    An unparsable entry stops the walk: what lies beyond it can't be vouched for.
    """
    if not trusted or not is_trusted(peer, trusted):
        return peer
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",") if hop.strip()]
    current = peer
    for hop in reversed(hops):
        if not is_trusted(current, trusted):
            break
        parsed = _address(hop)
        if parsed is None:
            break
        current = str(parsed)
    return current


class ForwardedClientMiddleware:
    """ASGI wrapper: puts the real client in `scope["client"]` for HTTP and websockets.

    Everything behind it (Django's REMOTE_ADDR, the audit source, the login
    lockout, the agent socket's address) reads the client from the scope, so this
    is the one place that decides it.
    """

    def __init__(self, app, trusted: Sequence[Network]):
        self.app = app
        self.trusted = tuple(trusted)

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            scope = self.rewrite(scope)
        return await self.app(scope, receive, send)

    def rewrite(self, scope: dict) -> dict:
        client = scope.get("client")
        peer = client[0] if client else ""
        headers = scope.get("headers") or []
        if not is_trusted(peer, self.trusted):
            kept = [(name, value) for name, value in headers if name not in FORWARDING_HEADERS]
            return {**scope, "headers": kept} if len(kept) != len(headers) else scope
        forwarded = [v.decode("latin-1") for n, v in headers if n == b"x-forwarded-for"]
        address = client_address(peer, forwarded, self.trusted)
        scope = {**scope, "client": [address, client[1] if address == peer else 0]}
        proto = [
            v.decode("latin-1").strip().lower() for n, v in headers if n == b"x-forwarded-proto"
        ]
        if proto and proto[-1] in ("http", "https"):
            secure = proto[-1] == "https"
            if scope["type"] == "websocket":
                scope["scheme"] = "wss" if secure else "ws"
            else:
                scope["scheme"] = "https" if secure else "http"
        return scope
