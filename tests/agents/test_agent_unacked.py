"""Which sent samples the console's host has acknowledged (agents/unacked.py), on a
real TCP connection of this machine's kernel. The whole path (a cut link, the
samples sent again, none lost, none twice) is the chaos suite's partition case."""

from __future__ import annotations

import socket
import time

import pytest

from agents.unacked import Unacknowledged, bytes_acked

MESSAGE = b"m" * 1000


@pytest.fixture
def connection():
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    yield client, peer
    for s in (client, peer, server):
        s.close()


def send_until_full(client, tracker) -> int:
    """Send numbered 1000-byte messages until the kernel takes no more; returns how many."""
    client.setblocking(False)
    n = 0
    while True:
        try:
            if client.send(MESSAGE) != len(MESSAGE):
                return n  # a partial message is not recorded (the stream never splits one)
        except BlockingIOError:
            return n
        tracker.sent([{"seq": n}])
        n += 1


def test_samples_past_what_the_peer_acknowledged_are_the_unacknowledged_ones(connection):
    client, peer = connection
    tracker = Unacknowledged(client)
    sent = send_until_full(client, tracker)  # the peer reads nothing: its window closes
    time.sleep(0.2)
    tracker.settle()
    waiting = [s["seq"] for s in tracker.unacknowledged()]
    acked_messages = (bytes_acked(client) - 1) // len(MESSAGE)  # the SYN counts one
    assert waiting, "a peer that reads nothing must leave samples unacknowledged"
    assert waiting == list(range(acked_messages, sent))  # the newest, in order, none missing

    received = 0
    peer.setblocking(False)
    deadline = time.monotonic() + 10
    while received < sent * len(MESSAGE) and time.monotonic() < deadline:
        try:
            received += len(peer.recv(1 << 20))
        except BlockingIOError:
            time.sleep(0.01)
    time.sleep(0.2)
    tracker.settle()
    assert received >= sent * len(MESSAGE) and tracker.unacknowledged() == []


def test_without_a_socket_nothing_is_tracked_and_nothing_sent_again():
    tracker = Unacknowledged(None)
    tracker.sent([{"seq": 1}])
    tracker.settle()
    assert tracker.unacknowledged() == []
