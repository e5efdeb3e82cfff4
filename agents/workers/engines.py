"""Engine adapters: a WORKER_SPEC -> an argument vector, a health path, metrics.

The allowed flags per engine are data (`ENGINES[name].flags`) so the console
validates a deployment's engine arguments with the same table the agent
applies before it starts anything (`from agents.workers.engines import
ENGINES, validate_engine_args`). A flag that is not in the table is refused;
some are refused with a reason (`refused`), because they run code shipped
with a model (`--trust-remote-code`) or because the agent owns them (host,
port, model path).

Flag kinds: ("int", lo, hi), ("float", lo, hi), ("text",) for a short
identifier-like value, ("switch",) for a flag without value, and
("choice", a, b, ...) for one of a few words.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Kind = tuple[Any, ...]

SWITCH: Kind = ("switch",)
TEXT: Kind = ("text",)


def _int(lo: int = 1, hi: int = 2**31 - 1) -> Kind:
    return ("int", lo, hi)


def _float(lo: float, hi: float) -> Kind:
    return ("float", lo, hi)


def _choice(*values: str) -> Kind:
    return ("choice", *values)


# A text value is a name, a dtype, a number list: never a path, never spaces.
_TEXT_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+,/=-]{0,199}$")

_DTYPES = _choice("auto", "half", "float16", "bfloat16", "float", "float32")
_OWNED_BY_AGENT = "the agent sets it from the worker spec"
_REMOTE_CODE = "it runs Python code shipped with the model; Hangar never allows it"
_PATHS = "it names a file on the node; put files in the model version instead"
_SECRET = "the agent passes each worker its own secret"

# The engine key (WORKER_SPEC.api_key) reaches an engine through a file or its
# environment, never its command line, which every user of the node can read
# (`ps`); SGLang, which takes it on its command line only, is the exception.
API_KEY_ENV = "HANGAR_ENGINE_API_KEY"  # the reference and generic engines
VLLM_API_KEY_ENV = "VLLM_API_KEY"
# Never inherited from the agent's own environment: each worker gets its own or none.
KEY_VARIABLES = (API_KEY_ENV, VLLM_API_KEY_ENV)
API_KEY_FILE_PLACEHOLDER = "{api_key_file}"


@dataclass(frozen=True)
class PrometheusNames:
    """Where an engine's /metrics keeps what WORKER_METRICS reports."""

    latency_histogram: str
    requests_counter: str | None = None  # None: the histogram's _count
    errors_counter: str | None = None
    # label=value pairs of requests_counter that count as errors, when the
    # engine has no error counter of its own (vLLM: finished_reason="abort").
    error_labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Engine:
    name: str
    flags: Mapping[str, Kind]
    refused: Mapping[str, str]
    health_path: str | None  # None: the spec declares it (generic)
    metrics: PrometheusNames | None  # None: latency by probing the health path
    # Sockets the worker's processes may listen on besides its declared port on its
    # declared address: (address, port), port None for any port on that address.
    # Anything else fails the worker (`unexpected-listener`); admins add entries here.
    extra_listeners: tuple[tuple[str, int | None], ...] = ()


