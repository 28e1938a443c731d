"""Start-up checks of the mail settings (Django's system checks: shown by runserver, migrate, check and
`check --deploy`), and the same warning in the log of processes that run no checks (gunicorn through
crm/wsgi.py, Celery workers through crm/celery.py)."""

import logging

from django.conf import settings
from django.core import checks

from .models import crypto

logger = logging.getLogger("mailsync")

DEVELOPMENT_KEY_WARNING = (
    "MAILSYNC_ENCRYPTION_KEYS is not set: mailbox passwords and tokens are encrypted with a key derived from "
    "DJANGO_SECRET_KEY. Anyone who has the secret key can read them, and changing it makes them unreadable."
)


def development_key_in_production() -> bool:
    return not settings.DEBUG and crypto.using_development_key()


@checks.register(checks.Tags.security)
def check_encryption_keys(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    if not development_key_in_production():
        return []
    return [
        checks.Warning(
            DEVELOPMENT_KEY_WARNING,
            hint='Set MAILSYNC_ENCRYPTION_KEYS to a Fernet key: python -c "from cryptography.fernet import '
            'Fernet; print(Fernet.generate_key().decode())" (see the README, Production setup).',
            id="mailsync.W001",
        )
    ]


def warn_at_start() -> None:
    if development_key_in_production():
        logger.warning("%s Set MAILSYNC_ENCRYPTION_KEYS (README, Production setup).", DEVELOPMENT_KEY_WARNING)
