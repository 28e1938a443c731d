"""Caps on simultaneous IMAP connections per mailbox, shared by every watcher and worker.

Providers limit how many connections one mailbox may have open at once (Gmail: 15 per user; Exchange
Online: 20, Exchange Server: 16 by default, so Microsoft gets 16), and count every app: phones and
desktop clients too. The
caps come from the provider presets (mailsync.accounts.providers, registered at start by mailsync.apps
with `register_caps`, by IMAP host); any other server gets MAILSYNC_MAX_CONNECTIONS_PER_MAILBOX.

A database semaphore: each open connection holds a ConnectionSlot row keyed by IMAP host and login.
Taking one serialises on the key (PostgreSQL: a transaction-level advisory lock; SQLite serialises
writers anyway), drops expired slots, counts the rest and adds one if under the cap. A holder that dies
leaves slots that expire by themselves (a watcher renews its slots with its heartbeat; a sync's slot
lasts its time budget and a margin). When no slot is free, `imap_slot` raises
errors.TooManyConnections: the account waits and retries with its own backoff, the others go on.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from collections.abc import Iterator
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from mailsync.models import ConnectionSlot, EmailAccount
from mailsync.protocols import errors

LIMIT_LOCK_NAMESPACE = 0x6C696D74  # "limt"; the sync lock (mailsync.sync.lock) uses another
_caps_by_host: dict[str, int] = {}


def register_caps(caps: dict[str, int]) -> None:
    """IMAP host -> the provider's documented cap per mailbox (from the presets)."""
    _caps_by_host.update({host.lower(): cap for host, cap in caps.items()})


def cap_for(account: EmailAccount) -> int:
    return _caps_by_host.get(account.imap_host.lower(), settings.MAILSYNC_MAX_CONNECTIONS_PER_MAILBOX)


def slot_key(account: EmailAccount) -> str:
    return f"{account.imap_host.lower()}|{account.username.lower()}"[:600]


def default_holder() -> str:
    return f"pid:{os.getpid()}"


_TAKE_SLOT_SQL = """
WITH expired AS (DELETE FROM mailsync_connectionslot WHERE key = %(key)s AND expires_at < %(now)s)
INSERT INTO mailsync_connectionslot (key, holder, acquired_at, expires_at)
SELECT %(key)s, %(holder)s, %(now)s, %(expires)s
WHERE (SELECT count(*) FROM mailsync_connectionslot WHERE key = %(key)s AND expires_at >= %(now)s) < %(cap)s
RETURNING id
"""


def acquire(account: EmailAccount, *, holder: str, seconds: float) -> int | None:
    """A slot for one connection to the account's mailbox, or None when its cap is reached."""
    key = slot_key(account)
    now = timezone.now()
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_advisory_xact_lock(%s, %s)", [LIMIT_LOCK_NAMESPACE, zlib.crc32(key.encode()) - 2**31]
                )
                # The rest in one statement (it starts after the lock, so it sees every committed slot):
                # drop expired slots, count the others, add one if under the cap.
                cursor.execute(
                    _TAKE_SLOT_SQL,
                    {
                        "key": key,
                        "holder": holder,
                        "now": now,
                        "expires": now + timedelta(seconds=seconds),
                        "cap": cap_for(account),
                    },
                )
                row = cursor.fetchone()
            return row[0] if row else None
        ConnectionSlot.objects.filter(key=key, expires_at__lt=now).delete()
        if ConnectionSlot.objects.filter(key=key).count() >= cap_for(account):
            return None
        return ConnectionSlot.objects.create(key=key, holder=holder, expires_at=now + timedelta(seconds=seconds)).pk


def release(slot_id: int | None) -> None:
    if slot_id is not None:
        ConnectionSlot.objects.filter(pk=slot_id).delete()


def renew(holder: str, *, seconds: float) -> None:
    ConnectionSlot.objects.filter(holder=holder).update(expires_at=timezone.now() + timedelta(seconds=seconds))


def release_holder(holder: str) -> None:
    ConnectionSlot.objects.filter(holder=holder).delete()


def refused(account: EmailAccount) -> errors.TooManyConnections:
    cap = cap_for(account)
    return errors.TooManyConnections(
        f"The CRM already holds the {cap} simultaneous connections this mail provider allows for this mailbox.",
        fix="This clears by itself when a sync ends; the account waits and tries again.",
        detail=f"{slot_key(account)}: {cap} slots in use",
        protocol="imap",
    )


@contextlib.contextmanager
def imap_slot(account: EmailAccount, *, seconds: float, holder: str = "") -> Iterator[None]:
    """Hold a slot while the body connects and works; raises errors.TooManyConnections if none is free."""
    slot = acquire(account, holder=holder or default_holder(), seconds=seconds)
    if slot is None:
        raise refused(account)
    try:
        yield
    finally:
        release(slot)
