"""Capture every GPU health field NVML gives on this host, for the test fixtures.

Needs only the NVIDIA driver and nvidia-ml-py (the `pynvml` module); no
Django, no Hangar console. From the repository root:

    python3 -m agents.tools.capture_health --out nvml_health_h200x2.json

For each GPU it records what agents/health.py reads: each field's value, or
the exact NVML error it raised (`{"nvml_error": 3, "message": "Not
Supported"}`), and how long each call took in microseconds (`timing_us`).
It also records whether the GPU accepts an Xid event set (the agent drains
Xids from one on every sweep), and the same raw facts as capture_nvml.py.
Reads are repeated (`--reads`) so the timings show the spread; a field learnt
unsupported is asked only once, as the agent does, so later reads time only
what is still asked. The output goes to tests/agents/fixtures/ as it is.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

from agents.health import NvmlHealthReader, parse_health
from agents.nvml import NvmlReader


def xid_event_support(reader: NvmlReader) -> list[dict]:
    """Per GPU: true when an Xid event set was registered, else NVML's error."""
    found = []
    for index, event_set in enumerate(reader._xid_sets):
        if isinstance(event_set, dict):
            found.append({"index": index, "supported": False, "error": event_set})
        else:
            found.append({"index": index, "supported": True, "error": None})
    return found


def capture(reads: int, pause_s: float) -> dict:
    import pynvml

    reader = NvmlReader()
    if reader.init_error is not None:
        raise SystemExit(f"NVML did not start: {reader.init_error['message']}")
    # A fresh reader with no learnt fields, so the first read asks everything.
    health = NvmlHealthReader(pynvml)
    raw_reads = []
    for _ in range(reads):
        t0 = time.perf_counter()
        records = [
            health.read_gpu(index, handle, reader._uuids[index], [])
            for index, handle in enumerate(reader._handles)
        ]
        raw_reads.append({"wall_us": round((time.perf_counter() - t0) * 1e6, 1), "gpus": records})
        time.sleep(pause_s)
    result = {
        "source": "captured on real hardware by agents/tools/capture_health.py",
        "captured_at": time.time(),
        "machine": {
            "node": platform.node(),
            "kernel": platform.release(),
            "python": sys.version,
        },
        "nvidia_ml_py": getattr(pynvml, "__version__", None),
        "raw_facts": reader.read_facts(),
        "xid_event_sets": xid_event_support(reader),
        "raw_health_reads": raw_reads,
        "parsed_first_read": parse_health(raw_reads[0]["gpus"]),
    }
    reader.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m agents.tools.capture_health")
    parser.add_argument("--out", required=True, help="where to write the JSON capture")
    parser.add_argument("--reads", type=int, default=5, help="health reads to take (default 5)")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between reads")
    args = parser.parse_args(argv)
    if args.reads < 1:
        parser.error("--reads must be at least 1")
    result = capture(args.reads, args.pause)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, sort_keys=True)
        f.write("\n")
    gpus = len(result["raw_facts"]["gpus"])
    print(f"wrote {args.out}: {gpus} GPU(s), {args.reads} health read(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
