from django.core.management.base import BaseCommand

from apps.accounts.services import ensure_initial_admin


class Command(BaseCommand):
    help = "Create the initial administrator (with a generated password) if there is none."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")

    def handle(self, *args, username, **options):
        password = ensure_initial_admin(username)
        if password is None:
            self.stdout.write("An administrator exists; nothing to do.")
            return
        self.stdout.write(
            self.style.WARNING(
                f"Created administrator '{username}' with password: {password}\n"
                "This password is shown once. Log in and change it."
            )
        )
