"""A console process that keeps writing audit events, for the failover tests.

`python -m tests.ha.writer OUT`: records `ha.probe` events one after another
through the console's own code (apps.audit.recorder, Django's PostgreSQL backend,
the settings of HANGAR_DATABASE_URL), and appends `n <wall time>` to OUT for
each one the database acknowledged (committed). A write that fails is retried,
with the same number, as a request's client would retry it. Stops when OUT.stop
exists.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
django.setup()

from django.db import connection  # noqa: E402

from apps.audit import recorder  # noqa: E402


def main(out: Path) -> None:
    stop = out.with_suffix(".stop")
    number = 0
    with out.open("a", buffering=1) as acks:
        while not stop.exists():
            try:
                recorder.record("ha.probe", changes={"n": number})
            except Exception as exc:
                print(f"write {number} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                connection.close()
                time.sleep(0.1)
                continue
            acks.write(f"{number} {time.time():.3f}\n")
            number += 1
            time.sleep(0.05)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
