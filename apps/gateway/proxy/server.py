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
from datetime import datetime

import aiohttp
from aiohttp import web

from apps.core import forwarded
from apps.gateway.proxy import config as gateway_config
from apps.gateway.proxy import limits
from apps.gateway.proxy.accounting import Accounts
from apps.gateway.proxy.errors import error, subject_text
from apps.gateway.proxy.fairshare import FairShare, QueueFull, QueueTimeout
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
FAIR = web.AppKey("fair", FairShare)
ACCOUNTS = web.AppKey("accounts", Accounts)
RUNNING = web.AppKey("running", dict)  # lease id -> Admission, for renewal
WINDOWS = web.AppKey("windows", limits.Windows)
LIMITS = web.AppKey("limits", limits.LimitStore)
REFUSAL_MESSAGES = {
    "requests_per_minute": (
        "Rate limit reached: {limit} requests per minute for {subject}. Try again in {reset}."
    ),
    "tokens_per_minute": (
        "Rate limit reached: {limit} tokens per minute for {subject} ({used} used; "
        "this request may need {amount}). Try again in {reset}."
    ),
    "tokens_per_day": (
        "Daily budget reached: {limit} tokens per day for {subject} ({used} used; "
        "this request may need {amount}). It resets at {reset_at}."
    ),
    "tokens_per_week": (
        "Weekly budget reached: {limit} tokens per week for {subject} ({used} used; "
        "this request may need {amount}). It resets at {reset_at}."
    ),
    "concurrent_requests": (
        "Too many requests at once: {limit} at a time for {subject}. Wait for one to finish."
    ),
}
TOO_BIG = (
    "This request may need {amount} tokens, more than {subject} may use in a whole window "
    "({limit}); lower max_tokens or shorten the prompt."
)
STREAMED_PATHS = {"/v1/chat/completions", "/v1/completions"}
MAX_EVENT_BYTES = 1 << 20


class Outcome:
    """How one request ended, for limits, fair share and accounts."""

    __slots__ = ("completion", "first_token_s", "pieces", "prompt", "status", "worker")

    def __init__(self) -> None:
        self.status = 0
        self.worker: int | None = None
        self.prompt: int | None = None
        self.completion: int | None = None
        self.first_token_s: float | None = None
        self.pieces = 0  # stream events relayed: the completion's size when no usage came


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
    strip_usage = False
    if path in STREAMED_PATHS and payload.get("stream") is True:
        # Streams report usage only when asked: ask, and keep that event from a
        # client that didn't (it may not expect a chunk without choices).
        options = payload.get("stream_options")
        if not (isinstance(options, dict) and options.get("include_usage") is True):
            payload["stream_options"] = {**(options or {}), "include_usage": True}
            body = json.dumps(payload, ensure_ascii=False).encode()
            strip_usage = True
    return await admitted(
        request, path, body, payload, model, key, deployment, workers, strip_usage
    )


