"""Credentials at rest: Fernet (AES-128-CBC + HMAC-SHA256) with key rotation through MultiFernet.

Configuration (environment, see crm/settings.py):

    MAILSYNC_ENCRYPTION_KEYS="<newest key>,<older key>,..."

Comma-separated Fernet keys (make one with `python -c "from cryptography.fernet import Fernet;
print(Fernet.generate_key().decode())"`). The FIRST key encrypts; every key decrypts. To rotate: put a
new key first, keep the old ones after it, then re-encrypt the stored secrets
(`mailsync.services.reencrypt_all_secrets()`), then drop the old keys.

When the setting is empty, a key is derived from SECRET_KEY. That is for development only: anyone who
knows SECRET_KEY can read the mail passwords, and changing SECRET_KEY makes them unreadable (the accounts
then ask for re-authentication). Production deployments must set MAILSYNC_ENCRYPTION_KEYS.
"""

from __future__ import annotations

import base64
import functools
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

from mailsync.protocols import errors


class CredentialsUnreadable(errors.AuthFailed):
    code = "credentials_unreadable"
    default_message = "The stored credentials of this account cannot be decrypted (the encryption key changed)."
    default_fix = "Click Re-authenticate and enter the password again."


def configured_keys() -> tuple[str, ...]:
    raw = getattr(settings, "MAILSYNC_ENCRYPTION_KEYS", None) or ()
    if isinstance(raw, str):
        raw = raw.split(",")
    return tuple(key.strip() for key in raw if key and key.strip())


def using_development_key() -> bool:
    return not configured_keys()


def development_key() -> str:
    digest = hashlib.sha256(b"crm.mailsync.credentials:" + settings.SECRET_KEY.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()


@functools.lru_cache(maxsize=8)
def _multi_fernet(keys: tuple[str, ...]) -> MultiFernet:
    try:
        return MultiFernet([Fernet(key.encode()) for key in keys])
    except ValueError:
        # Never echo the keys themselves.
        raise ValueError(
            "MAILSYNC_ENCRYPTION_KEYS must be comma-separated Fernet keys (32 url-safe base64-encoded bytes)"
        ) from None


def _fernet() -> MultiFernet:
    return _multi_fernet(configured_keys() or (development_key(),))


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    """The plaintext; CredentialsUnreadable when no configured key opens the token."""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except (InvalidToken, ValueError, TypeError):
        raise CredentialsUnreadable() from None


def rotate(token: str) -> str:
    """Re-encrypt a token with the first (newest) key."""
    try:
        return _fernet().rotate(token.encode()).decode()
    except InvalidToken:
        raise CredentialsUnreadable() from None
