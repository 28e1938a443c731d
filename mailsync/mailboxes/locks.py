"""The per-owner mail lock: every write to one owner's mail and lists takes it.

Ingestion (mailsync.sync.ingest), list placement (`placement.refresh_mailboxes`) and the bulk actions
(mailsync.workspace.actions) hold it until the end of their transaction, so two workers (or two accounts
of one owner) never thread or insert the same mail twice, and a list row is never built from half of a
batch. It lives here, at the bottom of the writers, so that each of them can take it without importing
the others.
"""

from django.db import connection

OWNER_LOCK_NAMESPACE = 0x6D61696C  # "mail"; the sync lock (mailsync.sync.lock) uses another namespace


def lock_owner_mail(owner_id: int) -> None:
    """Serialise mail writes of one owner until the end of the current transaction (PostgreSQL).

    SQLite (make run) already serialises writers with its IMMEDIATE transactions."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [OWNER_LOCK_NAMESPACE, owner_id])
