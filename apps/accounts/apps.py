from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "apps.accounts"
    label = "accounts"

    def ready(self) -> None:
        # Connects the receivers that end a user's live sockets when their rights change.
        import apps.accounts.signals  # noqa: F401
