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


def test_under_tls_samples_count_as_arrived_only_once_everything_has(tmp_path):
    """TLS hides where a message ends in the TCP stream: nothing is given up early."""
    import asyncio
    import ssl
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))

    async def scenario():
        reading = asyncio.Event()
        received = 0

        async def handle(reader, writer):
            nonlocal received
            await reading.wait()  # reads nothing until told: its window closes
            while chunk := await reader.read(1 << 16):
                received += len(chunk)

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        _reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        tracker = Unacknowledged(writer.transport.get_extra_info("socket"), writer.transport)
        assert tracker.tls
        for n in range(400):
            writer.write(MESSAGE)
            tracker.sent([{"seq": n}])
        # More after them, until both kernels are full and the transport holds the rest.
        for _ in range(100_000):
            if writer.transport.get_write_buffer_size() > 1 << 20:
                break
            writer.write(MESSAGE * 64)
            await asyncio.sleep(0)
        await asyncio.sleep(0.3)
        tracker.settle()
        kept = len(tracker.unacknowledged())
        reading.set()
        await writer.drain()
        for _ in range(100):
            await asyncio.sleep(0.05)
            tracker.settle()
            if not tracker.unacknowledged():
                break
        left = len(tracker.unacknowledged())
        writer.close()
        server.close()
        return kept, left

    kept, left = asyncio.run(scenario())
    assert kept == 400  # nothing counted as arrived while the peer read nothing
    assert left == 0  # and everything once it had read it all
