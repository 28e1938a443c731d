"""Which mailbox (Inbox, Sent, Archive, Trash) a message is in, and the list rows built on it.

Placement of one message (EmailMessage.mailbox), the first rule that applies (`place`):
1. the user moved it back to the inbox in the CRM (restored_to_inbox)      -> inbox
2. the user archived it in the CRM (is_archived)                           -> archive
3. a copy is in the server's Inbox                                         -> inbox
4. a copy is in the server's Sent folder                                   -> sent
5. a copy is in an Archive / All Mail / any other user folder              -> archive (sent if the user sent it)
6. a copy is in the server's Trash                                         -> trash
7. copies only in Junk / Drafts                                            -> other (not listed)
8. no copy on the server (imported from files)                             -> sent if the user sent it, else inbox
and a received bulk message (List-Id, List-Unsubscribe, Precedence: bulk) placed in the inbox by 3 or 8
is in Bulk instead, and a delivery failure report (bounce) in Delivery reports (rule 1 still wins: "Move to
Inbox" keeps either in the inbox).
So the CRM's own decisions win over the server's folders (they also hold before the next sync has seen
a server-side move), and everything else follows the mail account.

The lists show THREADS. `MailboxEntry` keeps one row per (thread, mailbox) with the thread's latest
visible message there and its message / unread counts; deleted (L6) and blocked (F1) messages never
count, exactly as in mailsync.linking.access. Every write that changes what a list shows calls
`refresh_mailboxes`: ingestion (new mail, new locations, flags), the sync engine (lost locations, flag
changes, server deletions), blocking and the clean-up (`refresh_user_mailboxes`) and the bulk actions
(mailsync.workspace.actions). It recomputes from the messages, so calling it twice, or for threads that
did not change, is harmless; `rebuild_all` (manage.py rebuild_mailboxes) repairs everything.

Search documents (PostgreSQL full-text) are per list row too (mailsync.mailboxes.search): the rows
whose messages changed are indexed by a task after the commit, outside the ingestion transaction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from django.db import connection, transaction
from django.db.models import Count, Exists, Max, OuterRef
from django.db.models.functions import Coalesce

from mailsync.models import (
    EmailMessage,
    EmailThread,
    Mailbox,
    MailboxEntry,
    MailboxSearchDocument,
    MailFolder,
)

from .locks import OWNER_LOCK_NAMESPACE
from .search import fill_search_terms, index_for_search
from .tasks import index_mailbox_for_search

# Folder roles whose messages are "filed away": archive, Gmail's All Mail, and folders without a role.
FILED_ROLES = frozenset({MailFolder.Role.ARCHIVE, MailFolder.Role.ALL, MailFolder.Role.OTHER})
# Threads per statement when many are rebuilt at once.
REBUILD_CHUNK = 2_000
SENT = EmailMessage.Direction.SENT


def place(
    *,
    restored_to_inbox: bool,
    is_archived: bool,
    direction: str,
    roles: set[str],
    is_bulk: bool = False,
    is_report: bool = False,
) -> str:
    """The mailbox of a message from its CRM state and the roles of the folders holding its copies; a
    received delivery report (bounce) that would be in the Inbox is in Delivery reports instead, a bulk
    message (newsletter, list mail) in Bulk, unless the user moved it back to the Inbox."""
    placed = _place_by_folders(
        restored_to_inbox=restored_to_inbox, is_archived=is_archived, direction=direction, roles=roles
    )
    if placed == Mailbox.INBOX and not restored_to_inbox and direction != SENT:
        if is_report:
            return Mailbox.REPORTS
        if is_bulk:
            return Mailbox.BULK
    return placed


def _place_by_folders(*, restored_to_inbox: bool, is_archived: bool, direction: str, roles: set[str]) -> str:
    sent = direction == SENT
    if restored_to_inbox:
        return Mailbox.INBOX
    if is_archived:
        return Mailbox.ARCHIVE
    if MailFolder.Role.INBOX in roles:
        return Mailbox.INBOX
    if MailFolder.Role.SENT in roles:
        return Mailbox.SENT
    if roles & FILED_ROLES:
        return Mailbox.SENT if sent else Mailbox.ARCHIVE
    if MailFolder.Role.TRASH in roles:
        return Mailbox.TRASH
    if roles:
        return Mailbox.OTHER
    return Mailbox.SENT if sent else Mailbox.INBOX


def refresh_mailboxes(message_ids: Iterable[int] = (), *, thread_ids: Iterable[int] = ()) -> None:
    """Recompute the placement of these messages and the list rows of their threads (and of `thread_ids`).

    A constant number of queries whatever the number of messages. Runs in the caller's transaction (or
    its own) under the owners' mail lock, the one ingestion takes, so two writers never interleave their
    rows. The rows whose messages changed are indexed for search after the commit.
    """
    message_ids, thread_ids = list(message_ids), list(thread_ids)
    if not message_ids and not thread_ids:
        return
    with transaction.atomic(savepoint=False):
        changed_entries = _refresh(message_ids, thread_ids)
        if changed_entries and connection.vendor == "postgresql":
            transaction.on_commit(lambda: index_mailbox_for_search.delay(changed_entries))


def refresh_user_mailboxes(user, thread_ids: Iterable[int] | None = None) -> int:
    """After a change that may touch many threads of a user without moving mail between mailboxes (a
    blocked address added or removed, the clean-up): rebuild the list rows of `thread_ids`, or of every
    thread whose rows no longer match its visible messages. Returns how many threads were rebuilt.

    The whole-user check is two aggregate queries (about 0.2 s for 200,000 messages)."""
    ids = sorted(set(thread_ids) if thread_ids is not None else _stale_threads(user))
    for start in range(0, len(ids), REBUILD_CHUNK):
        refresh_mailboxes(thread_ids=ids[start : start + REBUILD_CHUNK])
    return len(ids)


def rebuild_all(*, user=None) -> int:
    """Repair: placement, list rows and search documents of every message (of one user). Returns how
    many threads. Idempotent; writes only what differs."""
    threads = EmailThread.objects.order_by("pk")
    if user is not None:
        threads = threads.filter(owner=user)
    ids = list(threads.values_list("pk", flat=True))
    for start in range(0, len(ids), REBUILD_CHUNK):
        chunk = ids[start : start + REBUILD_CHUNK]
        with transaction.atomic():
            _refresh(EmailMessage.objects.filter(thread_id__in=chunk).values_list("pk", flat=True), chunk)
            fill_search_terms(chunk)
            index_for_search(MailboxEntry.objects.filter(thread_id__in=chunk).values_list("pk", flat=True))
    if connection.vendor == "postgresql":
        # Documents of rows deleted with their thread (a merge, a removed user) have nothing to match.
        MailboxSearchDocument.objects.exclude(Exists(MailboxEntry.objects.filter(pk=OuterRef("pk")))).delete()
    return len(ids)


# --- internals ------------------------------------------------------------------------------------


def _table(model) -> str:
    return connection.ops.quote_name(model._meta.db_table)


_THREADS = _table(EmailThread)
_MESSAGES = _table(EmailMessage)
_ENTRIES = _table(MailboxEntry)


def _refresh(message_ids: Iterable[int], thread_ids: Iterable[int]) -> list[int]:
    """refresh_mailboxes without the search indexing; returns the list rows whose messages changed."""
    message_ids = sorted({int(pk) for pk in message_ids})
    threads = {int(pk) for pk in thread_ids}
    if not message_ids and not threads:
        return []
    _lock_owners(message_ids, sorted(threads))
    threads |= _place(message_ids)
    return _rebuild_entries(threads)


def _lock_owners(message_ids: list[int], thread_ids: list[int]) -> None:
    """Take the mail lock of every owner concerned (locks.lock_owner_mail), in one query."""
    if connection.vendor != "postgresql":
        return  # SQLite serialises writers itself

    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT pg_advisory_xact_lock(%s::integer, owner_id::integer) FROM (
                SELECT t.owner_id FROM {_THREADS} t WHERE t.id = ANY(%s)
                UNION
                SELECT t.owner_id FROM {_MESSAGES} m JOIN {_THREADS} t ON t.id = m.thread_id WHERE m.id = ANY(%s)
                ORDER BY 1
            ) owners
            """,  # noqa: S608 (table names from the models; values are parameters)
            [OWNER_LOCK_NAMESPACE, thread_ids, message_ids],
        )


