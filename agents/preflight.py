"""Node preflight: checks the agent runs when the console asks (docs/health.md).

Each check answers pass / warn / fail / skip with the measured value and what
to do. Every outside program runs as a fixed argument vector with a timeout,
never a shell string; nothing here takes a command from the console, only
numbers and the model roots the console already knows.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
STATUSES = (PASS, WARN, FAIL, SKIP)
CLOCK_OFFSET_WARN_S = 100e-6  # the seed guides: NTP offset under 100 µs
COMMAND_TIMEOUT_S = 5.0
READ_SAMPLE_BYTES = 256 * 2**20  # at most this much of a model root is read
READ_SAMPLE_SECONDS = 10.0
READ_CHUNK = 4 * 2**20
MIN_READ_MB_S = 200.0  # below this, loading a 70B model's weights takes minutes
MIN_FREE_BYTES = 50 * 2**30

CHRONYC_TRACKING = ["chronyc", "tracking"]
TIMEDATECTL_SHOW = ["timedatectl", "show", "--property=NTPSynchronized", "--value"]

Runner = Callable[[list[str], float], tuple[int, str]]


def run_command(argv: list[str], timeout: float) -> tuple[int, str]:
    """(exit status, stdout) of a fixed argument vector; 127 if it is not installed."""
    if shutil.which(argv[0]) is None:
        return 127, ""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return 124, ""
    except OSError as exc:
        return 126, str(exc)
    return done.returncode, done.stdout


def result(check: str, status: str, value: Any, advice: str = "", subject: str = "") -> dict:
    return {
        "check": check,
        "subject": subject,
        "status": status,
        "value": value,
        "advice": advice,
    }


# --- clock ---------------------------------------------------------------------------

_SYSTEM_TIME = re.compile(r"^System time\s*:\s*([0-9.]+) seconds (fast|slow)", re.MULTILINE)
_LEAP_STATUS = re.compile(r"^Leap status\s*:\s*(.+?)\s*$", re.MULTILINE)


def parse_chronyc_tracking(text: str) -> tuple[float | None, bool]:
    """(offset of the system clock from NTP time in seconds, synchronised?) from
    `chronyc tracking` ("System time" and "Leap status" lines, chronyc(1))."""
    match = _SYSTEM_TIME.search(text)
    offset = None
    if match is not None:
        offset = float(match.group(1)) * (1 if match.group(2) == "fast" else -1)
    leap = _LEAP_STATUS.search(text)
    return offset, leap is not None and leap.group(1) != "Not synchronised"


def check_clock(run: Runner = run_command) -> dict:
    status, out = run(CHRONYC_TRACKING, COMMAND_TIMEOUT_S)
    if status == 0:
        offset, synchronised = parse_chronyc_tracking(out)
        if offset is None:
            return result("clock", WARN, None, "chronyc tracking printed no System time line")
        value = f"{offset * 1e6:+.1f} µs (chronyc)"
        if not synchronised:
            # chronyd with no reachable source reports offset 0: it proves nothing.
            return result("clock", WARN, value, "chronyd is not synchronised: check its sources")
        if abs(offset) > CLOCK_OFFSET_WARN_S:
            return result("clock", WARN, value, "offset above 100 µs: check the NTP sources")
        return result("clock", PASS, value)
    status, out = run(TIMEDATECTL_SHOW, COMMAND_TIMEOUT_S)
    if status == 0 and out.strip() in ("yes", "no"):
        if out.strip() == "yes":
            # timedatectl knows "synchronised", not the offset: good, not proven.
            return result(
                "clock", WARN, "NTP synchronised (timedatectl)", "install chrony to measure offset"
            )
        return result("clock", FAIL, "not synchronised (timedatectl)", "enable NTP (chrony)")
    return result("clock", WARN, None, "neither chronyc nor timedatectl answered: install chrony")


# --- driver and GPUs --------------------------------------------------------------------


def _version(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(p) for p in text.split("."))
    except ValueError:
        return None


def check_driver(facts: dict, min_cuda: str | None) -> dict:
    driver, cuda = facts.get("driver_version"), facts.get("cuda_version")
    if not driver:
        return result("driver", FAIL, None, "no GPU driver answered: install the NVIDIA driver")
    value = f"driver {driver}, CUDA {cuda or '?'}"
    wanted, found = _version(min_cuda), _version(cuda)
    if wanted and (found is None or found < wanted):
        return result(
            "driver", FAIL, value, f"the node's engines need CUDA {min_cuda}: update the driver"
        )
    return result("driver", PASS, value)


def check_gpu_count(facts: dict, expected: int | None) -> dict:
    found = len(facts.get("gpus") or ())
    if expected is None:
        return result("gpu_count", SKIP, found, "set the node label hangar.io/gpu-count")
    if found != expected:
        return result(
            "gpu_count", FAIL, f"{found} of {expected}", "a GPU is missing: check the host"
        )
    return result("gpu_count", PASS, f"{found} of {expected}")


def check_gpu_modes(reads: list[dict]) -> list[dict]:
    """Persistence mode, ECC mode and each PCIe link, from a health read."""
    out = []
    for read in reads:
        subject = f"gpu {read['index']}"
        for field, check, advice in (
            ("persistence_mode", "persistence_mode", "nvidia-smi -pm 1 (or nvidia-persistenced)"),
            ("ecc_mode", "ecc_mode", "nvidia-smi -e 1, then reboot"),
        ):
            value = read.get(field)
            if value is None:
                out.append(result(check, SKIP, None, "not supported by this GPU", subject))
            else:
                out.append(
                    result(check, PASS if value else WARN, value, "" if value else advice, subject)
                )
        width, width_max = read.get("pcie_link_width"), read.get("pcie_link_width_max")
        gen, gen_max = read.get("pcie_link_gen"), read.get("pcie_link_gen_max")
        if not (width and width_max):
            out.append(result("pcie_link", SKIP, None, "not supported by this GPU", subject))
            continue
        value = f"gen {gen} of {gen_max}, x{width} of x{width_max}"
        if width < width_max:
            out.append(
                result("pcie_link", FAIL, value, "reseat the card or check the riser", subject)
            )
        elif gen and gen_max and gen < gen_max:
            # An idle GPU trains its link down to save power: only a hint.
            out.append(result("pcie_link", WARN, value, "re-check under load", subject))
        else:
            out.append(result("pcie_link", PASS, value, "", subject))
    return out


# --- model roots --------------------------------------------------------------------------


def _files(root: Path):
    for dirpath, _dirs, names in os.walk(root):
        for name in sorted(names):
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                yield path


def read_throughput(root: Path, limit_bytes: int, limit_s: float) -> tuple[int, float]:
    """(bytes read, seconds) reading existing files under `root`, bounded both ways.

    Each file's cached pages are dropped first (POSIX_FADV_DONTNEED), so the number
    is the storage's, not the page cache's, where the kernel honours the advice.
    """
    done, began = 0, time.perf_counter()
    for path in _files(root):
        with open(path, "rb", buffering=0) as f:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            while done < limit_bytes and time.perf_counter() - began < limit_s:
                chunk = f.read(READ_CHUNK)
                if not chunk:
                    break
                done += len(chunk)
        if done >= limit_bytes or time.perf_counter() - began >= limit_s:
            break
    return done, time.perf_counter() - began


def check_model_root(root: str, limit_bytes: int = READ_SAMPLE_BYTES) -> list[dict]:
    path = Path(root)
    if not path.is_dir():
        return [result("model_root", FAIL, None, "the model root does not exist", root)]
    usage = shutil.disk_usage(path)
    free_gib = usage.free / 2**30
    space = result("free_space", PASS, f"{free_gib:.0f} GiB free", "", root)
    if usage.free < MIN_FREE_BYTES:
        space = result(
            "free_space", WARN, f"{free_gib:.0f} GiB free", "free space for models", root
        )
    read, seconds = read_throughput(path, limit_bytes, READ_SAMPLE_SECONDS)
    if read == 0:
        speed = result("read_throughput", SKIP, None, "no model files to read yet", root)
    else:
        mb_s = read / 1e6 / max(seconds, 1e-9)
        value = f"{mb_s:.0f} MB/s over {read / 2**20:.0f} MiB"
        status = PASS if mb_s >= MIN_READ_MB_S else WARN
        advice = "" if status == PASS else "slow storage: model loads will take long"
        speed = result("read_throughput", status, value, advice, root)
    return [space, speed]


# --- the whole run --------------------------------------------------------------------------


def run_preflight(
    facts: dict,
    health_reads: list[dict],
    model_roots: list[str],
    expected_gpus: int | None = None,
    min_cuda: str | None = None,
    run: Runner = run_command,
) -> dict:
    began = time.time()
    results = [check_driver(facts, min_cuda), check_clock(run)]
    results += check_gpu_modes(health_reads)
    results.append(check_gpu_count(facts, expected_gpus))
    for root in model_roots:
        results += check_model_root(root)
    return {"started_at": began, "finished_at": time.time(), "results": results}


def overall(results: list[dict]) -> str:
    statuses = {r["status"] for r in results}
    for status in (FAIL, WARN):
        if status in statuses:
            return status
    return PASS
