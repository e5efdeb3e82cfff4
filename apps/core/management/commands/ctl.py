"""`make status` / `manage.py ctl ...`: supervisorctl for the console `make run` started.

deploy/supervisord.conf finds its socket through HANGAR_DATA_DIR, which
`manage.py serve` sets for its children only; from another shell the variable
is usually unset and supervisorctl fails with "Format string ... cannot be
expanded". This command resolves the data directory as `make run` does (the
variable, else `data/` in the checkout) and hands over to supervisorctl.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "supervisorctl for `make run`'s processes: status, stop agent, start agent, ..."

    def add_arguments(self, parser):
        parser.add_argument("args", nargs="*", help="supervisorctl's arguments (default: status)")

    def handle(self, *args, **options):
        data_dir = Path(settings.DATA_DIR)
        if not (data_dir / "supervisor.sock").exists():
            raise CommandError(
                f"make run is not running with the data directory {data_dir} (no "
                "supervisor.sock there). Start it with `make run`, or set HANGAR_DATA_DIR "
                "to the directory the running one uses."
            )
        env = {**os.environ, "HANGAR_DATA_DIR": str(data_dir)}
        path = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        supervisorctl = shutil.which("supervisorctl", path=path)
        if supervisorctl is None:
            raise CommandError("supervisorctl is not installed; run `make run` (it installs it).")
        config = Path(settings.BASE_DIR) / "deploy" / "supervisord.conf"
        sys.stdout.flush()
        os.execve(supervisorctl, [supervisorctl, "-c", str(config), *(args or ["status"])], env)