async def admitted(request, path, body, payload, model, key, deployment, workers, strip_usage):
    """Limits, then the fair-share queue, then the engine; settle and count in any case."""
    app = request.app
    metrics, fair, config = app[METRICS], app[FAIR], app[CONFIG]
    arrived, started = time.time(), time.monotonic()
    estimate = limits.estimate_tokens(payload, len(body))
    checks = limits.checks_for(key.rules, model, estimate, arrived, app[WINDOWS], config.namespace)
    admission: limits.Admission | None = limits.Admission(estimate=estimate)
    extra_headers: dict[str, str] = {}
    if checks:
        too_big = next((c for c in checks if c.kind == "w" and c.amount > c.limit), None)
        if too_big is not None:
            return refuse_limit(request, limits.Refusal(too_big, 0), key, arrived, TOO_BIG)
        lease = limits.lease_id(app[ACCOUNTS].reporter, id(request))
        try:
            judged = await app[LIMITS].admit(checks, lease, arrived)
        except Exception as exc:  # Redis away: the configured choice (docs/limits.md)
            metrics.limits_unchecked += 1
            log.warning("limits not checked (%s)", exc)
            if config.limits_without_redis == "refuse":
                return error(
                    request,
                    503,
                    "The gateway cannot check this key's limits right now.",
                    "server_error",
                    "limits_unavailable",
                    headers={"Retry-After": "5"},
                )
            judged = limits.Admission(estimate=estimate)
        if isinstance(judged, limits.Refusal):
            metrics.refuse("limit:" + judged.check.field, key.prefix)
            count(request, key, model, deployment, None, 429, 0, 0, None, arrived, started, 0.0)
            return refuse_limit(request, judged, key, arrived)
        admission = judged
        admission.estimate = estimate
        extra_headers = limits.headers_for(admission, arrived)
        if admission.checks:
            app[RUNNING][admission.lease] = admission
    outcome = Outcome()
    queued = 0.0
    slot = False
    try:
        try:
            queued = await fair.acquire(
                deployment, len(workers), key.lane, key.id, key.weight, estimate
            )
            slot = True
        except (QueueFull, QueueTimeout) as exc:
            timed_out = isinstance(exc, QueueTimeout)
            metrics.refuse("queue-timeout" if timed_out else "queue-full", key.prefix)
            outcome.status = 503
            return error(
                request,
                503,
                "The model {model} is busy: the request waited {waited:.0f} s in the queue. "
                "Try again shortly."
                if timed_out
                else "The model {model} is busy and its queue is full. Try again shortly.",
                "server_error",
                "queue_timeout" if timed_out else "queue_full",
                model=model,
                waited=time.monotonic() - started,
                headers={"Retry-After": "5"},
            )
        if queued:
            metrics.queue_wait[deployment].observe(queued)
        return await forward(
            request, path, body, model, deployment, workers, outcome, strip_usage,
            {**extra_headers, "X-Hangar-Queued-Ms": str(round(queued * 1000))},
        )  # fmt: skip
    finally:
        used = _used_tokens(outcome, estimate)
        if slot:
            fair.release(deployment, len(workers), key.lane, key.id, key.weight, estimate, used)
        if admission.checks:
            app[RUNNING].pop(admission.lease, None)
            # Not on the answer's path: the client has what it came for.
            counts_as_request = 0 if outcome.status == 503 and not slot else 1
            app[LIMITS].settle(admission, counts_as_request, used)
        if outcome.status:
            count(
                request, key, model, deployment, outcome.worker, outcome.status,
                outcome.prompt or 0, outcome.completion or 0, outcome.first_token_s,
                arrived, started, queued,
            )  # fmt: skip


def _used_tokens(outcome: Outcome, estimate: int) -> int:
    """What the request used: the engine's usage, else a stand-in (docs/limits.md)."""
    if outcome.prompt is not None or outcome.completion is not None:
        return (outcome.prompt or 0) + (outcome.completion or 0)
    if outcome.status == 0 or (outcome.status >= 400 and not outcome.pieces):
        return 0  # never reached an engine, or refused by it
    return outcome.pieces  # cut short: what was relayed


def count(request, key, model, deployment, worker, status, prompt, completion, first_token_s,
          arrived, started, queued) -> None:  # fmt: skip
    request.app[ACCOUNTS].count(
        at=arrived,
        key=key.id,
        route=model,
        deployment=deployment,
        worker=worker,
        status=status,
        prompt=prompt,
        completion=completion,
        first_token_s=first_token_s,
        duration_s=time.monotonic() - started,
        queued_s=queued,
        request_id=request.headers.get("X-Request-Id", "")[:40],
        project=key.project,
    )


def refuse_limit(request, refusal: limits.Refusal, key, now: float, message: str | None = None):
    view = request.app[VIEW]
    check = refusal.check
    project = ""
    if key.project is not None and view.current is not None:
        project = view.current.projects.get(str(key.project), {}).get("name", "")
    reset_in = check.resets_at - now if check.kind == "w" else 1.0
    zone = request.app[WINDOWS].zone
    reset_at = ""
    if check.kind == "w":
        reset_at = datetime.fromtimestamp(check.resets_at, zone).strftime(
            f"%Y-%m-%d %H:%M ({zone.key})"
        )
    headers = {
        "Retry-After": str(max(1, int(reset_in + 0.999))),
        "x-hangar-limit": f"{check.rule.scope}:{check.field}",
        **limits.headers_for(refusal, now),
    }
    return error(
        request,
        429,
        message or REFUSAL_MESSAGES[check.field],
        "rate_limit_error"
        if check.kind == "c" or "minute" in check.field
        else "insufficient_quota",
        "rate_limit_exceeded" if message is None else "request_too_large",
        headers=headers,
        limit=check.limit,
        used=refusal.used,
        amount=check.amount,
        subject=subject_text(request, check.rule.scope, project),
        reset=limits.duration(reset_in),
        reset_at=reset_at,
    )


