"""Helpers for driving the agent websocket by hand and as a real agent process."""

from __future__ import annotations

import json
import time

import pytest
from websockets.sync.client import connect

from apps.inventory.services import create_enrollment_token, enroll_node


def gpu_sample(index: int, **overrides) -> dict:
    gpu = {
        "index": index,
        "uuid": f"GPU-test-{index}",
        "temperature": 40 + index,
        "utilization_gpu": 50,
        "utilization_memory": 20,
        "memory_used": 1_000_000_000,
        "memory_total": 80_000_000_000,
        "power_draw": 200.0,
        "power_limit": 700.0,
        "sm_clock": 1500,
        "fan": None,
        "throttle_reasons": [],
        "ecc_errors": 0,
        "xid_errors": 0,
        "fault": None,
    }
    gpu.update(overrides)
    return gpu


def sample(seq: int, gpus: list[dict] | None = None, faults=None, ts: float | None = None) -> dict:
    return {
        "seq": seq,
        "ts": ts or time.time(),
        "simulated": True,
        "gpus": gpus if gpus is not None else [gpu_sample(0), gpu_sample(1)],
        "host": {
            "cpu_percent": 10.0,
            "memory_used": 10**9,
            "memory_total": 8 * 10**9,
            "disk_used": 10**10,
            "disk_total": 10**11,
        },
        "faults": faults or [],
    }


FACTS = {
    "hostname": "gpu-test",
    "os": "Debian GNU/Linux 12",
    "kernel": "6.1.0",
    "driver_version": None,
    "cuda_version": None,
    "cpu_count": 4,
    "memory_total": 8_000_000_000,
    "addresses": ["127.0.0.1"],
    "simulated": True,
    "gpus": [
        {
            "index": i,
            "uuid": f"GPU-test-{i}",
            "name": "Simulated H100",
            "memory_total": 80_000_000_000,
            "pci_bus_id": f"0000:0{i}:00.0",
            "power_limit": 700.0,
            "mig_mode": False,
        }
        for i in range(2)
    ],
}


class AgentSocket:
    """A hand-driven agent connection (for exact, crafted messages)."""

    def __init__(self, url: str, credential: str):
        self.ws = connect(
            url.replace("http", "ws") + "/ws/agent/",
            additional_headers={"Authorization": f"Bearer {credential}"},
            open_timeout=10,
        )
        self.welcome = json.loads(self.ws.recv(timeout=10))

    def send(self, message: dict) -> None:
        self.ws.send(json.dumps(message))

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def enrolled(cluster):
    """(node, credential) for a node enrolled into `cluster`."""
    _token, secret = create_enrollment_token(cluster, None)
    return enroll_node(secret, "gpu-test", FACTS, None)


def browser_socket(url: str, session_cookie: str | None, origin: str | None = None):
    headers = {}
    if session_cookie:
        headers["Cookie"] = f"sessionid={session_cookie}"
    return connect(
        url.replace("http", "ws") + "/ws/telemetry/",
        additional_headers=headers,
        origin=origin or url,
        open_timeout=10,
    )


def session_for(user) -> str:
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    store = SessionStore()
    store[SESSION_KEY] = str(user.pk)
    store[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[-1]
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.save()
    return store.session_key


def receive_until(ws, predicate, timeout: float = 15.0):
    """Messages until one satisfies predicate; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("no matching message arrived")
        message = json.loads(ws.recv(timeout=left))
        if predicate(message):
            return message
