#!/usr/bin/env python
"""Django's command-line utility for Hangar."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    from console.config import ConfigError

    try:
        import django

        django.setup()
    except ConfigError as exc:
        sys.exit(f"hangar: configuration error: {exc}")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