ENGINES: dict[str, Engine] = {
    "vllm": Engine(
        name="vllm",
        flags={
            "--max-model-len": _int(),
            "--tensor-parallel-size": _int(1, 64),
            "--pipeline-parallel-size": _int(1, 64),
            "--data-parallel-size": _int(1, 64),
            "--gpu-memory-utilization": _float(0.05, 1.0),
            "--dtype": _DTYPES,
            "--quantization": TEXT,
            "--kv-cache-dtype": _choice("auto", "fp8", "fp8_e4m3", "fp8_e5m2"),
            "--max-num-seqs": _int(),
            "--max-num-batched-tokens": _int(),
            "--served-model-name": TEXT,
            "--block-size": _int(1, 1024),
            "--swap-space": _int(0, 1024),
            "--seed": _int(0),
            "--max-logprobs": _int(0),
            "--enforce-eager": SWITCH,
            "--enable-prefix-caching": SWITCH,
            "--no-enable-prefix-caching": SWITCH,
            "--enable-chunked-prefill": SWITCH,
            "--disable-log-requests": SWITCH,
            "--disable-log-stats": SWITCH,
            "--tokenizer-mode": _choice("auto", "slow", "mistral"),
            "--generation-config": _choice("auto", "vllm"),
        },
        refused={
            "--trust-remote-code": _REMOTE_CODE,
            "--host": _OWNED_BY_AGENT,
            "--port": _OWNED_BY_AGENT,
            "--model": _OWNED_BY_AGENT,
            "--download-dir": _PATHS,
            "--chat-template": _PATHS,
            "--tokenizer": _PATHS,
            "--api-key": _SECRET,
        },
        health_path="/health",
        metrics=PrometheusNames(
            latency_histogram="vllm:e2e_request_latency_seconds",
            requests_counter="vllm:request_success_total",
            error_labels={"finished_reason": "abort"},
        ),
    ),
    "sglang": Engine(
        name="sglang",
        flags={
            "--tp-size": _int(1, 64),
            "--dp-size": _int(1, 64),
            "--mem-fraction-static": _float(0.05, 1.0),
            "--context-length": _int(),
            "--dtype": _DTYPES,
            "--quantization": TEXT,
            "--kv-cache-dtype": _choice("auto", "fp8_e4m3", "fp8_e5m2"),
            "--max-running-requests": _int(),
            "--max-total-tokens": _int(),
            "--chunked-prefill-size": _int(-1),
            "--served-model-name": TEXT,
            "--attention-backend": TEXT,
            "--random-seed": _int(0),
            "--disable-radix-cache": SWITCH,
            "--disable-cuda-graph": SWITCH,
            "--enable-metrics": SWITCH,
        },
        refused={
            "--trust-remote-code": _REMOTE_CODE,
            "--host": _OWNED_BY_AGENT,
            "--port": _OWNED_BY_AGENT,
            "--model-path": _OWNED_BY_AGENT,
            "--tokenizer-path": _PATHS,
            "--chat-template": _PATHS,
            "--api-key": _SECRET,
        },
        health_path="/health",
        metrics=None,
    ),
    "llama.cpp": Engine(
        name="llama.cpp",
        flags={
            "--ctx-size": _int(),
            "--n-gpu-layers": _int(0, 100_000),
            "--threads": _int(1, 1024),
            "--parallel": _int(1, 1024),
            "--batch-size": _int(),
            "--ubatch-size": _int(),
            "--cache-type-k": _choice("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"),
            "--cache-type-v": _choice("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"),
            "--flash-attn": _choice("on", "off", "auto"),
            "--split-mode": _choice("none", "layer", "row"),
            "--tensor-split": TEXT,
            "--main-gpu": _int(0, 63),
            "--alias": TEXT,
            "--pooling": _choice("none", "mean", "cls", "last", "rank"),
            "--seed": _int(-1),
            "--cont-batching": SWITCH,
            "--no-mmap": SWITCH,
            "--mlock": SWITCH,
            "--embedding": SWITCH,
            "--metrics": SWITCH,
        },
        refused={
            "--host": _OWNED_BY_AGENT,
            "--port": _OWNED_BY_AGENT,
            "--model": _OWNED_BY_AGENT,
            "-m": _OWNED_BY_AGENT,
            "--lora": _PATHS,
            "--chat-template-file": _PATHS,
            "--api-key": _SECRET,
            "--api-key-file": _SECRET,
        },
        health_path="/health",
        metrics=None,
    ),
    # Everything goes in spec.command (an argv list, run without a shell);
    # engine_args must be empty because no table can check an unknown program.
    "generic": Engine(name="generic", flags={}, refused={}, health_path=None, metrics=None),
    "reference": Engine(
        name="reference",
        flags={
            "--backend": _choice("auto", "stand-in"),
            "--startup-delay": _float(0.0, 3600.0),
            "--token-delay": _float(0.0, 10.0),
            "--extra-listener-port": _int(0, 65535),
        },
        refused={
            "--model": _OWNED_BY_AGENT,
            "--port": _OWNED_BY_AGENT,
            "--host": _OWNED_BY_AGENT,
            "--api-key-file": _SECRET,
        },
        health_path="/health",
        metrics=PrometheusNames(
            latency_histogram="hangar_reference_request_latency_seconds",
            requests_counter="hangar_reference_requests_total",
            errors_counter="hangar_reference_request_errors_total",
        ),
    ),
}


