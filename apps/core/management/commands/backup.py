"""`manage.py backup`: the database, audit archives and settings in one file (docs/backup.md)."""

from __future__ import annotations

import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.audit import recorder
from apps.core.backup import BackupError, create_backup


class Command(BaseCommand):
    help = "Write one timestamped backup file: database, audit archives, settings."

    def add_arguments(self, parser):
        parser.add_argument(
            "--output",
            type=Path,
            default=None,
            help="directory to write into (default: <HANGAR_DATA_DIR>/backups)",
        )

    def handle(self, *args, output: Path | None, **options):
        started = time.monotonic()
        directory = output or Path(settings.DATA_DIR) / "backups"
        try:
            path, manifest = create_backup(directory)
        except BackupError as exc:
            raise CommandError(str(exc)) from None
        size = path.stat().st_size
        recorder.record(
            "system.backup",
            actor_name="manage.py backup",
            target=("backup", path.name, str(path)),
            changes={"size": size, "files": len(manifest["files"])},
        )
        self.stdout.write(
            f"Wrote {path} ({size / 2**20:.1f} MiB, {len(manifest['files'])} files, "
            f"{time.monotonic() - started:.1f} s)."
        )
