from django.apps import AppConfig


class MailsyncConfig(AppConfig):
    name = "mailsync"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