def _place(message_ids: list[int]) -> set[int]:
    """Store the placement of these messages; returns their threads. One SELECT, one UPDATE per new value."""
    if not message_ids:
        return set()
    messages: dict[int, tuple] = {}
    roles: dict[int, set[str]] = defaultdict(set)
    for pk, thread_id, mailbox, restored, archived, direction, bulk, report, role in EmailMessage.objects.filter(
        pk__in=message_ids
    ).values_list(
        "pk",
        "thread_id",
        "mailbox",
        "restored_to_inbox",
        "is_archived",
        "direction",
        "is_bulk",
        "is_delivery_report",
        "locations__folder__role",
    ):
        messages[pk] = (thread_id, mailbox, restored, archived, direction, bulk, report)
        if role is not None:
            roles[pk].add(role)
    moves: dict[str, list[int]] = defaultdict(list)
    for pk, (_thread_id, current, restored, archived, direction, bulk, report) in messages.items():
        placed = place(
            restored_to_inbox=restored,
            is_archived=archived,
            direction=direction,
            roles=roles[pk],
            is_bulk=bulk,
            is_report=report,
        )
        if placed != current:
            moves[placed].append(pk)
    for placed, pks in moves.items():
        EmailMessage.objects.filter(pk__in=pks).update(mailbox=placed)
    return {values[0] for values in messages.values()}


