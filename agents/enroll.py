"""Enrollment: trade a one-time token for this node's credential.

Uses urllib on purpose: enrollment runs once, and the agent keeps its
dependencies to what it needs every second.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agents.files import write_private

ENROLL_PATH = "/api/v1/agent/enroll/"
CREDENTIAL_FILE = "credential.json"
_CREDENTIAL_KEYS = ("node_id", "credential", "queue", "broker_url")
# Consoles since node-scoped broker identities send the key prefix of the node's
# queue and results; without one the agent uses the broker's plain keys.
_OPTIONAL_KEYS = ("broker_key_prefix",)


class EnrollError(Exception):
    """Enrollment failed; str() is one line for the person at the terminal."""


class BadConsoleURL(EnrollError):
    """The --console value is not an http(s) URL (a usage error, exit code 2)."""


def check_console_url(console: str) -> str:
    parts = urlsplit(console)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadConsoleURL(
            f"--console {console!r} is not a console address; "
            "expected e.g. https://hangar.example.com"
        )
    return console.rstrip("/")


def _console_message(body: bytes) -> str:
    """The console's own explanation out of a JSON error body, if there is one."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip().splitlines()[0][:200] if body else ""
    if isinstance(data, dict):
        for key in ("detail", "error", "message"):
            if isinstance(data.get(key), str):
                return data[key]
        return "; ".join(f"{k}: {v}" for k, v in data.items())[:200]
    return str(data)[:200]


def request_credential(
    console: str, token: str, facts: dict[str, Any], timeout: float = 15.0
) -> dict[str, Any]:
    console = check_console_url(console)
    payload = {"token": token, "hostname": facts.get("hostname"), "facts": facts}
    # The scheme was checked to be http(s) above, hence the noqa for S310.
    request = urllib.request.Request(  # noqa: S310
        console + ENROLL_PATH,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            body = response.read()
    except urllib.error.HTTPError as exc:
        message = _console_message(exc.read()) or exc.reason
        raise EnrollError(f"the console refused enrollment (HTTP {exc.code}): {message}") from None
    except urllib.error.URLError as exc:
        raise EnrollError(f"cannot reach the console at {console}: {exc.reason}") from None
    except (TimeoutError, ConnectionError) as exc:
        raise EnrollError(f"cannot reach the console at {console}: {exc}") from None
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise EnrollError(
            f"{console} answered, but not with a JSON object: is it a Hangar console?"
        )
    missing = [key for key in _CREDENTIAL_KEYS if key not in answer]
    if missing:
        raise EnrollError(f"the console's answer lacks {', '.join(missing)}: is it up to date?")
    scoped = {key: answer[key] for key in _OPTIONAL_KEYS if isinstance(answer.get(key), str)}
    return {"console": console, **{key: answer[key] for key in _CREDENTIAL_KEYS}, **scoped}


def write_credential(state_dir: Path, credential: dict[str, Any]) -> Path:
    """Write credential.json readable by its owner only, atomically.

    The file is created with mode 0600 rather than chmod-ed afterwards, so
    there is no moment at which another user could open it.
    """
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_dir / CREDENTIAL_FILE
    write_private(path, json.dumps(credential, indent=2) + "\n")
    return path


def read_credential(state_dir: Path) -> dict[str, Any]:
    path = state_dir / CREDENTIAL_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EnrollError(
            f"no credential at {path}; enroll this node first: "
            "hangar-agent enroll --console URL --token TOKEN"
        ) from None
    except PermissionError:
        raise EnrollError(f"cannot read {path}: permission denied (run as its owner)") from None
    except ValueError:
        raise EnrollError(f"{path} is not valid JSON; enroll this node again") from None
    missing = [key for key in ("console", *_CREDENTIAL_KEYS) if key not in data]
    if missing:
        raise EnrollError(f"{path} lacks {', '.join(missing)}; enroll this node again")
    return data


def enroll(console: str, token: str, state_dir: Path, facts: dict[str, Any]) -> Path:
    return write_credential(state_dir, request_credential(console, token, facts))