async def forward(request, path, body, model, deployment, workers, outcome, strip_usage,
                  extra_headers) -> web.StreamResponse:  # fmt: skip
    """Send to the least-busy worker; a connect failure is tried once on another."""
    view, metrics = request.app[VIEW], request.app[METRICS]
    session = request.app[SESSION]
    headers = {k: v for k, v in request.headers.items() if k.lower() in HOP_HEADERS}
    started = time.monotonic()
    tried: set[int] = set()
    labels = (model, deployment)

    def failed(status: int, message: str, code: str) -> web.Response:
        outcome.status = status
        metrics.request_done(model, deployment, status, time.monotonic() - started)
        return error(request, status, message, "server_error", code)

    for attempt in range(2):
        worker = view.pick(workers, tried)
        if worker is None:
            break
        tried.add(worker["id"])
        outcome.worker = worker["id"]
        if worker["secret"]:
            headers["Authorization"] = f"Bearer {worker['secret']}"
        view.in_flight[worker["id"]] = view.in_flight.get(worker["id"], 0) + 1
        metrics.in_flight[labels] += 1
        try:
            async with session.post(worker["url"] + path, data=body, headers=headers) as upstream:
                outcome.status = upstream.status
                name = view.current.deployments.get(deployment, {}).get("name", deployment)
                response = await relay(
                    request, upstream, labels, started, name, outcome, strip_usage, extra_headers
                )
                metrics.request_done(model, deployment, upstream.status, time.monotonic() - started)
                return response
        except aiohttp.ClientConnectorError as exc:
            log.warning("worker %s at %s: %s", worker["id"], worker["url"], exc)
            if attempt == 0:
                metrics.retries += 1
            continue
        except TimeoutError:
            return failed(504, "The model's worker did not answer in time.", "upstream_timeout")
        except (aiohttp.ClientError, ConnectionResetError) as exc:
            # The upstream or the client broke off after the answer began: nothing to retry.
            log.info("request to worker %s ended early: %s", worker["id"], exc)
            return failed(502, "The model's worker could not be reached.", "upstream_error")
        finally:
            view.in_flight[worker["id"]] -= 1
            metrics.in_flight[labels] -= 1
    return failed(502, "The model's worker could not be reached.", "upstream_unreachable")


