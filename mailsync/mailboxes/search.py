"""Full-text search documents of the mail lists (PostgreSQL), one per list row (MailboxSearchDocument).

A search is then one table plus a GIN index. Building a document costs ~0.3 ms per typical message
body, too much for the ingestion transaction: list placement (`placement.refresh_mailboxes`) hands the
rows whose messages changed to a task after the commit (`tasks.index_mailbox_for_search`); until then a
new message is listed but not yet found by search. Elsewhere (SQLite) search falls back to substring
matching and nothing is written here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from django.db import DataError, connection, transaction

from mailsync.models import EmailMessage, MailboxEntry, MailboxSearchDocument, MessageParticipant

from .tuning import without_jit

logger = logging.getLogger(__name__)

# What a list row's search document holds: the start of each body (quoted history makes bodies long)
# and the first participants of its latest messages; bounded, so that a huge conversation (or a mail to
# thousands) stays below tsvector's 1 MB limit.
SEARCH_BODY_CHARS = 10_000
SEARCH_MESSAGES = 50
SEARCH_PARTICIPANTS = 100
SEARCH_TOTAL_CHARS = 200_000


def _table(model) -> str:
    return connection.ops.quote_name(model._meta.db_table)


_MESSAGES = _table(EmailMessage)
_PARTICIPANTS = _table(MessageParticipant)
_ENTRIES = _table(MailboxEntry)
_DOCUMENTS = _table(MailboxSearchDocument)


def index_for_search(entry_ids: Iterable[int]) -> int:
    """(Re)write the full-text documents of these list rows from their visible messages (PostgreSQL only:
    elsewhere search falls back to substring matching). Idempotent. Returns how many were written."""
    ids = sorted({int(pk) for pk in entry_ids})
    if not ids or connection.vendor != "postgresql":
        return 0
    try:
        with transaction.atomic():
            return _write_documents(ids)
    except DataError:
        # A document over tsvector's limits (pathological mail): index the others one by one, without it.
        written = 0
        for pk in ids:
            try:
                with transaction.atomic():
                    written += _write_documents([pk])
            except DataError:
                logger.warning("mail list row %s is not searchable: its text is too large to index", pk)
        return written


def _write_documents(ids: list[int]) -> int:
    without_jit()  # to_tsvector over many rows looks costly to the planner: JIT compiled it for ~40 ms
    # Addresses go in whole (exact match) and split at @ . - _ + (so "acme" finds anna@acme-logistics.pl).
    # strip(): positions are not needed (no phrase search) and would make the documents twice as big.
    # mailsync_cjk_terms (migration 0005): the two-character pieces of Chinese / Japanese / Korean runs,
    # which the parser would otherwise keep as one unsearchable word.
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {_DOCUMENTS} (entry_id, document)
            SELECT grouped.id, strip(to_tsvector('simple', grouped.text || ' ' || mailsync_cjk_terms(grouped.text)))
            FROM (
            SELECT e.id, left(string_agg(message.text, ' '), %(total_chars)s) AS text
            FROM {_ENTRIES} e
            CROSS JOIN LATERAL (
                SELECT concat_ws(' ', m.subject, m.from_name, m.from_address,
                                 translate(m.from_address, '@.-_+', '     '), people.text,
                                 left(m.body_text, %(body_chars)s)) AS text
                FROM {_MESSAGES} m
                LEFT JOIN LATERAL (
                    SELECT string_agg(concat_ws(' ', p.name, p.address, translate(p.address, '@.-_+', '     ')),
                                      ' ') AS text
                    FROM (SELECT name, address FROM {_PARTICIPANTS} WHERE message_id = m.id
                          ORDER BY id LIMIT %(participants)s) p
                ) people ON true
                WHERE m.thread_id = e.thread_id AND m.mailbox = e.mailbox
                  AND m.deleted_at IS NULL AND NOT m.is_blocked
                ORDER BY m.date DESC NULLS LAST, m.id DESC
                LIMIT %(messages)s
            ) message
            WHERE e.id = ANY(%(ids)s)
            GROUP BY e.id
            ) grouped
            ON CONFLICT (entry_id) DO UPDATE SET document = EXCLUDED.document
            """,  # noqa: S608 (table names from the models; values are parameters)
            {
                "body_chars": SEARCH_BODY_CHARS,
                "messages": SEARCH_MESSAGES,
                "participants": SEARCH_PARTICIPANTS,
                "total_chars": SEARCH_TOTAL_CHARS,
                "ids": ids,
            },
        )
        return cursor.rowcount