_ENTRY_FIELDS = (
    "owner_id",
    "latest_date",
    "latest_message_id",
    "message_count",
    "unread_count",
    "thread_message_count",
    "has_attachments",
)


# A change of these means other messages in the row (its search document is rewritten).
_CONTENT_FIELDS = ("latest_message_id", "message_count", "thread_message_count", "has_attachments")


@dataclass
class _Entry:
    owner_id: int
    latest_key: tuple
    latest_message_id: int
    message_count: int = 0
    unread_count: int = 0
    has_attachments: bool = False


def _visible(queryset):
    return queryset.filter(deleted_at__isnull=True, is_blocked=False).exclude(mailbox="")


def _rebuild_entries(thread_ids: set[int]) -> list[int]:
    """Make the MailboxEntry rows of these threads match their visible messages; writes only changes.
    Returns the rows whose messages changed (new rows, other messages or another latest one: not a
    mere change of read state). PostgreSQL: one statement (_rebuild_entries_sql); elsewhere two
    SELECTs and at most one DELETE, INSERT and UPDATE, the same rules in Python."""
    if not thread_ids:
        return []
    if connection.vendor == "postgresql":
        return _rebuild_entries_sql(sorted(thread_ids))
    return _rebuild_entries_python(sorted(thread_ids))


# The rules of _rebuild_entries_python, set-based: an initial sync rebuilds the rows of thousands of
# threads per batch, and reading every message of them into Python cost more than all the rest of
# placement (issue 18). The CTEs see one snapshot: existing rows are classified against it (gone,
# changed, missing) and the DELETE, UPDATE and INSERT touch disjoint rows.
_REBUILD_SQL = f"""
WITH visible AS (
    SELECT m.id, m.thread_id, t.owner_id, m.mailbox, COALESCE(m.date, m.internal_date, m.created_at) AS sort_date,
           m.is_read, m.has_attachments
    FROM {_MESSAGES} m JOIN {_THREADS} t ON t.id = m.thread_id
    WHERE m.thread_id = ANY(%(ids)s) AND m.deleted_at IS NULL AND NOT m.is_blocked AND m.mailbox <> ''
), wanted AS (
    SELECT DISTINCT ON (v.thread_id, v.mailbox)
           v.thread_id, v.mailbox, v.owner_id, v.sort_date AS latest_date, v.id AS latest_message_id,
           count(*) OVER row_messages AS message_count,
           count(*) FILTER (WHERE NOT v.is_read) OVER row_messages AS unread_count,
           bool_or(v.has_attachments) OVER row_messages AS has_attachments,
           count(*) OVER (PARTITION BY v.thread_id) AS thread_message_count
    FROM visible v
    WINDOW row_messages AS (PARTITION BY v.thread_id, v.mailbox)
    ORDER BY v.thread_id, v.mailbox, v.sort_date DESC, v.id DESC
), existing AS (
    SELECT * FROM {_ENTRIES} WHERE thread_id = ANY(%(ids)s)
), gone AS (
    DELETE FROM {_ENTRIES} e USING existing x
    WHERE e.id = x.id
      AND NOT EXISTS (SELECT 1 FROM wanted w WHERE w.thread_id = x.thread_id AND w.mailbox = x.mailbox)
    RETURNING e.id
), gone_documents AS (
    DELETE FROM {_table(MailboxSearchDocument)} d USING gone g WHERE d.entry_id = g.id
), changed AS (
    UPDATE {_ENTRIES} e
    SET owner_id = w.owner_id, latest_date = w.latest_date, latest_message_id = w.latest_message_id,
        message_count = w.message_count, unread_count = w.unread_count,
        thread_message_count = w.thread_message_count, has_attachments = w.has_attachments
    FROM existing x JOIN wanted w ON w.thread_id = x.thread_id AND w.mailbox = x.mailbox
    WHERE e.id = x.id
      AND (x.owner_id, x.latest_date, x.latest_message_id, x.message_count, x.unread_count,
           x.thread_message_count, x.has_attachments)
          IS DISTINCT FROM (w.owner_id, w.latest_date, w.latest_message_id, w.message_count, w.unread_count,
                            w.thread_message_count, w.has_attachments)
    RETURNING e.id, (x.latest_message_id, x.message_count, x.thread_message_count, x.has_attachments)
          IS DISTINCT FROM (w.latest_message_id, w.message_count, w.thread_message_count, w.has_attachments)
          AS content_changed
), created AS (
    INSERT INTO {_ENTRIES} (owner_id, thread_id, mailbox, latest_date, latest_message_id, message_count,
                            unread_count, thread_message_count, has_attachments)
    SELECT w.owner_id, w.thread_id, w.mailbox, w.latest_date, w.latest_message_id, w.message_count,
           w.unread_count, w.thread_message_count, w.has_attachments
    FROM wanted w
    WHERE NOT EXISTS (SELECT 1 FROM existing x WHERE x.thread_id = w.thread_id AND x.mailbox = w.mailbox)
    RETURNING id
)
SELECT id FROM created UNION ALL SELECT id FROM changed WHERE content_changed
"""  # noqa: S608 (table names from the models; values are parameters)


