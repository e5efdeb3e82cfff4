"""Files only the agent's user may read, written so no other user ever can.

The state directory holds secrets: the node's credential, each worker's engine
key, and the worker specs that carry it. Each such file is created with mode
0600 (never widened and then narrowed), written to a temporary name and renamed
into place, so a crash leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, mode 0600, atomically."""
    # One temporary name per thread: two writers never share a half-written file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    # Truncate a leftover of a crash rather than fail on it; never follow a link.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)  # a leftover temporary file keeps its mode
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
