"""Fair-share benchmark: a flooding and a quiet project on one saturated deployment.

    make bench-fairshare    # about 1.5 min; rewrites "Fair share" in docs/benchmarks.md
    python -m tests.bench.fairshare --seconds 20 --no-docs

Real parts: a fresh PostgreSQL database (`hangar_bench_fairshare`), Redis
database 9 (flushed), one real reference engine with `--token-delay` (each
answer takes about `--max-tokens` * delay), behind a route, and one real
`hangar-gateway`. Two projects: "flood" (weight 100) runs `--flood` closed-loop
clients from the start; "quiet" (weight 200) runs `--quiet` clients from
second 2. Run twice in one go, the alternative first:

- without the queue: `HANGAR_GATEWAY_WORKER_CONCURRENCY` so large that every
  request goes straight on to the engine (first come, first served, which is
  what a gateway without fair share does);
- with fair share: the deployment takes `--ceiling` requests at a time and the
  rest wait in the gateway's weighted fair queue.

Each run records every completion's time and project; the quiet project's
share of completions per 2-s bin is plotted (docs/benchmarks/fairshare.svg)
against its weight's share (2/3).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support import processes

ROOT = Path(__file__).resolve().parents[2]
SECTION = "Fair share"
PLOT = ROOT / "docs" / "benchmarks" / "fairshare.svg"
BIN_S = 2.0


def post(url: str, key: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def load(url: str, keys: dict[str, str], args) -> list[tuple[float, str, int]]:
    """Run the clients; every answer as (seconds since start, project, status)."""
    log: list[tuple[float, str, int]] = []
    started = time.monotonic()
    until = started + args.seconds

    def client(project: str, delay: float) -> None:
        time.sleep(delay)
        body = {
            "model": "chat",
            "messages": [{"role": "user", "content": f"a question from {project}"}],
            "max_tokens": args.max_tokens,
        }
        while time.monotonic() < until:
            status, _answer = post(url, keys[project], body)
            log.append((time.monotonic() - started, project, status))

    threads = [threading.Thread(target=client, args=("flood", 0.0)) for _ in range(args.flood)]
    threads += [threading.Thread(target=client, args=("quiet", 2.0)) for _ in range(args.quiet)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return log


def shares(log, seconds: float) -> list[tuple[float, float | None, int]]:
    """(bin middle, quiet share of completions, completions) per BIN_S bin."""
    out = []
    start = 0.0
    while start + BIN_S <= seconds + 1e-9:
        done = [e for e in log if start <= e[0] < start + BIN_S and e[2] == 200]
        quiet = sum(1 for e in done if e[1] == "quiet")
        out.append((start + BIN_S / 2, quiet / len(done) if done else None, len(done)))
        start += BIN_S
    return out


def svg(series: dict[str, list], expected: float, seconds: float) -> str:
    """A small line chart of the quiet project's share over time, one line per run."""
    width, height, left, bottom, top = 640, 300, 48, 36, 16
    plot_w, plot_h = width - left - 16, height - bottom - top

    def x(t: float) -> float:
        return left + plot_w * t / seconds

    def y(v: float) -> float:
        return top + plot_h * (1 - v)

    colours = {"fair share": "#1f77b4", "no queue (first come, first served)": "#d62728"}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" '
            f'stroke="#ddd"/><text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">'
            f"{tick:.0%}</text>"
        )
    for t in range(0, int(seconds) + 1, 5):
        parts.append(
            f'<text x="{x(t):.1f}" y="{height - bottom + 16}" text-anchor="middle">{t} s</text>'
        )
    parts.append(
        f'<line x1="{left}" x2="{left + plot_w}" y1="{y(expected):.1f}" y2="{y(expected):.1f}" '
        f'stroke="#2ca02c" stroke-dasharray="5,4"/>'
        f'<text x="{left + plot_w - 4}" y="{y(expected) - 5:.1f}" text-anchor="end" '
        f'fill="#2ca02c">weight share {expected:.0%}</text>'
    )
    for row, (name, points) in enumerate(series.items()):
        coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v, _n in points if v is not None)
        colour = colours.get(name, "#555")
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>'
        )
        parts.append(
            f'<text x="{left + 8}" y="{top + 14 + 14 * row}" fill="{colour}">{name}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2}" y="{height - 4}" text-anchor="middle">quiet project\'s '
        "share of completed requests, per 2 s</text></svg>"
    )
    return "\n".join(parts) + "\n"


