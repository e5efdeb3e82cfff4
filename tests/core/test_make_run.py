"""`make run`'s command end to end: SQLite, embedded Redis, a simulated local agent."""

import json
import os
import re
import signal
import subprocess
import time
from urllib.parse import urlsplit

import pytest
import redis

from tests.support import processes
from tests.support.browserless import Session, admin_password


def supervisor_pids(env) -> dict[str, int]:
    """{program: pid} from `supervisorctl status` ("agent  RUNNING  pid 123, uptime ...";
    the Daphnes as "web:web-0", "web:web-1")."""
    out = subprocess.run(
        [
            str(processes.BIN / "supervisorctl"),
            "-c",
            str(processes.ROOT / "deploy/supervisord.conf"),
            "status",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^([\w:-]+)\s+RUNNING\s+pid (\d+)", out, re.M)
    }


def test_make_run_serves_the_console_with_a_local_agent_that_goes_offline_and_back(tmp_path):
    port, redis_port = processes.free_port(), processes.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANGAR_")}
    env.update(
        {
            "HANGAR_DATA_DIR": str(tmp_path / "data"),
            "HANGAR_BIND": f"127.0.0.1:{port}",
            "HANGAR_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "HANGAR_NODE_GRACE_SECONDS": "3",
            "HANGAR_GATEWAY_BIND": f"127.0.0.1:{processes.free_port()}",
            "HANGAR_GATEWAY_ADMIN_BIND": f"127.0.0.1:{processes.free_port()}",
            "PATH": f"{processes.BIN}{os.pathsep}{env['PATH']}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    log = tmp_path / "serve.log"
    serve = processes.start([str(processes.BIN / "python"), "manage.py", "serve"], env, log)
    session = Session(f"http://127.0.0.1:{port}")
    try:
        processes.wait_for(
            lambda: session.request("GET", "/healthz")[0] == 200,
            timeout=90,
            what="the console to answer /healthz",
            process=serve,
        )
        output = log.read_text()
        assert f"open http://127.0.0.1:{port}/" in output
        assert "starting the embedded Redis" in output
        assert "simulating 2 GPUs" in output
        gateway_line = next(line for line in output.splitlines() if "model gateway" in line)
        assert f"http://{env['HANGAR_GATEWAY_BIND']}/v1" in gateway_line
        session.first_admin_login(admin_password(output))
        # Details such as the vendor are for logged-in users (apps/core/health.py).
        health = session.json("/healthz")
        assert health["checks"]["database"]["vendor"] == "sqlite"

        def local_node(state):
            nodes = session.json("/api/v1/nodes/")["results"]
            return len(nodes) == 1 and nodes[0]["state"] == state and nodes[0]

        processes.wait_for(lambda: local_node("online"), timeout=60, what="the local node online")
        node = local_node("online")
        assert node["simulated"] is True
        # The embedded Redis wants the generated password; the local agent never gets
        # it, only its own node-scoped identity, which reaches its commands.
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(port=redis_port).ping()
        credential = json.loads((tmp_path / "data" / "agent" / "credential.json").read_text())
        broker_url = urlsplit(credential["broker_url"])
        assert broker_url.username == f"hangar-node-db0-{node['id']}"
        assert broker_url.password == credential["credential"]
        password = (tmp_path / "data" / "redis-password").read_text().strip()
        assert password not in json.dumps(credential)
        pinged = {}

        def ping_answered():
            status, body, _ = session.request(
                "POST",
                f"/api/v1/nodes/{node['id']}/ping/",
                b"",
                {
                    "X-CSRFToken": session.csrf_token(),
                    "Referer": session.base_url + "/",
                    # A client's own claim: no trusted proxy here, so never believed.
                    "X-Forwarded-For": "203.0.113.99",
                },
            )
            pinged["answer"] = (status, body)
            return status == 200 and json.loads(body)["node_id"] == node["id"]

        processes.wait_for(ping_answered, timeout=60, what="a ping through the node's queue")
        pings = [
            event["source_address"]
            for event in session.json("/api/v1/audit-events/?limit=1000")["results"]
            # A ping is audited under the policy action it needs, on its node.
            if event["action"] == "inventory.view" and event["target_id"] == str(node["id"])
        ]
        assert pings and set(pings) == {"127.0.0.1"}
        assert [gpu["index"] for gpu in node["gpus"]] == [0, 1]
        status, page, _ = session.request("GET", "/nodes/")
        assert status == 200 and node["hostname"].encode() in page and b"simulated" in page

        pids = supervisor_pids(env)
        # Two Daphnes (HANGAR_WEB_PROCESSES defaults to 2) on the one port.
        assert set(pids) == {
            "redis", "web:web-0", "web:web-1", "worker", "beat", "agent", "gateway"
        }  # fmt: skip
        assert len({pids["web:web-0"], pids["web:web-1"]}) == 2
        # A Daphne that dies is restarted; the other one keeps answering meanwhile.
        os.kill(pids["web:web-0"], signal.SIGKILL)
        assert session.json("/healthz")["status"] == "ok"
        processes.wait_for(
            lambda: supervisor_pids(env).get("web:web-0") not in (None, pids["web:web-0"]),
            timeout=30,
            what="supervisord to restart the killed Daphne",
        )
        os.kill(pids["agent"], signal.SIGKILL)
        processes.wait_for(
            lambda: local_node("offline"),
            timeout=30,
            what="the node offline after its agent was killed",
        )
        subprocess.run(
            [
                str(processes.BIN / "supervisorctl"),
                "-c",
                str(processes.ROOT / "deploy/supervisord.conf"),
                "start",
                "agent",
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        processes.wait_for(
            lambda: local_node("online"),
            timeout=30,
            what="the node online again after the agent restarted",
        )
        pids = supervisor_pids(env)
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(40)
        finally:
            processes.stop(serve)
    deadline = time.monotonic() + 10
    alive = dict(pids)
    while alive and time.monotonic() < deadline:
        alive = {name: pid for name, pid in alive.items() if processes.group_alive(pid)}
        time.sleep(0.2)
    assert alive == {}, f"processes left behind after Ctrl-C: {alive}"


def test_make_run_refuses_an_ipv6_bind_with_a_one_line_reason(tmp_path):
    """supervisord's shared socket is IPv4 only: say so instead of a supervisord traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANGAR_")}
    env.update({"HANGAR_DATA_DIR": str(tmp_path / "data"), "HANGAR_BIND": "[::1]:8000"})
    result = subprocess.run(
        [str(processes.BIN / "python"), "manage.py", "serve"],
        cwd=processes.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "make run binds IPv4 addresses only" in result.stderr
    assert not (tmp_path / "data" / "supervisord.pid").exists()