class EngineArgsError(ValueError):
    """engine_args break the engine's table; str() is for the person who wrote them.

    Raised with a `%(name)s` template and its parameters, so the console can show
    the message in the reader's language (apps/deployments/engines.py) while the
    agent, which has no translations, uses the English text.
    """

    def __init__(self, template: str, **params: str):
        self.template, self.params = template, params
        super().__init__(template % params if params else template)


def validate_engine_args(engine: str, args: list[str]) -> list[str]:
    """Check `args` against the engine's table; return them normalized.

    Normalized means `--flag=value` becomes `--flag value`, so what runs is
    exactly what the table allowed, one argv item each.
    """
    table = ENGINES.get(engine)
    if table is None:
        raise EngineArgsError(
            "unknown engine %(engine)s; expected one of %(engines)s",
            engine=repr(engine),
            engines=", ".join(ENGINES),
        )
    if engine == "generic" and args:
        raise EngineArgsError("the generic engine takes no engine_args: put them in its command")
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not isinstance(arg, str) or not arg.startswith("-"):
            raise EngineArgsError(
                "engine argument %(arg)s is not a flag (flags start with -)", arg=repr(arg)
            )
        flag, has_inline, inline = arg.partition("=")
        if flag in table.refused:
            raise EngineArgsError(
                "%(flag)s is not allowed for %(engine)s: %(reason)s",
                flag=flag,
                engine=engine,
                reason=table.refused[flag],
            )
        kind = table.flags.get(flag)
        if kind is None:
            allowed = ", ".join(sorted(table.flags)) or "none"
            raise EngineArgsError(
                "%(flag)s is not an allowed %(engine)s flag (allowed: %(allowed)s)",
                flag=flag,
                engine=engine,
                allowed=allowed,
            )
        if kind[0] == "switch":
            if has_inline:
                raise EngineArgsError("%(flag)s takes no value", flag=flag)
            out.append(flag)
            i += 1
            continue
        if has_inline:
            value = inline
            i += 1
        elif i + 1 < len(args):
            value = args[i + 1]
            i += 2
        else:
            raise EngineArgsError("%(flag)s needs a value", flag=flag)
        out += [flag, _check_value(flag, kind, value)]
    return out


def _check_value(flag: str, kind: Kind, value: Any) -> str:
    if not isinstance(value, str):
        raise EngineArgsError(
            "%(flag)s needs a string value, got %(type)s", flag=flag, type=type(value).__name__
        )
    if kind[0] in ("int", "float"):
        convert = int if kind[0] == "int" else float
        try:
            number = convert(value)
        except ValueError:
            raise EngineArgsError(
                "%(flag)s needs a number, got %(value)s", flag=flag, value=repr(value)
            ) from None
        lo, hi = kind[1], kind[2]
        if not lo <= number <= hi:
            raise EngineArgsError(
                "%(flag)s = %(value)s is outside %(lo)s..%(hi)s",
                flag=flag,
                value=value,
                lo=str(lo),
                hi=str(hi),
            )
        return value
    if kind[0] == "choice":
        if value not in kind[1:]:
            raise EngineArgsError(
                "%(flag)s must be one of %(choices)s, got %(value)s",
                flag=flag,
                choices=", ".join(kind[1:]),
                value=repr(value),
            )
        return value
    if not _TEXT_VALUE.match(value) or ".." in value:
        raise EngineArgsError(
            "%(flag)s = %(value)s is not allowed: use letters, digits and ._:@+,/=- "
            "(at most 200), starting with a letter or digit",
            flag=flag,
            value=repr(value),
        )
    return value


def _gguf_file(spec: dict[str, Any]) -> str:
    names = sorted(f["path"] for f in spec["model"]["files"] if f["path"].endswith(".gguf"))
    if not names:
        raise EngineArgsError("llama.cpp needs a .gguf file in the model version")
    # A split model loads from its first part (...-00001-of-0000N.gguf).
    return names[0]