def run_once(args, env: dict, workdir: Path, engine_port: int, secret: str, ceiling: int):
    from apps.gateway import snapshot

    port, admin = processes.free_port(), processes.free_port()
    proc = processes.start(
        [str(processes.BIN / "hangar-gateway")],
        {
            **env,
            "HANGAR_GATEWAY_BIND": f"127.0.0.1:{port}",
            "HANGAR_GATEWAY_ADMIN_BIND": f"127.0.0.1:{admin}",
            "HANGAR_GATEWAY_WORKER_CONCURRENCY": str(ceiling),
            "HANGAR_GATEWAY_QUEUE_TIMEOUT": "120",
        },
        workdir / f"gateway-{ceiling}.log",
    )
    try:
        generation = snapshot.publish()

        def serving() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=2) as r:
                    return (json.loads(r.read()).get("snapshot_generation") or 0) >= generation
            except (OSError, ValueError):
                return False

        processes.wait_for(serving, what="the gateway", process=proc)
        return load(f"http://127.0.0.1:{port}/v1/chat/completions", args.keys, args)
    finally:
        processes.stop(proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.fairshare")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--flood", type=int, default=16, help="flooding clients")
    parser.add_argument("--quiet", type=int, default=4, help="quiet clients")
    parser.add_argument("--ceiling", type=int, default=2, help="requests at a time per worker")
    parser.add_argument("--token-delay", type=float, default=0.02)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--database", default="hangar_bench_fairshare")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    args = parser.parse_args(argv)
    from tests.bench.telemetry import machine, prepare_environment, write_docs

    workdir = Path(tempfile.mkdtemp(prefix="hangar-bench-fairshare-"))
    env = prepare_environment(args, workdir)
    import redis

    redis.Redis.from_url(args.redis_url).flushdb()
    secret = secrets.token_urlsafe(24)
    engine_port = processes.free_port()
    model = workdir / "model"
    model.mkdir()
    (model / "README.md").write_text("stand-in\n")
    engine_env = {**env, "HANGAR_ENGINE_API_KEY": secret}
    engine = processes.start(
        [sys.executable, "-m", "agents.reference_engine", "--model", str(model),
         "--port", str(engine_port), "--token-delay", str(args.token_delay)],
        engine_env, workdir / "engine.log",
    )  # fmt: skip
    started = time.time()
    try:
        processes.wait_for(
            lambda: _ok(f"http://127.0.0.1:{engine_port}/health"), what="engine", process=engine
        )
        args.keys = make_world(engine_port, secret)
        runs = {}
        for name, ceiling in (
            ("no queue (first come, first served)", 100_000),
            ("fair share", args.ceiling),
        ):
            print(f"running: {name} ...", flush=True)
            runs[name] = run_once(args, env, workdir, engine_port, secret, ceiling)
    finally:
        processes.stop(engine)
        redis.Redis.from_url(args.redis_url).flushdb()
    expected = 200 / 300
    series = {name: shares(log, args.seconds) for name, log in runs.items()}
    lines = []
    for name, log in runs.items():
        window = [e for e in log if 4 <= e[0] <= args.seconds - 1 and e[2] == 200]
        quiet = sum(1 for e in window if e[1] == "quiet")
        failed = sum(1 for e in log if e[2] != 200)
        share = quiet / len(window) if window else 0.0
        lines.append(
            f"| {name} | {len(window)} | {share:.3f} | {share / expected:.2f} | {failed} |"
        )
        print(lines[-1], flush=True)
    took = time.time() - started
    if args.no_docs:
        return 0
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    PLOT.write_text(svg(series, expected, args.seconds))
    command = "make bench-fairshare" if argv is None else "python -m tests.bench.fairshare"
    text = "\n".join(
        [
            f"## {SECTION}",
            "",
            "A flooding project (weight 100, "
            f"{args.flood} closed-loop clients from 0 s) and a quiet one (weight 200, "
            f"{args.quiet} clients from 2 s) on one deployment of a real reference engine "
            f"({args.token_delay:g} s per token, {args.max_tokens} tokens an answer), through "
            "one real `hangar-gateway`. The alternative first: no queue at the gateway (every "
            f"request straight to the engine); then fair share with {args.ceiling} requests at "
            "a time. Method: `tests/bench/fairshare.py`.",
            "",
            "The reference engine only sleeps per token, so it has no capacity of its own:"
            " without the queue it serves every client at once and completes many more"
            " requests, with each project's share set by its number of clients. With a real"
            " engine the ceiling stands for its batch capacity, and the same requests would"
            " queue inside the engine first come, first served; here the ceiling makes the"
            " deployment saturated so that the order can be seen.",
            "",
            f"Machine: {machine()}.  ",
            f"Command: `{command}` ({args.seconds:g} s per run; the whole run took "
            f"{took / 60:.1f} min).  ",
            f"Date: {time.strftime('%Y-%m-%d')}.",
            "",
            "| run | completions (4 s to end) | quiet share | share / weight share | "
            "not completed |",
            "|---|---:|---:|---:|---:|",
            *lines,
            "",
            "![the quiet project's share of completions over time](benchmarks/fairshare.svg)",
            "",
        ]
    )
    write_docs(text, section=SECTION)
    print(f"wrote {PLOT.relative_to(ROOT)} and the section {SECTION!r} of docs/benchmarks.md")
    return 0


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def make_world(engine_port: int, secret: str) -> dict[str, str]:
    from django.contrib.auth import get_user_model

    from apps.deployments.models import Deployment, Worker, WorkerState
    from apps.gateway.keys import create_consumer_key
    from apps.gateway.models import Project, Route, RouteTarget
    from apps.inventory.models import Cluster, Node, NodeState
    from apps.registry.models import Model, ModelVersion, VersionState

    cluster = Cluster.objects.create(name="bench")
    node = Node.objects.create(
        cluster=cluster, hostname="bench-gpu", state=NodeState.ONLINE, worker_host="127.0.0.1"
    )
    version = ModelVersion.objects.create(
        model=Model.objects.create(name="bench"),
        label="v1",
        path="/srv/models/bench/v1",
        format="safetensors",
        state=VersionState.READY,
        files=[{"path": "w.bin", "sha256": "a" * 64, "size": 1}],
    )
    deployment = Deployment.objects.create(
        name="chat", cluster=cluster, model_version=version, engine="reference", port=9000
    )
    Worker.objects.create(
        deployment=deployment, node=node, model_version=version, slot=0, port=engine_port,
        state=WorkerState.READY, engine_secret=secret,
    )  # fmt: skip
    route = Route.objects.create(name="chat")
    RouteTarget.objects.create(route=route, deployment=deployment)
    person = get_user_model().objects.create_user("bench", password=secrets.token_hex(16))
    keys = {}
    for name, weight in (("flood", 100), ("quiet", 200)):
        project = Project.objects.create(name=name, weight=weight)
        keys[name] = create_consumer_key(
            name=name, days=1, user=person, all_routes=True, project=project
        )[1]
    return keys


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
