"""Why a run ended: exit status + log tail + kernel log -> (cause, evidence).

`classify_exit` is pure; `read_kernel_log` is the one place that touches
/dev/kmsg (or `dmesg`), and both are optional: without permission to read the
kernel log a SIGKILL stays `signal`, never a guessed `host-oom`.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
from collections.abc import Collection, Sequence

# Checked in this order; the last matching line of the tail is the evidence.
_GPU_OOM = re.compile(
    r"CUDA out of memory|torch\.OutOfMemoryError|torch\.cuda\.OutOfMemoryError|"
    r"cudaErrorMemoryAllocation|CUDA_ERROR_OUT_OF_MEMORY|out of memory.*cuda|"
    r"cudaMalloc failed|failed to allocate .* on device"
    r"|No available memory for the cache blocks",
    re.IGNORECASE,
)
_XID = re.compile(r"NVRM: Xid|\bXid\b.*\(PCI:")
_CUDA_ERROR = re.compile(
    r"CUDA error|cudaError\w*|CUDA_ERROR_\w+|NCCL error|ncclSystemError|ncclInternalError|"
    r"ncclUnhandledCudaError|CUBLAS_STATUS_\w+|illegal memory access|"
    r"device-side assert|no CUDA-capable device|CUDA driver version is insufficient"
)
_STARTUP_ERROR = re.compile(
    r"Address already in use|No such file or directory|ModuleNotFoundError|ImportError|"
    r"FileNotFoundError|unrecognized arguments|error: argument|command not found|"
    r"Permission denied|cannot start: "
)
_KERNEL_OOM = re.compile(r"Out of memory: Killed process (\d+)|oom-kill:.*\bpid=(\d+)")
_KERNEL_XID = re.compile(r"NVRM: Xid \(PCI:[^)]*\): (\d+)(?:, pid=(\d+))?")

TAIL_LINES = 200


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _last_match(lines: Sequence[str], pattern: re.Pattern[str]) -> str | None:
    for line in reversed(lines[-TAIL_LINES:]):
        if pattern.search(line):
            return line.strip()[:1000]
    return None


def classify_exit(
    returncode: int | None,
    log_tail: Sequence[str],
    *,
    was_ready: bool = False,
    pids: Collection[int] = (),
    kernel_lines: Sequence[str] | None = None,
) -> tuple[str, str]:
    """(cause, evidence) for a run that ended on its own.

    `returncode` follows subprocess: negative for a signal, None when unknown
    (a re-adopted worker is not our child, so its status is lost).
    `was_ready`: a startup error is only a startup error before the worker
    ever answered its health check; afterwards "No such file" in a log is
    more likely a warning than the reason it died.
    `pids` are the run's processes (its group leader and the children seen);
    kernel records count only when they name one of them.
    `kernel_lines` are kernel log lines since the run started, or None when
    the kernel log is unreadable.
    """
    kernel = list(kernel_lines or ())
    if returncode in (-signal.SIGKILL, None) and pids:
        for line in reversed(kernel):
            match = _KERNEL_OOM.search(line)
            if match and int(match.group(1) or match.group(2)) in pids:
                return "host-oom", line.strip()[:1000]
    evidence = _last_match(log_tail, _GPU_OOM)
    if evidence:
        return "gpu-oom", evidence
    for line in reversed(kernel):
        match = _KERNEL_XID.search(line)
        if match and match.group(2) and int(match.group(2)) in pids:
            return "xid", line.strip()[:1000]
    evidence = _last_match(log_tail, _XID)
    if evidence:
        return "xid", evidence
    evidence = _last_match(log_tail, _CUDA_ERROR)
    if evidence:
        return "cuda-error", evidence
    if not was_ready:
        evidence = _last_match(log_tail, _STARTUP_ERROR)
        if evidence:
            return "startup-error", evidence
    if returncode is None:
        last = _last_line(log_tail)
        return "unknown", f"the process ended while the agent was not watching{last}"
    if returncode < 0:
        return "signal", f"killed by {signal_name(-returncode)} (signal {-returncode})"
    return "exited", f"exited with code {returncode}{_last_line(log_tail)}"


def _last_line(lines: Sequence[str]) -> str:
    for line in reversed(lines):
        if line.strip():
            return f"; last log line: {line.strip()[:900]}"
    return ""


def read_kernel_log(since_boot_s: float | None = None, limit: int = 5000) -> list[str] | None:
    """Kernel log lines (newest last), or None when this process may not read it.

    /dev/kmsg first (records carry microseconds since boot, so lines older
    than `since_boot_s` are skipped); `dmesg` as a fallback.
    """
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return _dmesg(limit)
    lines: list[str] = []
    try:
        while True:
            try:
                record = os.read(fd, 8192)
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # overwritten while reading: go on
                    continue
                if exc.errno == errno.EAGAIN:
                    break
                return lines or _dmesg(limit)
            if not record:
                break
            text = record.decode("utf-8", "replace")
            prefix, _, message = text.partition(";")
            fields = prefix.split(",")
            if since_boot_s is not None and len(fields) >= 3:
                try:
                    if int(fields[2]) / 1e6 < since_boot_s:
                        continue
                except ValueError:
                    pass
            lines.append(message.split("\n", 1)[0])
            if len(lines) > limit:
                del lines[0]
    finally:
        os.close(fd)
    return lines


def _dmesg(limit: int) -> list[str] | None:
    try:
        result = subprocess.run(
            ["dmesg"], capture_output=True, text=True, timeout=5, check=False
        )  # an argument vector: no shell
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.splitlines()[-limit:]
