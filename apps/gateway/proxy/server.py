"""The gateway's HTTP server (aiohttp, uvloop where installed): `hangar-gateway`.

One request: exact path check → key → body → route → least-busy ready worker →
the engine, with the worker's secret → the answer streamed back as it comes.
Nothing here touches the database; see state.py for where routes and keys come from.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import time

import aiohttp
from aiohttp import web

from apps.core import forwarded
from apps.gateway.proxy import config as gateway_config
from apps.gateway.proxy.errors import error
from apps.gateway.proxy.metrics import Metrics, export
from apps.gateway.proxy.state import View

log = logging.getLogger("hangar.gateway")

# The OpenAI API this door serves, matched on the raw path exactly: `//v1`, `/v1/../x`,
# percent-encoded dots or slashes and other cases reach nothing.
INFERENCE_PATHS = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings"}
MODELS_PATH = "/v1/models"
HOP_HEADERS = {"content-type", "accept"}
NOT_READY = "The gateway has no routes yet; the console has not published them."
STALE = "The gateway cannot confirm keys right now (its view is {age:.0f} s old)."

VIEW = web.AppKey("view", View)
METRICS = web.AppKey("metrics", Metrics)
SESSION = web.AppKey("session", aiohttp.ClientSession)
CONFIG = web.AppKey("config", gateway_config.GatewayConfig)


def client_address(request: web.Request) -> str:
    """The peer's address; X-Forwarded-For only from a proxy we were told to trust."""
    return forwarded.client_address(
        request.remote or "",
        request.headers.getall("X-Forwarded-For", []),
        request.app[CONFIG].trusted_proxies,
    )


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _sep, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


async def handle(request: web.Request) -> web.StreamResponse:
    view, metrics = request.app[VIEW], request.app[METRICS]
    path, _sep, query = request.raw_path.partition("?")
    if path not in INFERENCE_PATHS and path != MODELS_PATH:
        metrics.refuse("unknown-path")
        return error(
            request,
            404,
            "Unknown path {path}.",
            "invalid_request_error",
            "unknown_url",
            path=path[:200],
        )
    wanted = "GET" if path == MODELS_PATH else "POST"
    if request.method != wanted:
        return error(
            request,
            405,
            "Method {method} is not allowed on {path}.",
            "invalid_request_error",
            "method_not_allowed",
            method=request.method,
            path=path,
            headers={"Allow": wanted},
        )
    if "hk-" in query or "api_key" in query.lower():
        metrics.refuse("key-in-url")
        return error(
            request,
            400,
            "Keys go in the Authorization header, never in the URL.",
            "invalid_request_error",
            "key_in_url",
        )
    if view.current is None:
        return error(request, 503, NOT_READY, "server_error", "not_ready")
    if view.stale():
        metrics.refuse("stale")
        return error(request, 503, STALE, "server_error", "gateway_stale", age=view.age())
    raw_key = _bearer(request)
    if raw_key is None:
        metrics.refuse("no-key")
        return error(
            request,
            401,
            "Send a key as 'Authorization: Bearer hk-...'.",
            "invalid_request_error",
            "missing_api_key",
        )
    key = view.key_for(raw_key)
    if key is None:
        metrics.refuse("invalid-key")
        return error(
            request,
            401,
            "The key is not valid (unknown, revoked or expired).",
            "invalid_request_error",
            "invalid_api_key",
        )
    if key.networks:
        address = client_address(request)
        try:
            allowed = any(ipaddress.ip_address(address) in net for net in key.networks)
        except ValueError:
            allowed = False
        if not allowed:
            metrics.refuse("network", key.prefix)
            return error(
                request,
                403,
                "This key may not be used from {address}.",
                "permission_error",
                "network_not_allowed",
                address=address,
            )
    metrics.key_used[key.id] = time.time()
    if path == MODELS_PATH:
        return list_models(view, key)
    return await proxy(request, path, key)


def list_models(view: View, key) -> web.Response:
    created = int(time.time())
    data = [
        {"id": name, "object": "model", "created": created, "owned_by": "hangar"}
        for name in view.routes_for(key)
    ]
    return web.json_response({"object": "list", "data": data})


