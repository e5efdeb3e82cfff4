from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.audit.archive import archive_old_events, verify_archive, verify_archives
from apps.audit.chain import verify_database


class Command(BaseCommand):
    help = "Verify the audit log's hash chain, or archive old events."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="verb", required=True)
        verify = sub.add_parser("verify", help="walk the chain and report the first broken link")
        verify.add_argument("--archive", type=Path, help="verify one archive file on its own")
        verify.add_argument(
            "--archives",
            action="store_true",
            help="also verify every archive segment and its link to the table",
        )
        archive = sub.add_parser("archive", help="archive events older than the hot period")
        archive.add_argument("--days", type=int, help="override HANGAR_AUDIT_HOT_DAYS")

    def handle(self, *args, verb, **options):
        if verb == "archive":
            segments = archive_old_events(options.get("days"))
            if not segments:
                self.stdout.write("Nothing to archive.")
            for segment in segments:
                self.stdout.write(
                    f"Archived #{segment.first_seq}-#{segment.last_seq} to {segment.path}"
                )
            return
        if options.get("archive"):
            path = options["archive"]
            if not path.is_file():
                raise CommandError(f"{path} is not a file")
            count, problem, _ = verify_archive(path)
            self._report(count, problem, str(path))
            return
        total = 0
        if options.get("archives"):
            count, problem = verify_archives()
            total += count
            if problem:
                self._report(total, problem, "the audit archives")
        count, problem = verify_database()
        self._report(total + count, problem, "the audit log")

    def _report(self, count: int, problem: str | None, what: str) -> None:
        if problem:
            raise CommandError(f"BROKEN after {count} good events in {what}: {problem}")
        self.stdout.write(self.style.SUCCESS(f"OK: {count} events in {what}, chain intact."))
