"""Alert evaluation benchmark: the cost rules add per sample, and crossing -> webhook delay.

    python -m tests.bench.alerts                  # per-sample cost, in process (no services)
    python -m tests.bench.alerts --e2e            # also: Daphne + Celery + webhook delay

Per-sample cost (what AgentConsumer.take_samples adds per sample): for each rule
count (default 20 and 50), 1,000 simulated nodes with 8 GPUs each send samples
whose values wander below every threshold (the steady state: no transitions,
so no database), then a run where a tenth of the GPUs sit above the temperature
threshold (series held in the firing state). Measured: `alert_series(sample)`
(flatten plus derived names) and `NodeEvaluator.observe(...)` together, on one
core, per sample; the first pass over every node (match tables being built) is
a warm-up and not counted. Times are the thread's CPU time
(`time.thread_time_ns`), so other processes on the machine do not inflate them.

End to end (`--e2e`): a fresh PostgreSQL database `alerts_bench`, Redis
database 7 (flushed), one Daphne, one Celery worker (queue console, 2 threads),
a webhook receiver in this process. One agent websocket crosses a `for 0` rule
back and forth; for each crossing the delay is webhook arrival - the moment
the crossing sample was sent (one clock: one machine).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time

from tests.bench.swarm import percentiles

NODES = 1000
GPUS = 8
DEFAULT_RULE_COUNTS = (20, 50)


# --- per-sample cost ----------------------------------------------------------------


def make_rules(count: int, node_ids: list[int]):
    """The shipped rules plus variations, as an installation accumulates them:
    per-cluster and per-node overrides of the same metrics, host rules."""
    from apps.alerts.defaults import DEFAULT_RULES
    from apps.alerts.evaluation import CompiledRule, RuleSet

    metrics = [
        ("gpu.*.temperature", ">", 80.0),
        ("gpu.*.memory_used_percent", ">", 95.0),
        ("gpu.*.power_draw", ">", 690.0),
        ("gpu.*.utilization_gpu", "<", 1.0),
        ("host.cpu_percent", ">", 95.0),
        ("host.disk_used_percent", ">", 90.0),
        ("gpu.*.sm_clock", "<", 100.0),
    ]
    rules = []
    for i, fields in enumerate(DEFAULT_RULES[:count]):
        rules.append(
            CompiledRule.build(
                id=i + 1,
                name=fields["name"],
                metric=fields["metric"],
                comparison=fields["comparison"],
                threshold=fields["threshold"],
                clear_threshold=fields.get("clear_threshold"),
                for_seconds=fields["for_seconds"],
                severity=fields["severity"],
            )
        )
    rng = random.Random(7)
    while len(rules) < count:
        i = len(rules)
        metric, comparison, threshold = metrics[i % len(metrics)]
        scope = i % 3  # everywhere, one of 10 clusters, one node
        rules.append(
            CompiledRule.build(
                id=i + 1,
                name=f"rule {i}",
                metric=metric,
                comparison=comparison,
                threshold=threshold,
                for_seconds=60,
                severity="warning",
                cluster_id=rng.randrange(10) if scope == 1 else None,
                node_id=rng.choice(node_ids) if scope == 2 else None,
            )
        )
    return RuleSet(tuple(rules), 1)


def make_sample(rng: random.Random, seq: int, hot: bool) -> dict:
    from tests.telemetry.conftest import gpu_sample, sample

    gpus = [
        gpu_sample(
            i,
            temperature=rng.uniform(88, 95) if hot and i == 0 else rng.uniform(35, 75),
            utilization_gpu=rng.uniform(20, 100),
            memory_used=rng.randrange(10**9, 60 * 10**9),
            power_draw=rng.uniform(100, 600),
        )
        for i in range(GPUS)
    ]
    return sample(seq, gpus, ts=1_800_000_000.0 + seq)


def measure_cost(rule_count: int, hot_fraction: float, rounds: int) -> dict:
    from apps.alerts.evaluation import NodeEvaluator
    from apps.alerts.series import alert_series

    rng = random.Random(rule_count)
    node_ids = list(range(1, NODES + 1))
    ruleset = make_rules(rule_count, node_ids)
    evaluators = [NodeEvaluator(n, n % 10) for n in node_ids]
    # Pre-built samples: the benchmark measures evaluation, not sample construction.
    hot_nodes = set(rng.sample(node_ids, int(NODES * hot_fraction)))
    samples = {
        n: [make_sample(rng, seq, n in hot_nodes) for seq in range(1, rounds + 2)] for n in node_ids
    }
    for evaluator in evaluators:  # warm-up: match tables, first transitions
        s = samples[evaluator.node_id][0]
        evaluator.observe(alert_series(s), s["ts"], ruleset)
    timings, flatten_only, transitions = [], [], 0
    # CPU time of this thread: the cost itself, not time lost to other processes.
    clock = time.thread_time_ns
    for r in range(1, rounds + 1):
        for evaluator in evaluators:
            s = samples[evaluator.node_id][r]
            t0 = clock()
            values = alert_series(s)
            t1 = clock()
            transitions += len(evaluator.observe(values, s["ts"], ruleset))
            t2 = clock()
            flatten_only.append((t1 - t0) / 1000)
            timings.append((t2 - t0) / 1000)
    spread = percentiles(timings)
    p50, p99, top = spread["p50"], spread["p99"], spread["max"]
    mean = statistics.fmean(timings)
    return {
        "rules": rule_count,
        "hot": hot_fraction,
        "series": len(alert_series(samples[1][0])),
        "samples": len(timings),
        "mean_us": mean,
        "p50_us": p50,
        "p99_us": p99,
        "max_us": top,
        "series_us": statistics.fmean(flatten_only),
        "transitions": transitions,
        "core_percent_1000_nodes_1hz": mean * NODES / 1e6 * 100,
    }


# --- end to end ----------------------------------------------------------------------


def measure_delay(args, env: dict, workdir, crossings: int) -> dict:
    import json
    import secrets
    import threading
    import urllib.request
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import redis

    from tests.bench.telemetry import create_fixtures
    from tests.support import processes

    redis.Redis.from_url(args.redis_url).flushdb()
    from apps.alerts.models import AlertRule, Receiver
    from tests.telemetry.conftest import FACTS, AgentSocket, gpu_sample, sample

    arrivals: dict[tuple[int, str], float] = {}
    done = threading.Condition()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with done:
                arrivals[(body["alert"]["id"], body["event"])] = time.time()
                done.notify_all()
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    fixtures = create_fixtures(1)
    AlertRule.objects.all().delete()
    hook = Receiver.objects.create(
        name="bench",
        kind="webhook",
        url=f"http://127.0.0.1:{server.server_address[1]}/",
        secret=secrets.token_hex(16),
    )
    rule = AlertRule.objects.create(
        name="bench hot", metric="gpu.*.temperature", comparison=">", threshold=85.0
    )
    rule.receivers.set([hook])
    port = processes.free_port()
    daphne = processes.start(
        [str(processes.BIN / "daphne"), "-p", str(port), "console.asgi:application"],
        env,
        workdir / "daphne.log",
    )
    worker = processes.start(
        [
            str(processes.BIN / "celery"),
            "-A",
            "console.celery",
            "worker",
            "-Q",
            "console",
            "--pool",
            "threads",
            "-c",
            "2",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "warning",
        ],
        env,
        workdir / "celery.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        processes.wait_for(
            lambda: urllib.request.urlopen(f"{url}/healthz", timeout=2).status == 200,
            what="daphne",
            process=daphne,
        )
        agent = AgentSocket(url, fixtures.nodes[0][1])
        agent.send({"type": "hello", "protocol": 1, "agent_version": "1", "facts": FACTS})
        delays: dict[str, list[float]] = {"firing": [], "resolved": []}
        seq, ts = 0, float(int(time.time()))
        for i in range(crossings * 2):
            event = "firing" if i % 2 == 0 else "resolved"
            seq, ts = seq + 1, ts + 1
            temperature = 95 if event == "firing" else 60
            sent = time.time()
            agent.send(
                {
                    "type": "telemetry",
                    "sample": sample(seq, [gpu_sample(0, temperature=temperature)], ts=ts),
                }
            )
            with done:
                ok = done.wait_for(
                    lambda e=event, s=sent: any(k[1] == e and v >= s for k, v in arrivals.items()),
                    timeout=30,
                )
            if not ok:
                raise SystemExit(f"no {event} webhook within 30 s; logs in {workdir}")
            arrived = max(v for k, v in arrivals.items() if k[1] == event)
            delays[event].append((arrived - sent) * 1000)
            time.sleep(0.2)
        agent.close()
    finally:
        processes.stop(worker)
        processes.stop(daphne)
        server.shutdown()
    result = {}
    for event, values in delays.items():
        spread = percentiles(values)
        result[event] = {
            "n": len(values),
            "p50_ms": spread["p50"],
            "p99_ms": spread["p99"],
            "max_ms": spread["max"],
        }
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rules", default=",".join(map(str, DEFAULT_RULE_COUNTS)))
    parser.add_argument("--rounds", type=int, default=20, help="samples per node measured")
    parser.add_argument("--e2e", action="store_true", help="also measure crossing -> webhook")
    parser.add_argument("--crossings", type=int, default=20)
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/7", help="flushed")
    args = parser.parse_args(argv)
    env = workdir = None
    if args.e2e:  # before Django starts: it points Django at the bench database
        import tempfile
        from pathlib import Path

        from tests.bench.telemetry import prepare_environment

        workdir = Path(tempfile.mkdtemp(prefix="hangar-alerts-bench-"))
        args.database = "alerts_bench"
        env = prepare_environment(args, workdir)
    else:
        import django

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
        django.setup()
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    )
    print(
        "| rules | GPUs above threshold | series / sample | CPU µs / sample mean (p50, p99) "
        "| of which series | transitions | one core at 1,000 nodes x 1 Hz |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for count in (int(c) for c in args.rules.split(",")):
        for hot in (0.0, 0.1):
            r = measure_cost(count, hot, args.rounds)
            print(
                f"| {r['rules']} | {hot:.0%} of nodes, GPU 0 | {r['series']} | "
                f"{r['mean_us']:.1f} ({r['p50_us']:.1f}, {r['p99_us']:.1f}) | "
                f"{r['series_us']:.1f} | {r['transitions']} | "
                f"{r['core_percent_1000_nodes_1hz']:.1f} % |"
            )
    if args.e2e:
        delays = measure_delay(args, env, workdir, args.crossings)
        print("\n| transition | n | webhook delay ms p50 | p99 | max |")
        print("| --- | --- | --- | --- | --- |")
        for event, d in delays.items():
            print(
                f"| {event} | {d['n']} | {d['p50_ms']:.1f} | {d['p99_ms']:.1f} | "
                f"{d['max_ms']:.1f} |"
            )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
