"""deploy/nginx/hangar.conf with real nginx in front of a real Daphne and gateway.

nginx runs as this user on free ports, with a throwaway certificate made by
openssl; the site file is the shipped one with only its ports and paths swapped.
"""

from __future__ import annotations

import getpass
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from apps.accounts.tokens import create_api_token
from apps.audit.models import AuditEvent
from apps.inventory.services import create_enrollment_token
from tests.support import processes
from tests.telemetry.conftest import FACTS, receive_until, session_for

SITE = processes.ROOT / "deploy" / "nginx" / "hangar.conf"
TLS12 = processes.ROOT / "deploy" / "nginx" / "tls12.conf"
# The client connects from this loopback address, nginx from 127.0.0.1: so "the
# address nginx saw" differs from nginx's own, which the console trusts.
CLIENT_ADDRESS = "127.0.0.2"
FORGED = "203.0.113.99"


def make_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "hangar.crt", directory / "hangar.key"
    subprocess.run(
        [
            *(
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ),
            *("-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def site_config(tmp: Path, ports: dict, static_root: Path, tls12: bool = False) -> str:
    text = SITE.read_text()
    swaps = {
        "listen 80;": f"listen 127.0.0.1:{ports['http']};",
        "listen [::]:80;": "",
        "listen 443 ssl http2;": f"listen 127.0.0.1:{ports['https']} ssl http2;",
        "listen [::]:443 ssl http2;": "",
        "/etc/hangar/tls/": f"{tmp}/",
        "server 127.0.0.1:8000;": f"server 127.0.0.1:{ports['console']};",
        "server 127.0.0.1:8400;": f"server 127.0.0.1:{ports['gateway']};",
        "/var/lib/hangar/staticfiles/": f"{static_root}/",
    }
    if tls12:
        swaps["ssl_protocols TLSv1.3;"] = f"include {TLS12};"
    for old, new in swaps.items():
        assert old in text, f"{old!r} is no longer in {SITE.name}: update this test"
        text = text.replace(old, new)
    return text


def start_nginx(tmp: Path, site: str) -> subprocess.Popen:
    (tmp / "site.conf").write_text(site)
    (tmp / "nginx.conf").write_text(
        f"""
# As root nginx's workers would be nobody, who can't read pytest's 0700 folders.
user {getpass.getuser()};
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{}}
http {{
    include /etc/nginx/mime.types;
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/site.conf;
}}
"""
    )
    binary = shutil.which("nginx", path=f"/usr/sbin:/usr/bin:{os.environ.get('PATH', '')}")
    assert binary, "nginx is not installed (Debian package nginx; .ci/run installs it)"
    command = [binary, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(tmp / "nginx.conf")]
    checked = subprocess.run([*command, "-t"], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    return processes.start(
        [*command, "-g", "daemon off;"], {"PATH": "/usr/sbin:/usr/bin"}, tmp / "nginx.out"
    )


@pytest.fixture
def edge(transactional_db, tmp_path):
    """Daphne trusting 127.0.0.1, a gateway, and nginx in front of both."""
    cert, _key = make_certificate(tmp_path)
    data = tmp_path / "data"
    env = processes.console_env(
        HANGAR_TRUSTED_PROXIES="127.0.0.1",
        HANGAR_HTTPS="true",
        HANGAR_ALLOWED_HOSTS="127.0.0.1",
    )
    # collectstatic into a root of the test's own, as an install does.
    static_env = {**env, "HANGAR_DATA_DIR": str(data)}
    subprocess.run(
        [str(processes.BIN / "python"), "manage.py", "collectstatic", "--noinput", "-v0"],
        cwd=processes.ROOT,
        env=static_env,
        check=True,
    )
    ports = {name: processes.free_port() for name in ("http", "https", "console", "gateway")}
    started = [
        processes.start(
            [
                str(processes.BIN / "daphne"),
                "-b",
                "127.0.0.1",
                "-p",
                str(ports["console"]),
                "console.asgi:application",
            ],
            env,
            tmp_path / "daphne.log",
        ),
        processes.start(
            [str(processes.BIN / "hangar-gateway")],
            {
                **env,
                "HANGAR_GATEWAY_BIND": f"127.0.0.1:{ports['gateway']}",
                "HANGAR_GATEWAY_ADMIN_BIND": f"127.0.0.1:{processes.free_port()}",
            },
            tmp_path / "gateway.log",
        ),
    ]
    nginx_dir = tmp_path / "nginx"
    nginx_dir.mkdir()
    for name in ("hangar.crt", "hangar.key"):
        (nginx_dir / name).write_bytes((tmp_path / name).read_bytes())

    def start(tls12: bool = False) -> subprocess.Popen:
        proc = start_nginx(nginx_dir, site_config(nginx_dir, ports, data / "staticfiles", tls12))
        started.append(proc)
        processes.wait_for(
            lambda: _get("/healthz")[0] == 200, what="nginx and daphne", process=proc
        )
        return proc

    context = ssl.create_default_context(cafile=str(cert))

    def _get(path, headers=None, method="GET", body=None):
        connection = http.client.HTTPSConnection(
            "127.0.0.1",
            ports["https"],
            context=context,
            timeout=15,
            source_address=(CLIENT_ADDRESS, 0),
        )
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        answer = (response.status, dict(response.getheaders()), response.read())
        connection.close()
        return answer

    class Edge:
        pass

    edge = Edge()
    edge.ports, edge.context, edge.request, edge.start, edge.static = (
        ports,
        context,
        _get,
        start,
        data / "staticfiles",
    )
    edge.url = f"https://127.0.0.1:{ports['https']}"
    yield edge
    for proc in reversed(started):
        processes.stop(proc)


def s_client(port: int, version: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", version, *extra],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_tls_1_3_is_accepted_and_tls_1_2_refused_by_default(edge):
    edge.start()
    assert s_client(edge.ports["https"], "-tls1_2").returncode != 0
    accepted = s_client(edge.ports["https"], "-tls1_3")
    assert accepted.returncode == 0, accepted.stderr
    assert "TLSv1.3" in accepted.stdout


def test_the_tls_1_2_option_offers_only_aead_suites(edge):
    edge.start(tls12=True)
    strong = s_client(edge.ports["https"], "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")
    assert strong.returncode == 0, strong.stderr
    cbc = s_client(edge.ports["https"], "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256")
    assert cbc.returncode != 0


def test_plain_http_is_redirected_and_https_carries_hsts(edge):
    edge.start()
    connection = http.client.HTTPConnection("127.0.0.1", edge.ports["http"], timeout=10)
    connection.request("GET", "/login/?next=/nodes/")
    response = connection.getresponse()
    assert response.status == 301
    assert response.getheader("Location") == "https://127.0.0.1/login/?next=/nodes/"
    status, headers, body = edge.request("/login/")
    assert status == 200, body[:500]
    assert b'name="password"' in body
    assert headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"


def test_static_files_come_from_the_collected_root(edge):
    edge.start()
    # A file only in the collected root: Daphne (whitenoise finders) doesn't have it.
    (edge.static / "only-in-root.txt").write_text("served by nginx")
    status, _headers, body = edge.request("/static/only-in-root.txt")
    assert (status, body) == (200, b"served by nginx")
    status, _headers, body = edge.request("/static/hangar/live.js")
    assert status == 200
    assert body == (processes.ROOT / "static" / "hangar" / "live.js").read_bytes()


def test_the_api_works_through_nginx(edge, admin_user):
    edge.start()
    _token, secret = create_api_token(admin_user, "edge", 1)
    status, _headers, body = edge.request(
        "/api/v1/clusters/", headers={"Authorization": f"Bearer {secret}"}
    )
    assert status == 200, body[:500]
    assert "results" in json.loads(body)


def test_the_gateway_answers_under_v1_through_nginx(edge):
    edge.start()
    status, _headers, body = edge.request("/v1/models")
    # The gateway's own refusal in OpenAI's shape, not the console's 404.
    assert status in (401, 503), body
    assert json.loads(body)["error"]["code"] in ("missing_api_key", "not_ready")


def test_a_forged_forwarded_for_is_not_the_audit_source_behind_nginx(edge):
    edge.start()
    status, _headers, _body = edge.request(
        "/api/v1/agent/enroll/",
        method="POST",
        body=json.dumps({"token": "no-such-token", "hostname": "forger"}),
        headers={"Content-Type": "application/json", "X-Forwarded-For": FORGED},
    )
    assert status == 403
    event = AuditEvent.objects.get(action="inventory.enroll")
    assert event.source_address == CLIENT_ADDRESS


def _socket(edge, path: str, **options):
    raw = socket.create_connection(
        ("127.0.0.1", edge.ports["https"]), timeout=10, source_address=(CLIENT_ADDRESS, 0)
    )
    return connect(
        f"wss://127.0.0.1:{edge.ports['https']}{path}",
        sock=raw,
        ssl=edge.context,
        server_hostname="127.0.0.1",
        open_timeout=10,
        **options,
    )


def test_agent_and_browser_websockets_work_through_nginx(edge, cluster, make_user):
    edge.start()
    _token, secret = create_enrollment_token(cluster, None)
    status, _headers, body = edge.request(
        "/api/v1/agent/enroll/",
        method="POST",
        body=json.dumps({"token": secret, "hostname": "gpu-edge", "facts": FACTS}),
        headers={"Content-Type": "application/json"},
    )
    assert status == 201, body
    credential = json.loads(body)["credential"]
    agent = _socket(
        edge, "/ws/agent/", additional_headers={"Authorization": f"Bearer {credential}"}
    )
    welcome = json.loads(agent.recv(timeout=10))
    assert welcome["type"] == "welcome"
    viewer = make_user("vera", ("viewer", cluster))
    browser = _socket(
        edge,
        "/ws/telemetry/",
        origin=edge.url,
        additional_headers={"Cookie": f"sessionid={session_for(viewer)}"},
    )
    browser.send(json.dumps({"action": "subscribe", "cluster": cluster.pk}))
    snapshot = receive_until(browser, lambda m: m["type"] == "snapshot")
    assert [n["id"] for n in snapshot["nodes"]] == [json.loads(body)["node_id"]]
    agent.close()
    browser.close()


def test_an_agent_socket_through_nginx_is_audited_with_the_address_nginx_saw(edge):
    edge.start()
    agent = _socket(
        edge,
        "/ws/agent/",
        additional_headers={"Authorization": "Bearer nothing-real", "X-Forwarded-For": FORGED},
    )
    with pytest.raises(ConnectionClosed):  # the console refuses the credential
        agent.recv(timeout=10)
    processes.wait_for(
        lambda: AuditEvent.objects.filter(action="agent.connect").exists(),
        what="the refused connection's audit event",
    )
    assert AuditEvent.objects.get(action="agent.connect").source_address == CLIENT_ADDRESS