def build_argv(
    spec: dict[str, Any], host: str = "127.0.0.1", api_key_file: str | None = None
) -> list[str]:
    """The argument vector that starts the worker; never passed to a shell.

    With a key in the spec, `api_key_file` is the file the agent wrote it to
    (mode 0600); engines that read a key file are given its path, not the key.
    """
    engine = spec["engine"]
    args = validate_engine_args(engine, spec["engine_args"])
    model = spec["model"]["path"]
    port = str(spec["port"])
    api_key = spec.get("api_key")
    key_file_args: list[str] = []
    if api_key is not None:
        if api_key_file is None:
            raise ValueError("a spec with an api_key needs the path of its key file")
        key_file_args = ["--api-key-file", api_key_file]
    if engine == "vllm":  # the key: VLLM_API_KEY (key_environment)
        return ["vllm", "serve", model, "--host", host, "--port", port, *args]
    if engine == "sglang":
        # SGLang reads its key from --api-key only: visible in the node's process
        # list (docs/agent.md). The supervisor hides it in the logs it passes on.
        key_args = ["--api-key", api_key] if api_key is not None else []
        return [
            sys.executable, "-m", "sglang.launch_server", "--model-path", model,
            "--host", host, "--port", port, *key_args, *args,
        ]  # fmt: skip
    if engine == "llama.cpp":
        gguf = f"{model.rstrip('/')}/{_gguf_file(spec)}"
        return ["llama-server", "-m", gguf, "--host", host, "--port", port, *key_file_args, *args]
    if engine == "reference":
        return [
            sys.executable, "-m", "agents.reference_engine", "--model", model,
            "--host", host, "--port", port, *key_file_args, *args,
        ]  # fmt: skip
    # generic: the spec's argv with {port}, {host}, {model_path} and {api_key_file}
    # filled in; the key is also in its environment (key_environment).
    values = {"{port}": port, "{host}": host, "{model_path}": model}
    argv = []
    for item in spec["command"] or []:
        if API_KEY_FILE_PLACEHOLDER in item:
            if api_key_file is None or api_key is None:
                raise EngineArgsError(
                    "the command names {api_key_file} but this worker has no API key"
                )
            item = item.replace(API_KEY_FILE_PLACEHOLDER, api_key_file)
        for placeholder, value in values.items():
            item = item.replace(placeholder, value)
        argv.append(item)
    if not argv:
        raise EngineArgsError("a generic worker needs a command")
    return argv


def key_environment(spec: dict[str, Any]) -> dict[str, str]:
    """The environment variables that give the worker its key (none without one)."""
    api_key = spec.get("api_key")
    if api_key is None:
        return {}
    if spec["engine"] == "vllm":
        return {VLLM_API_KEY_ENV: api_key}
    if spec["engine"] == "generic":
        return {API_KEY_ENV: api_key}
    return {}  # the reference engine and llama.cpp read the file; SGLang its argv


def health_path(spec: dict[str, Any]) -> str:
    return spec.get("health_path") or ENGINES[spec["engine"]].health_path or "/health"


LOOPBACK = frozenset({"127.0.0.1", "::1"})


def unexpected_listeners(
    spec: dict[str, Any], host: str, listening: list[tuple[str, int, int, str]]
) -> list[tuple[str, int, int, str]]:
    """The sockets a worker listens on that neither its spec nor its engine allows.

    `listening` is (address, port, pid, process name) for every listening socket of
    the worker's process tree. The declared port is allowed on the declared host
    (and on loopback, where the agent's health checks reach it).
    """
    allowed = ENGINES[spec["engine"]].extra_listeners
    wanted = {host, *LOOPBACK}
    found = []
    for entry in listening:
        address, port = entry[0], entry[1]
        anywhere = host in ("0.0.0.0", "::")  # noqa: S104 (comparing, not binding)
        if port == spec["port"] and (address in wanted or anywhere):
            continue
        if any(a == address and p in (None, port) for a, p in allowed):
            continue
        found.append(entry)
    return found
