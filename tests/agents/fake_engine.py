"""A stand-in inference engine for the supervisor's tests: a real process, a real port.

    python fake_engine.py --port P [--crash-after S --exit-code N] [--oom-after S]
        [--child-ignoring-term FILE] [--unhealthy-if FILE] [--spam N] [--metrics]

It prints its pid and CUDA_VISIBLE_DEVICES first, serves GET /health (503
while FILE of --unhealthy-if exists) and, with --metrics, a Prometheus
histogram that counts each GET /v1/ping.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BUCKETS = (0.01, 0.05, 0.1, 0.5, float("inf"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--crash-after", type=float)
    parser.add_argument("--exit-code", type=int, default=1)
    parser.add_argument("--oom-after", type=float)
    parser.add_argument("--child-ignoring-term")
    parser.add_argument("--unhealthy-if")
    parser.add_argument("--spam", type=int, default=0)
    parser.add_argument("--metrics", action="store_true")
    args = parser.parse_args()

    print(f"fake engine pid {os.getpid()}", flush=True)
    print(f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}", flush=True)
    for i in range(args.spam):
        print(f"spam line {i} " + "x" * 100)
    sys.stdout.flush()

    if args.child_ignoring_term:
        code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
        child = subprocess.Popen([sys.executable, "-c", code])
        with open(args.child_ignoring_term, "w") as f:
            f.write(str(child.pid))

    counts = {"requests": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/health":
                sick = args.unhealthy_if and os.path.exists(args.unhealthy_if)
                self._answer(503 if sick else 200, b"sick" if sick else b"ok")
            elif self.path == "/v1/ping":
                counts["requests"] += 1
                self._answer(200, b"pong")
            elif self.path == "/metrics" and args.metrics:
                n = counts["requests"]
                lines = ["# TYPE fake_latency_seconds histogram"]
                for le in BUCKETS:
                    label = "+Inf" if le == float("inf") else str(le)
                    lines.append(
                        f'fake_latency_seconds_bucket{{le="{label}"}} {n if le >= 0.05 else 0}'
                    )
                lines += [f"fake_latency_seconds_count {n}", f"fake_latency_seconds_sum {n * 0.03}"]
                self._answer(200, ("\n".join(lines) + "\n").encode())
            else:
                self._answer(404, b"not found")

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))

    def crash(after: float, message: str | None, code: int) -> None:
        time.sleep(after)
        if message:
            print(message, flush=True)
        os._exit(code)

    if args.oom_after is not None:
        message = (
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. "
            "GPU 0 has a total capacity of 79.11 GiB"
        )
        threading.Thread(target=crash, args=(args.oom_after, message, 1), daemon=True).start()
    elif args.crash_after is not None:
        threading.Thread(
            target=crash,
            args=(args.crash_after, "crashing on purpose", args.exit_code),
            daemon=True,
        ).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