def _rebuild_entries_sql(ids: list[int]) -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute(_REBUILD_SQL, {"ids": ids})
        return [row[0] for row in cursor.fetchall()]


def _rebuild_entries_python(ids: list[int]) -> list[int]:
    visible = (
        _visible(EmailMessage.objects.filter(thread_id__in=ids))
        .annotate(sort_date=Coalesce("date", "internal_date", "created_at"))
        .order_by()
        .values_list("pk", "thread_id", "thread__owner_id", "mailbox", "sort_date", "is_read", "has_attachments")
    )
    wanted: dict[tuple[int, str], _Entry] = {}
    per_thread: dict[int, int] = defaultdict(int)
    for pk, thread_id, owner_id, mailbox, sort_date, is_read, has_attachments in visible:
        key = (sort_date, pk)
        entry = wanted.get((thread_id, mailbox))
        if entry is None:
            entry = wanted[(thread_id, mailbox)] = _Entry(owner_id=owner_id, latest_key=key, latest_message_id=pk)
        elif key > entry.latest_key:
            entry.latest_key, entry.latest_message_id = key, pk
        entry.message_count += 1
        entry.unread_count += 0 if is_read else 1
        entry.has_attachments |= has_attachments
        per_thread[thread_id] += 1

    existing = {
        (row["thread_id"], row["mailbox"]): row
        for row in MailboxEntry.objects.filter(thread_id__in=ids).values("pk", "thread_id", "mailbox", *_ENTRY_FIELDS)
    }
    gone = [row["pk"] for key, row in existing.items() if key not in wanted]
    created, changed, content_changed = [], [], []
    for (thread_id, mailbox), entry in wanted.items():
        values = {
            "owner_id": entry.owner_id,
            "latest_date": entry.latest_key[0],
            "latest_message_id": entry.latest_message_id,
            "message_count": entry.message_count,
            "unread_count": entry.unread_count,
            "thread_message_count": per_thread[thread_id],
            "has_attachments": entry.has_attachments,
        }
        row = existing.get((thread_id, mailbox))
        if row is None:
            created.append(MailboxEntry(thread_id=thread_id, mailbox=mailbox, **values))
        elif any(row[name] != value for name, value in values.items()):
            changed.append(MailboxEntry(pk=row["pk"], **values))
            if any(row[name] != values[name] for name in _CONTENT_FIELDS):
                content_changed.append(row["pk"])
    if gone:
        MailboxEntry.objects.filter(pk__in=gone).delete()
        if connection.vendor == "postgresql":
            MailboxSearchDocument.objects.filter(pk__in=gone).delete()
    if created:
        MailboxEntry.objects.bulk_create(created, batch_size=1000)
    if changed:
        MailboxEntry.objects.bulk_update(changed, list(_ENTRY_FIELDS), batch_size=1000)
    return [entry.pk for entry in created if entry.pk is not None] + content_changed


def _stale_threads(user) -> set[int]:
    """Threads of the user whose list rows disagree with their visible messages (count or latest date)."""
    live = {
        (row["thread_id"], row["mailbox"]): (row["n"], row["latest"])
        for row in _visible(EmailMessage.objects.filter(thread__owner=user))
        .order_by()
        .values("thread_id", "mailbox")
        .annotate(n=Count("pk"), latest=Max(Coalesce("date", "internal_date", "created_at")))
    }
    listed = {
        (thread_id, mailbox): (count, latest)
        for thread_id, mailbox, count, latest in MailboxEntry.objects.filter(owner=user).values_list(
            "thread_id", "mailbox", "message_count", "latest_date"
        )
    }
    return {key[0] for key in live.keys() | listed.keys() if live.get(key) != listed.get(key)}
