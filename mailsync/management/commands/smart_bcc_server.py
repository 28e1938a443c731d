"""`manage.py smart_bcc_server [--host H] [--port P]`: the built-in Smart BCC receiver (an MX).

See mailsync/inbound/smtp_server.py and the README ("Smart BCC") for the DNS record and the settings.
"""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from mailsync.inbound.smtp_server import ReceiverConfig, serve


class Command(BaseCommand):
    help = "Receive Smart BCC mail over SMTP (STARTTLS, size limit, unknown recipients refused)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=settings.MAILSYNC_SMART_BCC_SMTP_HOST)
        parser.add_argument("--port", type=int, default=settings.MAILSYNC_SMART_BCC_SMTP_PORT)

    def handle(self, *args, host, port, **options):
        if not settings.MAILSYNC_SMART_BCC_DOMAIN:
            raise CommandError("Set MAILSYNC_SMART_BCC_DOMAIN (the domain whose MX record points at this host).")
        if not (settings.MAILSYNC_SMART_BCC_TLS_CERT and settings.MAILSYNC_SMART_BCC_TLS_KEY):
            raise CommandError(
                "Set MAILSYNC_SMART_BCC_TLS_CERT and MAILSYNC_SMART_BCC_TLS_KEY (PEM files) so that senders can "
                "use STARTTLS: mail sent in BCC is private."
            )
        try:
            config = ReceiverConfig.from_settings()
        except (OSError, ValueError) as error:
            raise CommandError(f"Cannot load the TLS certificate or key: {error}") from error

        def ready(server):
            self.stdout.write(
                f"Smart BCC receiver for @{settings.MAILSYNC_SMART_BCC_DOMAIN} listening on {host}:{port} "
                f"(STARTTLS, max {config.max_bytes // (1024 * 1024)} MB). Ctrl-C stops."
            )
            self.stdout.flush()

        try:
            serve(host, port, config, ready=ready)
        except OSError as error:
            raise CommandError(f"Cannot listen on {host}:{port}: {error}") from error
