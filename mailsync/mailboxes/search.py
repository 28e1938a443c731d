"""Full-text search documents of the mail lists (PostgreSQL), one per list row (MailboxSearchDocument).

A search is then one table plus a GIN index. A document is the set of its messages' search words:
each message's distinct words are computed when it is parsed (mailsync.sync.parsing.search_terms_of,
in the sync's parse worker; words.py says what a word is), so building a document is a concatenation
and array_to_tsvector, not a text search parse in the database (to_tsvector cost ~0.3 ms a message,
most of the database's time in an initial sync). Messages without stored words (stored before they
existed, or not parsed from bytes) are read the old way, with to_tsvector over their text.
Documents are written after the commit: list placement (`placement.refresh_mailboxes`) hands the
rows whose messages changed to a task (`tasks.index_mailbox_for_search`); until then a new message is
listed but not yet found by search.
Elsewhere (SQLite) search falls back to substring matching and nothing is written here.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable

from django.db import DataError, connection, transaction

from mailsync.models import EmailMessage, MailboxEntry, MailboxSearchDocument, MessageParticipant

from .tuning import tune_planner
from .words import SEARCH_BODY_CHARS, SEARCH_PARTICIPANTS, message_terms

logger = logging.getLogger(__name__)

# What a list row's search document holds: the words of its latest messages (each: its subject, the
# first SEARCH_PARTICIPANTS participants, the first SEARCH_BODY_CHARS of its text); bounded, so that a
# huge conversation stays below tsvector's 1 MB limit.
SEARCH_MESSAGES = 50
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


def fill_search_terms(thread_ids: Iterable[int]) -> int:
    """Search words for the stored messages of these threads that have none (stored before they
    existed, or made without parsing), from their subject, participants and text, as the parser gives
    them to new mail; their documents then follow one word rule. Returns how many were filled."""
    if connection.vendor != "postgresql":
        return 0
    messages = list(
        EmailMessage.objects.filter(thread_id__in=list(thread_ids), search_terms__isnull=True).values_list(
            "pk", "subject", "body_text"
        )
    )
    if not messages:
        return 0
    people: dict[int, list[tuple[str, str]]] = defaultdict(list)
    participants = MessageParticipant.objects.filter(message_id__in=[pk for pk, _subject, _text in messages])
    for message_id, name, address in participants.order_by("message_id", "pk").values_list(
        "message_id", "name", "address"
    ):
        people[message_id].append((name, address))
    EmailMessage.objects.bulk_update(
        [EmailMessage(pk=pk, search_terms=message_terms(subject, people[pk], text)) for pk, subject, text in messages],
        ["search_terms"],
        batch_size=500,
    )
    return len(messages)


def _write_documents(ids: list[int]) -> int:
    tune_planner()  # the statement over many rows looks costly to the planner: JIT compiled it for ~40 ms
    # terms: the stored words of the messages that have them (split into lexemes as they are).
    # text: the others' text, parsed by to_tsvector: addresses whole and split at @ . - _ +, and
    # (mailsync_cjk_terms, migration 0005) the two-character pieces of Chinese / Japanese / Korean runs.
    # strip(): positions are not needed (no phrase search) and would make the documents twice as big.
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {_DOCUMENTS} (entry_id, document)
            SELECT grouped.id,
                   array_to_tsvector(array_remove(string_to_array(grouped.terms, ' '), ''))
                   || CASE WHEN grouped.text = '' THEN ''::tsvector  -- every message has its words (new mail)
                      ELSE strip(to_tsvector('simple', grouped.text || ' ' || mailsync_cjk_terms(grouped.text))) END
            FROM (
            SELECT e.id,
                   left(coalesce(string_agg(message.search_terms, ' '), ''), %(total_chars)s) AS terms,
                   left(coalesce(string_agg(message.text, ' '), ''), %(total_chars)s) AS text
            FROM {_ENTRIES} e
            CROSS JOIN LATERAL (
                SELECT m.search_terms,
                       CASE WHEN m.search_terms IS NULL THEN
                           concat_ws(' ', m.subject, m.from_name, m.from_address,
                                     translate(m.from_address, '@.-_+', '     '), people.text,
                                     left(m.body_text, %(body_chars)s))
                       END AS text
                FROM {_MESSAGES} m
                LEFT JOIN LATERAL (
                    SELECT string_agg(concat_ws(' ', p.name, p.address, translate(p.address, '@.-_+', '     ')),
                                      ' ') AS text
                    FROM (SELECT name, address FROM {_PARTICIPANTS}
                          WHERE message_id = m.id AND m.search_terms IS NULL
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