async def proxy(request: web.Request, path: str, key) -> web.StreamResponse:
    view, metrics = request.app[VIEW], request.app[METRICS]
    limit = request.app[CONFIG].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return error(
            request,
            413,
            "The request body is larger than {limit} bytes.",
            "invalid_request_error",
            "body_too_large",
            limit=limit,
        )
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return error(
            request,
            413,
            "The request body is larger than {limit} bytes.",
            "invalid_request_error",
            "body_too_large",
            limit=limit,
        )
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        payload = None
    if not isinstance(payload, dict):
        return error(
            request,
            400,
            "The request body is not a JSON object.",
            "invalid_request_error",
            "invalid_json",
        )
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        return error(
            request,
            400,
            "The request must name a model.",
            "invalid_request_error",
            "missing_model",
            param="model",
        )
    if model not in view.current.routes:
        metrics.refuse("unknown-model", key.prefix)
        return error(
            request,
            404,
            "The model {model} does not exist.",
            "invalid_request_error",
            "model_not_found",
            param="model",
            model=model[:100],
        )
    if key.routes is not None and model not in key.routes:
        metrics.refuse("route-not-allowed", key.prefix)
        return error(
            request,
            403,
            "This key may not use the model {model}.",
            "permission_error",
            "model_not_allowed",
            param="model",
            model=model,
        )
    deployment, workers = view.workers_for(model)
    if deployment is None:
        return error(
            request,
            503,
            "No ready worker serves {model} right now; try again shortly.",
            "server_error",
            "no_ready_worker",
            model=model,
        )
    return await forward(request, path, body, model, deployment, workers)


async def forward(request, path, body, model, deployment, workers) -> web.StreamResponse:
    """Send to the least-busy worker; a connect failure is tried once on another."""
    view, metrics = request.app[VIEW], request.app[METRICS]
    session = request.app[SESSION]
    headers = {k: v for k, v in request.headers.items() if k.lower() in HOP_HEADERS}
    started = time.monotonic()
    tried: set[int] = set()
    labels = (model, deployment)
    for attempt in range(2):
        worker = view.pick(workers, tried)
        if worker is None:
            break
        tried.add(worker["id"])
        if worker["secret"]:
            headers["Authorization"] = f"Bearer {worker['secret']}"
        view.in_flight[worker["id"]] = view.in_flight.get(worker["id"], 0) + 1
        metrics.in_flight[labels] += 1
        try:
            async with session.post(worker["url"] + path, data=body, headers=headers) as upstream:
                name = view.current.deployments.get(deployment, {}).get("name", deployment)
                response = await relay(request, upstream, labels, started, name)
                metrics.request_done(model, deployment, upstream.status, time.monotonic() - started)
                return response
        except aiohttp.ClientConnectorError as exc:
            log.warning("worker %s at %s: %s", worker["id"], worker["url"], exc)
            if attempt == 0:
                metrics.retries += 1
            continue
        except TimeoutError:
            metrics.request_done(model, deployment, 504, time.monotonic() - started)
            return error(
                request,
                504,
                "The model's worker did not answer in time.",
                "server_error",
                "upstream_timeout",
            )
        except (aiohttp.ClientError, ConnectionResetError) as exc:
            # The upstream or the client broke off after the answer began: nothing to retry.
            log.info("request to worker %s ended early: %s", worker["id"], exc)
            metrics.request_done(model, deployment, 502, time.monotonic() - started)
            return error(
                request,
                502,
                "The model's worker could not be reached.",
                "server_error",
                "upstream_error",
            )
        finally:
            view.in_flight[worker["id"]] -= 1
            metrics.in_flight[labels] -= 1
    metrics.request_done(model, deployment, 502, time.monotonic() - started)
    return error(
        request,
        502,
        "The model's worker could not be reached.",
        "server_error",
        "upstream_unreachable",
    )


