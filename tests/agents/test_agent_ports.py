"""Workers whose deployment pins no port get one the agent picks: from its range, free
on the node (something else listening there is skipped), kept across restarts."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from agents import protocol
from agents.cli import build_parser
from agents.workers import ports
from tests.agents.worker_helpers import fake_spec, free_port, start, stop, wait_state


@pytest.fixture
def node(worker_node):
    return worker_node


@pytest.fixture
def port_range():
    """Three consecutive ports free right now."""
    while True:
        first = free_port()
        if first + 2 <= 65535 and all(
            ports.is_free(p, "127.0.0.1") for p in range(first, first + 3)
        ):
            return first, first + 2


def test_a_spec_without_a_port_runs_on_the_first_free_port_of_the_range(node, port_range):
    first, _last = port_range
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", first))  # something else of the node's holds the first one
    squatter.listen()
    try:
        sup = node.supervisor(worker_ports=port_range)
        answer = start(sup, fake_spec(node.model, port=0))
        assert answer["ok"], answer
        status = wait_state(sup, "ready")
        assert status["port"] == first + 1
        health = urllib.request.urlopen(f"http://127.0.0.1:{first + 1}/health", timeout=5)
        assert health.status == 200
    finally:
        squatter.close()


def test_two_workers_get_two_ports_and_a_restart_keeps_its_port(node, port_range):
    first, _last = port_range
    sup = node.supervisor(worker_ports=port_range)
    start(sup, fake_spec(node.model, port=0, worker_id=1))
    start(sup, fake_spec(node.model, port=0, worker_id=2))
    one, two = wait_state(sup, "ready", worker_id=1), wait_state(sup, "ready", worker_id=2)
    assert {one["port"], two["port"]} == {first, first + 1}

    stop(sup, worker_id=1)
    start(sup, fake_spec(node.model, port=0, worker_id=1))
    assert wait_state(sup, "ready", worker_id=1)["port"] == one["port"]
    # The console re-sending "any port" for a running worker is the same spec, not a clash.
    again = start(sup, fake_spec(node.model, port=0, worker_id=2))
    assert again["ok"] and again["detail"] == "already running"


def test_a_full_range_fails_the_start_with_a_reason(node, port_range):
    first, _last = port_range
    sup = node.supervisor(worker_ports=(first, first))
    start(sup, fake_spec(node.model, port=0, worker_id=1))
    wait_state(sup, "ready", worker_id=1)
    answer = start(sup, fake_spec(node.model, port=0, worker_id=2))
    assert not answer["ok"]
    assert f"no free port in {first}-{first}" in answer["detail"]


def test_the_protocol_takes_port_0_as_any_port_and_refuses_low_ports():
    spec = fake_spec({"version_id": 1, "path": "/srv/models/x", "files": []}, port=0)
    spec.update(engine="reference", command=None, health_path=None)
    assert protocol.validate_worker_spec(spec)["port"] == 0
    with pytest.raises(protocol.ProtocolError, match=r"spec\.port"):
        protocol.validate_worker_spec({**spec, "port": 80})


def test_the_range_flag_is_checked_with_a_one_line_reason(capsys):
    parsed = build_parser().parse_args(["run", "--worker-ports", "21000-21009"])
    assert parsed.worker_ports == (21000, 21009)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--worker-ports", "9000-80"])
    assert "ports go from 1024 to 65535" in capsys.readouterr().err
    assert ports.parse_range("20000-20999") == ports.DEFAULT_RANGE
    with pytest.raises(ValueError, match="not a port range"):
        ports.parse_range("20000")
