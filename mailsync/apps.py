from django.apps import AppConfig


class MailsyncConfig(AppConfig):
    name = "mailsync"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from .accounts.providers import connection_caps
        from .connection.limits import register_caps

        # The presets' caps on simultaneous connections, for the semaphore below the accounts layer.
        register_caps(connection_caps())
