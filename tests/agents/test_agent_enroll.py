"""Enrollment against a real (tiny) HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agents.enroll import (
    BadConsoleURL,
    EnrollError,
    enroll,
    read_credential,
    request_credential,
)
from agents.protocol import validate_facts
from tests.agents.agent_helpers import REPO_ROOT, WAIT_S, agent_command, agent_env

ANSWER = {
    "node_id": 12,
    "credential": "hnc_secret",
    "queue": "node.12",
    "broker_url": "redis://10.0.0.5:6379/0",
    "protocol": 1,
}
FACTS = {"hostname": "gpu01", "gpus": []}


class EnrollConsole:
    """Answers POST /api/v1/agent/enroll/ with a canned status and body."""

    def __init__(self, status: int = 201, body: bytes = json.dumps(ANSWER).encode()) -> None:
        self.status, self.body = status, body
        self.requests: list[tuple[str, dict]] = []
        console = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                console.requests.append((self.path, json.loads(self.rfile.read(length))))
                self.send_response(console.status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(console.body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def console():
    server = EnrollConsole()
    yield server
    server.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_enrolling_writes_the_credential_readable_by_its_owner_only(console, tmp_path):
    old_umask = os.umask(0)  # even a permissive umask must not widen the file
    try:
        path = enroll(console.url, "tok", tmp_path / "state", FACTS)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    saved = json.loads(path.read_text())
    assert saved == {"console": console.url, **{k: ANSWER[k] for k in saved if k != "console"}}
    assert saved["credential"] == "hnc_secret" and saved["queue"] == "node.12"
    assert read_credential(tmp_path / "state")["node_id"] == 12
    assert os.listdir(path.parent) == ["credential.json"]  # no temporary left behind


def test_the_request_carries_token_hostname_and_facts(console):
    request_credential(console.url + "/", "tok-1", FACTS)
    ((path, body),) = console.requests
    assert path == "/api/v1/agent/enroll/"
    assert body == {"token": "tok-1", "hostname": "gpu01", "facts": FACTS}


def test_a_refused_token_shows_the_consoles_own_message(tmp_path):
    server = EnrollConsole(400, b'{"detail": "This enrollment token has expired."}')
    try:
        with pytest.raises(EnrollError) as error:
            enroll(server.url, "old", tmp_path, FACTS)
    finally:
        server.close()
    assert str(error.value) == (
        "the console refused enrollment (HTTP 400): This enrollment token has expired."
    )
    assert not (tmp_path / "credential.json").exists()


def test_an_answer_that_is_not_a_credential_is_an_error(tmp_path):
    server = EnrollConsole(201, b"<html>hello</html>")
    try:
        with pytest.raises(EnrollError, match="not with a JSON object"):
            enroll(server.url, "tok", tmp_path, FACTS)
    finally:
        server.close()


def test_an_unreachable_console_is_one_clear_error(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(EnrollError, match=f"cannot reach the console at {url}"):
        enroll(url, "tok", tmp_path, FACTS)


@pytest.mark.parametrize("url", ["ftp://console", "console.example.com", "http://", ""])
def test_a_bad_console_url_is_refused_before_any_request(url, tmp_path):
    with pytest.raises(BadConsoleURL, match="is not a console address"):
        enroll(url, "tok", tmp_path, FACTS)


def test_the_enroll_command_sends_valid_facts_and_writes_the_file(console, tmp_path):
    state = tmp_path / "state"
    result = subprocess.run(
        agent_command(
            "enroll",
            "--console",
            console.url,
            "--token",
            "tok",
            "--state-dir",
            str(state),
            "--simulate",
            "2",
        ),
        env=agent_env(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert result.returncode == 0, result.stderr
    assert "credential written to" in result.stdout
    facts = validate_facts(console.requests[0][1]["facts"])
    assert facts["simulated"] is True and len(facts["gpus"]) == 2
    assert stat.S_IMODE((state / "credential.json").stat().st_mode) == 0o600


def test_the_enroll_command_prints_one_line_and_exits_1_when_refused(tmp_path):
    server = EnrollConsole(403, b'{"detail": "Token already used."}')
    try:
        result = subprocess.run(
            agent_command(
                "enroll",
                "--console",
                server.url,
                "--token",
                "t",
                "--state-dir",
                str(tmp_path),
                "--simulate",
                "1",
            ),
            env=agent_env(),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=WAIT_S,
        )
    finally:
        server.close()
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "hangar-agent: the console refused enrollment (HTTP 403): Token already used."
    )


def test_the_enroll_command_treats_a_bad_url_as_a_usage_error(tmp_path):
    result = subprocess.run(
        agent_command(
            "enroll", "--console", "gopher://x", "--token", "t", "--state-dir", str(tmp_path)
        ),
        env=agent_env(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "is not a console address" in result.stderr
