"""One sync per account at a time: the account's sync lock.

PostgreSQL: a session-level advisory lock (`pg_try_advisory_lock`), released when the run ends or its
connection dies. SQLite (make run): a lease on the account row (`sync_lock_token`, `sync_lock_expires_at`)
that a long run extends (`extend_lease`) and that expires by itself if its worker was killed.
Held by the sync engine for a whole run and by the outbox replay (mailsync.sync.outbox) while it
changes the server, so the two never talk to one account's server at once.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from datetime import timedelta

from django.db import connection
from django.db.models import Q
from django.utils import timezone

from mailsync.models import EmailAccount

SYNC_LOCK_NAMESPACE = 0x73796E63  # "sync"; the per-owner mail lock (mailsync.mailboxes.locks) uses another
LEASE_SECONDS = 300


@contextlib.contextmanager
def session_lock(namespace: int, key: int) -> Iterator[bool]:
    """PostgreSQL only: yield True while this connection holds the advisory lock (namespace, key), False
    when another session holds it. Freed at the end, or when the holder's connection dies (a killed worker)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [namespace, key])
        acquired = cursor.fetchone()[0]
    try:
        yield acquired
    finally:
        if acquired:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [namespace, key])


@contextlib.contextmanager
def account_lock(account_id: int) -> Iterator[bool]:
    """Yield True when this process holds the account's sync lock, False when another one does."""
    if connection.vendor == "postgresql":
        with session_lock(SYNC_LOCK_NAMESPACE, account_id) as acquired:
            yield acquired
        return
    token = uuid.uuid4().hex
    now = timezone.now()
    acquired = bool(
        EmailAccount.objects.filter(pk=account_id)
        .filter(Q(sync_lock_expires_at__isnull=True) | Q(sync_lock_expires_at__lt=now))
        .update(sync_lock_token=token, sync_lock_expires_at=now + timedelta(seconds=LEASE_SECONDS))
    )
    try:
        yield acquired
    finally:
        if acquired:
            EmailAccount.objects.filter(pk=account_id, sync_lock_token=token).update(
                sync_lock_token="", sync_lock_expires_at=None
            )


def extend_lease(account_id: int) -> None:
    if connection.vendor != "postgresql":
        EmailAccount.objects.filter(pk=account_id).exclude(sync_lock_token="").update(
            sync_lock_expires_at=timezone.now() + timedelta(seconds=LEASE_SECONDS)
        )