async def relay(request, upstream, labels, started, deployment_name) -> web.StreamResponse:
    metrics = request.app[METRICS]
    content_type = upstream.headers.get("Content-Type", "application/json")
    # Which deployment answered: what a canary's users and operators need to tell apart.
    headers = {"Content-Type": content_type, "X-Hangar-Deployment": deployment_name}
    if not content_type.startswith("text/event-stream"):
        data = await upstream.read()
        _count_usage(metrics, labels, data)
        return web.Response(status=upstream.status, body=data, headers=headers)
    response = web.StreamResponse(
        status=upstream.status,
        headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    await response.prepare(request)
    first = True
    last = b""
    try:
        async for chunk in upstream.content.iter_any():
            if first:
                metrics.first_token[labels].observe(time.monotonic() - started)
                first = False
            await response.write(chunk)
            # Only the end can hold the usage event: keep a short tail, not the stream.
            last = chunk if len(chunk) >= 2048 else last[-2048:] + chunk
    except (ConnectionResetError, asyncio.CancelledError):
        # The client left: leaving this block closes the upstream request too.
        metrics.cancelled += 1
        raise
    except (aiohttp.ClientError, TimeoutError) as exc:
        # The engine broke off mid-stream: the client sees the stream end early.
        log.info("stream from the worker ended early: %s", exc)
        return response
    _count_usage(metrics, labels, _last_usage_event(last))
    await response.write_eof()
    return response


def _last_usage_event(tail: bytes) -> bytes:
    for line in reversed(tail.split(b"\n")):
        if line.startswith(b"data: {") and b'"usage"' in line:
            return line[len(b"data: ") :]
    return b""


def _count_usage(metrics: Metrics, labels, data: bytes) -> None:
    if b'"usage"' not in data:
        return
    try:
        usage = json.loads(data).get("usage") or {}
    except (ValueError, AttributeError):
        return
    for kind in ("prompt_tokens", "completion_tokens"):
        if isinstance(usage.get(kind), int):
            metrics.tokens[(*labels, kind.split("_")[0])] += usage[kind]


# --- the admin port: health and metrics, loopback by default ---------------------------


async def health(request: web.Request) -> web.Response:
    view = request.app[VIEW]
    ready = view.current is not None and not view.stale()
    body = {
        "status": "ok" if ready and view.redis_ok else ("degraded" if ready else "unavailable"),
        "redis": "ok" if view.redis_ok else "unreachable",
        "snapshot_generation": view.current.generation if view.current else None,
        "snapshot_age_s": None if view.age() == float("inf") else round(view.age(), 1),
        "stale_after_s": view.config.stale_after_s,
        "routes": len(view.current.routes) if view.current else 0,
    }
    return web.json_response(body, status=200 if ready else 503)


async def prometheus(request: web.Request) -> web.Response:
    view = request.app[VIEW]
    text = request.app[METRICS].render(
        view.age(), view.redis_ok, view.current.generation if view.current else 0
    )
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


def build_apps(config: gateway_config.GatewayConfig) -> tuple[web.Application, web.Application]:
    public = web.Application(client_max_size=config.max_body_bytes)
    # Exact resources first (a dict lookup in aiohttp's router), the catch-all for the
    # 404s; `handle` checks the raw path either way.
    for path in sorted(INFERENCE_PATHS):
        public.router.add_post(path, handle)
    public.router.add_get(MODELS_PATH, handle)
    public.router.add_route("*", "/{tail:.*}", handle)
    admin = web.Application()
    admin.router.add_get("/healthz", health)
    admin.router.add_get("/metrics", prometheus)
    view, metrics = View(config), Metrics()
    for app in (public, admin):
        app[VIEW], app[METRICS], app[CONFIG] = view, metrics, config
    return public, admin


async def serve(config: gateway_config.GatewayConfig, ready: asyncio.Event | None = None) -> None:
    public, admin = build_apps(config)
    view = public[VIEW]
    timeout = aiohttp.ClientTimeout(
        total=None, connect=config.connect_timeout_s, sock_read=config.read_timeout_s
    )
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ttl_dns_cache=300)
    stop = asyncio.Event()
    async with aiohttp.ClientSession(
        timeout=timeout,
        connector=connector,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),  # no cookies between clients, and less work
        skip_auto_headers=("User-Agent",),
    ) as session:
        public[SESSION] = session
        follower = asyncio.create_task(view.follow(stop))
        reporter = f"{socket.gethostname()}:{os.getpid()}"
        metrics = public[METRICS]
        reporting = asyncio.create_task(view.report(stop, lambda: export(metrics), reporter))
        runners = []
        for app, host, port in (
            (public, config.host, config.port),
            (admin, config.admin_host, config.admin_port),
        ):
            # The handler is cancelled when its client goes: the upstream request with it.
            runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
            await runner.setup()
            # reuse_port: several gateway processes on one host can share the port.
            await web.TCPSite(runner, host, port, backlog=2048, reuse_port=True).start()
            runners.append(runner)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        print(
            f"hangar-gateway: serving the OpenAI API at http://{config.host}:{config.port}/v1 "
            f"(health and metrics at http://{config.admin_host}:{config.admin_port})",
            flush=True,
        )
        if ready is not None:
            ready.set()
        await stop.wait()
        for runner in runners:
            await runner.cleanup()
        for task in (follower, reporting):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await view.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hangar-gateway",
        description="Hangar's model gateway: the OpenAI-compatible door to the deployments. "
        "Configured by HANGAR_* variables (docs/gateway.md).",
    )
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        config = gateway_config.load()
    except gateway_config.ConfigError as exc:
        print(f"hangar-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop
    except ImportError:
        uvloop = None
    try:
        if uvloop is not None:
            uvloop.run(serve(config))
        else:
            asyncio.run(serve(config))
    except OSError as exc:
        print(f"hangar-gateway: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
