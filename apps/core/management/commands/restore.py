"""`manage.py restore FILE`: put a backup in place of this console's data (docs/backup.md)."""

from __future__ import annotations

from pathlib import Path

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from apps.audit import recorder
from apps.audit.archive import relocate_archives
from apps.core.backup import BackupError, restore_backup


class Command(BaseCommand):
    help = "Restore a backup made by `manage.py backup` into this console's (empty) database."

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path, help="the hangar-backup-*.tar file")
        parser.add_argument(
            "--force",
            action="store_true",
            help="replace a database that already holds data (everything in it is lost)",
        )

    def handle(self, *args, file: Path, force: bool, **options):
        try:
            restored = restore_backup(file, force=force)
        except BackupError as exc:
            raise CommandError(str(exc)) from None
        # A backup of an older release is brought up to this code's schema at once.
        call_command("migrate", interactive=False, verbosity=0)
        relocate_archives()
        recorder.record(
            "system.restore",
            actor_name="manage.py restore",
            target=("backup", file.name, str(file)),
            changes={"made_at": restored.created_at, "made_by": restored.hangar_version},
        )
        self.stdout.write(
            f"Restored {file.name} (Hangar {restored.hangar_version}, {restored.created_at}): "
            f"{restored.vendor} database, {restored.archives} audit archive files. "
            "Check it with `manage.py audit verify --archives`."
        )
