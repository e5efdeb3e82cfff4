"""Capture raw NVML readings of every GPU on this host as JSON.

The output feeds the parser tests (tests/agents/fixtures/nvml_*.json): it holds
exactly what `NvmlReader` returned, error markers included, so parsing is
tested against what a real driver says rather than against our assumptions.

    python -m agents.tools.capture_nvml --sweeps 10 --interval 0.5 --out nvml.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from importlib.metadata import PackageNotFoundError, version

from agents.nvml import NvmlReader


def capture(sweeps: int, interval: float) -> dict:
    reader = NvmlReader()
    try:
        facts = reader.read_facts()
        samples = []
        for i in range(sweeps):
            if i:
                time.sleep(interval)
            samples.append(reader.read_sample())
    finally:
        reader.close()
    try:
        bindings = version("nvidia-ml-py")
    except PackageNotFoundError:
        bindings = None
    return {
        "captured_at": time.time(),
        "machine": {"node": platform.node(), "kernel": platform.release(), "python": sys.version},
        "nvidia_ml_py": bindings,
        "raw_facts": facts,
        "raw_samples": samples,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="capture_nvml", description=__doc__)
    parser.add_argument("--sweeps", type=int, default=10)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--out", default="-", help="file to write, - for stdout")
    args = parser.parse_args(argv)
    text = json.dumps(capture(args.sweeps, args.interval), indent=1, sort_keys=True)
    if args.out == "-":
        print(text)
    else:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
