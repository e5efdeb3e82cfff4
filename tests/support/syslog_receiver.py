"""A real syslog receiver for the tests: TCP (optionally TLS), RFC 6587 octet-counted
frames of RFC 5424 messages, kept in arrival order. Stopping it closes the port, as
a collector that is down would."""

from __future__ import annotations

import re
import socket
import socketserver
import ssl
import threading

RFC5424 = re.compile(
    rb"^<(?P<pri>\d{1,3})>1 (?P<time>\S+) (?P<host>\S+) (?P<app>\S+) (?P<proc>\S+) "
    rb"(?P<msgid>\S+) (?P<sd>\[.*?[^\\]\]|-) \xef\xbb\xbf(?P<msg>.*)$",
    re.S,
)


def read_frames(stream) -> list[bytes]:
    frames = []
    while True:
        length = b""
        while (ch := stream.read(1)) not in (b" ", b""):
            length += ch
        if not length:
            return frames
        frames.append(stream.read(int(length)))


class SyslogReceiver:
    def __init__(self, port: int = 0, tls: ssl.SSLContext | None = None):
        self.messages: list[dict] = []
        self.port = port
        self.tls = tls
        self.server = None

    def start(self) -> SyslogReceiver:
        receiver = self

        class Handler(socketserver.StreamRequestHandler):
            def setup(self):
                if receiver.tls is not None:
                    self.request = receiver.tls.wrap_socket(self.request, server_side=True)
                super().setup()

            def handle(self):
                for raw in read_frames(self.rfile):
                    match = RFC5424.match(raw)
                    assert match, raw[:200]
                    receiver.messages.append({k: v.decode() for k, v in match.groupdict().items()})

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.server = Server(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def refuses(port: int) -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) != 0
