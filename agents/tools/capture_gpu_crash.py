"""Capture a real GPU out-of-memory crash and a real GPU holder on this host.

Needs PyTorch, nvidia-ml-py and at least one GPU. The output feeds the crash
forensics tests (tests/agents/fixtures/gpu_crash_*.json), so the classifier and
the GPU-release check are tested against what a real CUDA stack and driver
say, not against our guess of it:

1. a child allocates 8 GiB blocks on GPU 0 until CUDA refuses: its exit code
   and the tail of its stderr, and what `classify_exit` makes of them;
2. a second child holds 4 GiB on the last GPU (a process outside Hangar):
   the raw NVML compute-process records of every GPU, what `NvmlProcesses`
   parses, and what `blockers`/`describe` and a short `wait_for_release` say;
3. the holder is SIGKILLed and `wait_for_release` polls until NVML shows the
   GPU free: how long a killed process's memory takes to be released.

    python -m agents.tools.capture_gpu_crash --out gpu_crash.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time

from agents.workers.exits import classify_exit
from agents.workers.gpu_release import NvmlProcesses, blockers, describe, wait_for_release

HOLD_GIB = 4
OOM_CHILD = """
import torch
blocks = []
while True:
    blocks.append(torch.empty(8 * 2**30, dtype=torch.uint8, device="cuda:0"))
    print(f"allocated {8 * len(blocks)} GiB", flush=True)
"""
HOLD_CHILD = """
import sys, time, torch
held = torch.ones(int(sys.argv[1]) * 2**30, dtype=torch.uint8, device="cuda:0")
torch.cuda.synchronize()
print("holding", flush=True)
time.sleep(600)
"""


def gpu_count() -> int:
    import pynvml

    pynvml.nvmlInit()
    try:
        return pynvml.nvmlDeviceGetCount()
    finally:
        pynvml.nvmlShutdown()


def raw_processes(count: int) -> list[dict]:
    import pynvml

    pynvml.nvmlInit()
    try:
        found = []
        for index in range(count):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for info in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                found.append({"gpu": index, "pid": info.pid, "usedGpuMemory": info.usedGpuMemory})
        return found
    finally:
        pynvml.nvmlShutdown()


def run_out_of_memory() -> dict:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0"}
    began = time.monotonic()
    child = subprocess.run(
        [sys.executable, "-c", OOM_CHILD], env=env, capture_output=True, text=True, timeout=300
    )
    lines = (child.stdout + child.stderr).splitlines()
    cause, evidence = classify_exit(child.returncode, lines)
    return {
        "returncode": child.returncode,
        "seconds": round(time.monotonic() - began, 2),
        "log_tail": lines[-40:],
        "classified": [cause, evidence],
    }


def hold_and_release(count: int) -> dict:
    last = count - 1
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(last)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_CHILD, str(HOLD_GIB)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        if holder.stdout.readline().strip() != "holding":
            raise SystemExit("the holder did not start")
        raw = raw_processes(count)
        source = NvmlProcesses()
        try:
            parsed = source(range(count))
            blocking = blockers(parsed, [last], hangar_pids=())
            waited = wait_for_release(source, [last], lambda: (), timeout_s=1.0, poll_s=0.2)
            holder.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            holder.wait()
            exited = time.monotonic()
            after = wait_for_release(source, [last], lambda: (), timeout_s=30.0, poll_s=0.01)
            released = time.monotonic()
        finally:
            source.close()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    return {
        "holder_pid": holder.pid,
        "gpu": last,
        "hold_gib": HOLD_GIB,
        "raw_processes": raw,
        "parsed": [vars(p) for p in parsed],
        "blockers": [vars(p) for p in blocking],
        "describe": describe(blocking, old_pids=()),
        "short_wait_returned": [vars(p) for p in waited],
        "after_kill_blockers": [vars(p) for p in after],
        "seconds_kill_to_reaped": round(exited - killed, 4),
        "seconds_kill_to_released": round(released - killed, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="capture_gpu_crash", description=__doc__)
    parser.add_argument("--out", default="-", help="file to write, - for stdout")
    args = parser.parse_args(argv)
    count = gpu_count()
    result = {
        "captured_at": time.time(),
        "machine": {"node": platform.node(), "kernel": platform.release(), "python": sys.version},
        "gpus": count,
        "out_of_memory": run_out_of_memory(),
        "holder": hold_and_release(count),
    }
    text = json.dumps(result, indent=1, sort_keys=True)
    if args.out == "-":
        print(text)
    else:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
