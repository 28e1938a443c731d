"""The "Add account" form keeps the typed password across a failed try, without ever rendering it back.

It is kept in the user's server-side session (database sessions), encrypted with the credentials key
(mailsync.models.crypto), bound to the address it was typed for, for 15 minutes at most, and dropped as
soon as the account is saved or the user logs out. The browser only sees an empty field that says so.
"""

import time

from django.http import HttpRequest

from mailsync.models import crypto

SESSION_KEY = "mailsync_kept_password"
KEEP_SECONDS = 15 * 60


def keep(request: HttpRequest, *, address: str, password: str) -> None:
    request.session[SESSION_KEY] = {
        "address": address,
        "secret": crypto.encrypt(password),
        "until": time.time() + KEEP_SECONDS,
    }


def kept_for(request: HttpRequest, address: str) -> str:
    """The password kept for this address ("" when none, expired, or for another address)."""
    entry = request.session.get(SESSION_KEY)
    if not isinstance(entry, dict) or entry.get("address") != address or entry.get("until", 0) < time.time():
        return ""
    try:
        return crypto.decrypt(str(entry.get("secret", "")))
    except crypto.CredentialsUnreadable:
        return ""


def forget(request: HttpRequest) -> None:
    request.session.pop(SESSION_KEY, None)
