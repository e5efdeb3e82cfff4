"""What one sweep costs the host: the agent's CPU time and memory per sweep.

    python -m agents.bench --sweeps 300              # real NVML
    python -m agents.bench --sweeps 300 --simulate 8 # simulated GPUs
    python -m agents.bench --sweeps 300 --smi        # + one nvidia-smi call per sweep

CPU time is process time (user + system, all threads) around `Collector.sweep`,
so it counts what the agent itself spends, not time waiting on the driver.
The measured sweeps carry no health read (the first sweep took it); the health
read is timed apart ("health_read") and its cost per sweep is that spread over
the sweeps of one health interval.
The nvidia-smi comparison is what a shell-script exporter would pay instead:
a fresh process per sweep, its CPU taken from the children's rusage.
Imports nothing from the network side, so it runs where only nvidia-ml-py
and psutil are installed.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import time
from typing import Any

import psutil

from agents import protocol
from agents.collect import Collector, open_source

SMI_QUERY = [
    "nvidia-smi",
    "--query-gpu=temperature.gpu,utilization.gpu,utilization.memory,memory.used,"
    "memory.total,power.draw,power.limit,clocks.sm",
    "--format=csv,noheader,nounits",
]


def _summary(values_s: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values_s)
    return {
        "mean_ms": round(statistics.fmean(ms), 4),
        "p50_ms": round(ms[len(ms) // 2], 4),
        "p95_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.95))], 4),
        "max_ms": round(ms[-1], 4),
    }


def bench_agent(sweeps: int, simulate: int) -> dict[str, Any]:
    process = psutil.Process()
    collector = Collector(open_source(simulate, seed=1))
    facts = collector.facts()
    for _ in range(3):  # warm-up: first calls load libraries and fill caches
        collector.sweep()
    cpu, wall, validate, encoded = [], [], [], []
    for _ in range(sweeps):
        c0, w0 = time.process_time(), time.perf_counter()
        sample = collector.sweep()
        c1, w1 = time.process_time(), time.perf_counter()
        cpu.append(c1 - c0)
        wall.append(w1 - w0)
        text = json.dumps(protocol.telemetry(sample))
        encoded.append(len(text))
        # What the console pays per message: parse + validate.
        v0 = time.perf_counter()
        protocol.validate_message(json.loads(text))
        validate.append(time.perf_counter() - v0)
    health = _bench_health(collector, max(10, sweeps // 10))
    collector.close()
    last_faults = sample["faults"]
    return {
        "gpus": len(facts["gpus"]),
        "gpu_names": sorted({g["name"] or "?" for g in facts["gpus"]}),
        "simulated": facts["simulated"],
        "sweeps": sweeps,
        "cpu_per_sweep": _summary(cpu),
        "wall_per_sweep": _summary(wall),
        "rss_mib": round(process.memory_info().rss / 2**20, 1),
        "message_bytes": round(statistics.fmean(encoded)),
        "console_parse_validate": _summary(validate),
        # Health reads run on their own schedule (every health_interval_s): their
        # cost is reported apart, and spread over the sweeps between two reads.
        "health_read": health,
        "last_sample_faults": last_faults,
    }


def _bench_health(collector: Collector, reads: int) -> dict[str, Any] | None:
    read = getattr(collector.source, "health", None)
    if read is None:
        return None  # the simulator reads no health
    read()  # the first read learns what the GPUs do not support
    cpu = []
    for _ in range(reads):
        c0 = time.process_time()
        read()
        cpu.append(time.process_time() - c0)
    summary = _summary(cpu)
    sweeps_per_read = collector.health_interval_s  # one sweep a second
    return {
        "reads": reads,
        "interval_s": collector.health_interval_s,
        "cpu_per_read": summary,
        "cpu_per_sweep_amortised_ms": round(summary["mean_ms"] / sweeps_per_read, 4),
    }


def bench_smi(sweeps: int) -> dict[str, Any]:
    cpu, wall = [], []
    for _ in range(sweeps):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        w0 = time.perf_counter()
        subprocess.run(SMI_QUERY, check=True, capture_output=True)
        wall.append(time.perf_counter() - w0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(
            (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        )
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    return {
        "sweeps": sweeps,
        "cpu_per_call": _summary(cpu),
        "wall_per_call": _summary(wall),
        "peak_rss_mib": round(peak / 1024, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agents.bench", description=__doc__)
    parser.add_argument("--sweeps", type=int, default=300)
    parser.add_argument("--simulate", type=int, default=0, metavar="N")
    parser.add_argument("--smi", action="store_true", help="also time nvidia-smi per sweep")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {
        "machine": {
            "node": platform.node(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": psutil.cpu_count(),
            "python": platform.python_version(),
        },
        "agent": bench_agent(args.sweeps, args.simulate),
    }
    if args.smi:
        result["nvidia_smi"] = bench_smi(args.sweeps)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
