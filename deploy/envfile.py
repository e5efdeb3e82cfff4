"""Run a command with the variables of a systemd EnvironmentFile added.

    envfile.py FILE COMMAND [ARG...]

Read as systemd reads it (KEY=VALUE lines, # comments, optional quotes around a
value), not as a shell script: values such as `(uid=%(user)s)` stay as written.
"""

from __future__ import annotations

import os
import sys


def parse(text: str) -> dict[str, str]:
    variables = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip().isidentifier():
            sys.exit(f"envfile: line {number} is not KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        variables[key.strip()] = value
    return variables


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit("usage: envfile.py FILE COMMAND [ARG...]")
    try:
        with open(sys.argv[1]) as f:
            os.environ.update(parse(f.read()))
    except OSError as exc:
        sys.exit(f"envfile: cannot read {sys.argv[1]}: {exc.strerror}")
    os.execv(sys.argv[2], sys.argv[2:])


if __name__ == "__main__":
    main()
