"""Samples sent on a connection that the console's host has not acknowledged yet.

A connection that dies without a close (a cut link that TCP_USER_TIMEOUT ends, a
reset) takes the bytes its kernel still held unacknowledged with it: the agent
had "sent" those samples, the console never got them. The stream notes, after
each send, where the message ends in the TCP byte stream, and reads how far the
peer has acknowledged (Linux `TCP_INFO.tcpi_bytes_acked`); when a connection
ends without the console's close frame, the samples past that point go back to
the buffer, ahead of newer ones, for the next connection (docs/reliability.md,
"Node partitioned").

Nothing is acknowledged while a link is cut, so the reading taken at the last
sweep before the end is exact for a partition. Where the kernel says nothing
(not Linux, or the socket gone), nothing is tracked, and nothing is re-sent.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from collections import deque
from typing import Any

_TCP_INFO = getattr(socket, "TCP_INFO", None)
_BYTES_ACKED = 120  # offset of tcpi_bytes_acked (u64) in struct tcp_info, Linux >= 4.1
_INFO_SIZE = _BYTES_ACKED + 8


def bytes_acked(sock: socket.socket) -> int | None:
    """Bytes of this connection the peer has acknowledged; None if unknown."""
    if _TCP_INFO is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 256)
    except OSError:
        return None
    if len(info) < _INFO_SIZE:
        return None
    return struct.unpack_from("=Q", info, _BYTES_ACKED)[0]


def bytes_queued(sock: socket.socket) -> int | None:
    """Bytes in the kernel's send queue, sent or not, not yet acknowledged."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
    except (OSError, ValueError):
        return None


class Unacknowledged:
    """Per connection: (stream offset where a message ends, its samples), oldest first."""

    def __init__(self, sock: socket.socket | None, transport: Any = None) -> None:
        self.sock = sock
        self.transport = transport
        self.tls = transport is not None and transport.get_extra_info("ssl_object") is not None
        self.pending: deque[tuple[int, list[dict[str, Any]]]] = deque()

    @classmethod
    def of(cls, ws: Any) -> Unacknowledged:
        transport = getattr(ws, "transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        return cls(sock, transport)

    def _buffered(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def _end_of_stream(self) -> int | None:
        """How many bytes the agent has written: acknowledged + in the kernel's
        queue + still in the asyncio transport's buffer. The queue is read first:
        an acknowledgement between the two reads then makes the end later, never
        earlier, than it is (a sample kept too long, not one given up)."""
        if self.sock is None:
            return None
        if self.tls:
            return 0  # unplaceable (see settle): only the order of `pending` counts
        queued = bytes_queued(self.sock)
        acked = bytes_acked(self.sock)
        if acked is None or queued is None:
            return None
        return acked + queued + self._buffered()

    def sent(self, samples: list[dict[str, Any]]) -> None:
        """Right after the message carrying `samples` was handed to the connection."""
        end = self._end_of_stream()
        if end is not None:
            self.pending.append((end, samples))

    def settle(self) -> None:
        """Forget what the peer has acknowledged (each sweep, and when the
        connection ends, while its socket can still say)."""
        if not self.pending or self.sock is None:
            return
        if self.tls:
            # The kernel counts ciphertext, the transport's buffer plaintext: a
            # message's end cannot be placed in the TCP stream. Everything counts as
            # arrived once everything written has (queue and buffer empty): never
            # too early, at the cost of a few samples sent twice after a cut.
            if bytes_queued(self.sock) == 0 and self._buffered() == 0:
                self.pending.clear()
            return
        acked = bytes_acked(self.sock)
        if acked is None:
            return
        while self.pending and self.pending[0][0] <= acked:
            self.pending.popleft()

    def unacknowledged(self) -> list[dict[str, Any]]:
        """The samples not known to have arrived, oldest first."""
        return [sample for _end, samples in self.pending for sample in samples]