async def relay(request, upstream, labels, started, deployment_name, outcome, strip_usage,
                extra_headers) -> web.StreamResponse:  # fmt: skip
    metrics = request.app[METRICS]
    content_type = upstream.headers.get("Content-Type", "application/json")
    # Which deployment answered: what a canary's users and operators need to tell apart.
    headers = {
        "Content-Type": content_type,
        "X-Hangar-Deployment": deployment_name,
        **extra_headers,
    }
    if not content_type.startswith("text/event-stream"):
        data = await upstream.read()
        _count_usage(metrics, labels, data, outcome)
        return web.Response(status=upstream.status, body=data, headers=headers)
    response = web.StreamResponse(
        status=upstream.status,
        headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    await response.prepare(request)
    first = True
    last = b""
    pending = b""  # an event not yet complete, when usage events are held back
    usage_event = b""
    try:
        async for chunk in upstream.content.iter_any():
            if first:
                outcome.first_token_s = time.monotonic() - started
                metrics.first_token[labels].observe(outcome.first_token_s)
                first = False
            if not strip_usage:
                await response.write(chunk)
                outcome.pieces += chunk.count(b"data: ")
                # Only the end can hold the usage event: keep a short tail, not the stream.
                last = chunk if len(chunk) >= 2048 else last[-2048:] + chunk
                continue
            # SSE allows CRLF line ends; events end with a blank line either way.
            pending += chunk.replace(b"\r\n", b"\n")
            *events, pending = pending.split(b"\n\n")
            raw = b""
            if len(pending) > MAX_EVENT_BYTES:
                # Not an event stream we can read: pass the rest through untouched.
                raw, pending, strip_usage = pending, b"", False
            out = []
            for event in events:
                if event.startswith(b"data: {") and b'"usage"' in event and _no_choices(event):
                    usage_event = event[len(b"data: ") :]
                    continue
                out.append(event + b"\n\n")
                outcome.pieces += 1
            if out or raw:
                await response.write(b"".join(out) + raw)
    except (ConnectionResetError, asyncio.CancelledError):
        # The client left: leaving this block closes the upstream request too.
        metrics.cancelled += 1
        raise
    except (aiohttp.ClientError, TimeoutError) as exc:
        # The engine broke off mid-stream: the client sees the stream end early.
        log.info("stream from the worker ended early: %s", exc)
        return response
    if pending:
        await response.write(pending)
    _count_usage(metrics, labels, usage_event or _last_usage_event(last), outcome)
    await response.write_eof()
    return response


def _no_choices(event: bytes) -> bool:
    try:
        return not json.loads(event[len(b"data: ") :]).get("choices")
    except (ValueError, AttributeError):
        return False


def _last_usage_event(tail: bytes) -> bytes:
    for line in reversed(tail.split(b"\n")):
        if line.startswith(b"data: {") and b'"usage"' in line:
            return line[len(b"data: ") :]
    return b""


def _count_usage(metrics: Metrics, labels, data: bytes, outcome: Outcome) -> None:
    if b'"usage"' not in data:
        return
    try:
        usage = json.loads(data).get("usage") or {}
    except (ValueError, AttributeError):
        return
    for kind in ("prompt_tokens", "completion_tokens"):
        value = usage.get(kind)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            metrics.tokens[(*labels, kind.split("_")[0])] += value
            setattr(outcome, kind.split("_")[0], value)


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
    fair = FairShare(config.worker_concurrency, config.queue_length, config.queue_timeout_s)
    metrics.fair = fair
    accounts = Accounts(config.namespace, config.request_log)
    accounts.reporter = f"{socket.gethostname()}:{os.getpid()}"
    running, store = {}, limits.LimitStore(view.redis)
    for app in (public, admin):
        app[VIEW], app[METRICS], app[CONFIG] = view, metrics, config
        app[FAIR], app[ACCOUNTS], app[RUNNING] = fair, accounts, running
        app[WINDOWS], app[LIMITS] = limits.Windows(), store
    return public, admin


async def alive_processes(redis, config, reporter: str, now: float) -> int:
    """How many gateway processes share the workers: those seen in the last 3 s."""
    name = f"hangar:gw:{config.namespace}:alive"
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zadd(name, {reporter: now})
        pipe.zremrangebyscore(name, "-inf", now - 30)
        pipe.zcount(name, now - 3, "+inf")
        pipe.expire(name, 60)
        answers = await pipe.execute()
    return max(1, int(answers[2]))


async def tick(app: web.Application, stop: asyncio.Event) -> None:
    """Every second: usage into Redis, running leases renewed, the process count and
    the time zone followed."""
    view, accounts, fair = app[VIEW], app[ACCOUNTS], app[FAIR]
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
        try:
            await accounts.flush(view.redis)
            now = time.time()
            app[LIMITS].renew(list(app[RUNNING].values()), now)
            fair.processes = await alive_processes(view.redis, app[CONFIG], accounts.reporter, now)
        except Exception as exc:  # Redis away: the next second tries again
            log.debug("tick: %s", exc)
        if view.current is not None and view.current.timezone != app[WINDOWS].zone.key:
            app[WINDOWS] = limits.Windows(view.current.timezone)


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
        ticking = asyncio.create_task(tick(public, stop))
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
        # Settle what is still being settled, and write the last second's usage.
        await public[LIMITS].flush()
        with contextlib.suppress(Exception):
            await public[ACCOUNTS].flush(view.redis)
            await view.redis.zrem(f"hangar:gw:{config.namespace}:alive", public[ACCOUNTS].reporter)
        for task in (follower, reporting, ticking):
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
