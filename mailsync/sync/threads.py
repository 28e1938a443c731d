"""Thread assignment for a batch of new messages of one owner (all their accounts together).

How a message finds its conversation, in order:
1. Message-IDs: its own id, In-Reply-To and References are looked up in ThreadReference, which holds
   every id the owner's mail carries or refers to. So a reply that arrives before its parent, a parent
   that arrives after its replies, and two replies to a message that is not in the mailbox all meet in
   one thread. Messages of the same batch are linked the same way (a reply and its parent together).
2. The provider's thread id (Gmail X-GM-THRID), when the sync engine passes one.
3. Subject fallback, only for a message that looks like a reply or forward (prefix such as "Re:",
   "AW:", "回复:", or an In-Reply-To/References that matched nothing) and found nothing above: a thread
   with the same normalised subject that shares at least one participant other than the owner, within
   SUBJECT_WINDOW of the message. Same subject with different people stays apart.
4. Otherwise a new thread, with the owner's default visibility (P1: private without MailSettings).

When one message connects two existing threads (its parent was in one, a sibling reply in another),
they are merged into the oldest; a merged thread is private if any part of it was private, so a merge
never shares mail the owner kept private.

Everything here runs inside the ingestion transaction, under the owner's ingestion lock (ingest.py),
with a constant number of queries per batch (plus a few per merge, which are rare).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.db import connection, models
from django.db.models import Count, Max, Min, OuterRef, Q, Subquery
from django.utils import timezone

from mailsync.models import EmailMessage, EmailThread, MailSettings, MessageParticipant, ThreadLink, ThreadReference

from .parsing import ParsedEmail, message_id_key

SUBJECT_WINDOW = timedelta(days=60)
SUBJECT_MAX = 998

# Reply / forward prefixes of the mail clients our users meet (English, German, Nordic, Dutch, French,
# Spanish, Italian, Polish, Turkish, Hungarian, Greek, Russian, Chinese, Korean, Japanese, Arabic,
# Hebrew), optionally numbered ("Re[2]:", "RE(3):"), with ASCII or full-width colon.
_REPLY_WORDS = (
    "re|fw|fwd|aw|wg|sv|vs|vb|antw|antwort|doorst|tr|trans|rv|enc|res|rif|r|i|odp|pd|ynt|ilt|"
    "vá|válasz|továbbítás|hv|πρθ|απ|σχετ|отв|ответ|пересл|fwd?|回复|回覆|答复|答覆|转发|轉寄|转|"
    "답장|회신|전달|返信|転送|رد|إعادة توجيه|תגובה|השב|הועבר"
)
_REPLY_PREFIX = re.compile(rf"^\s*(?:{_REPLY_WORDS})\s*(?:\[\d+\]|\(\d+\))?\s*[:\uff1a]\s*", re.I)
_TAG_PREFIX = re.compile(r"^\s*\[[^\]]{1,60}\]\s*")


def normalize_subject(subject: str) -> str:
    """'RE: AW: [sales] Re[2]: Offer  2025' -> 'offer 2025' (for matching only, never shown)."""
    text = subject or ""
    while True:
        stripped = _REPLY_PREFIX.sub("", text, count=1)
        stripped = _TAG_PREFIX.sub("", stripped, count=1)
        if stripped == text:
            break
        text = stripped
    return " ".join(text.split()).casefold()[:SUBJECT_MAX]


def has_reply_prefix(subject: str) -> bool:
    text = _TAG_PREFIX.sub("", subject or "")
    return bool(_REPLY_PREFIX.match(text))


@dataclass
class ThreadCandidate:
    """What threading needs to know about one new message."""

    parsed: ParsedEmail
    date: datetime
    provider_thread_id: str = ""
    keys: list[str] = field(default_factory=list)
    normalized_subject: str = ""
    looks_like_reply: bool = False
    addresses: set[str] = field(default_factory=set)


@dataclass
class ThreadAssignment:
    thread_ids: list[int]
    # Threads that got messages (new or existing), and existing threads merged away (deleted).
    touched: set[int]
    merged_away: set[int]
    # The threads created here: their count, first and last date and subject are already those of their
    # messages (when the messages are stored with the given dates), so refresh_thread_stats can skip them.
    created: set[int] = field(default_factory=set)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[tuple, tuple] = {}

    def find(self, node: tuple) -> tuple:
        self.parent.setdefault(node, node)
        root = node
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[node] != root:
            self.parent[node], node = root, self.parent[node]
        return root

    def union(self, a: tuple, b: tuple) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[root_b] = root_a


def assign_threads(
    owner,
    parsed_messages: Sequence[ParsedEmail],
    *,
    dates: Sequence[datetime] | None = None,
    provider_thread_ids: Sequence[str] | None = None,
    own_addresses: Iterable[str] = (),
) -> ThreadAssignment:
    """Find or create the thread of each new message (same order). Call inside the ingest transaction.

    `dates` are the dates ingestion stores (default: the Date header, else now); `own_addresses` are the
    owner's addresses, which never count as a shared participant for the subject fallback.
    """
    own = {address.lower() for address in own_addresses}
    if dates is None:
        now = timezone.now()
        dates = [parsed.date or now for parsed in parsed_messages]
    candidates = [
        _candidate(parsed, date, (provider_thread_ids or [""] * len(parsed_messages))[index], own)
        for index, (parsed, date) in enumerate(zip(parsed_messages, dates, strict=True))
    ]
    if not candidates:
        return ThreadAssignment([], set(), set())

    all_keys = {key for candidate in candidates for key in candidate.keys}
    known = dict(ThreadReference.objects.filter(owner=owner, key__in=all_keys).values_list("key", "thread_id"))
    provider_ids = {candidate.provider_thread_id for candidate in candidates} - {""}
    by_provider_id = (
        dict(
            EmailThread.objects.filter(owner=owner, provider_thread_id__in=provider_ids).values_list(
                "provider_thread_id", "pk"
            )
        )
        if provider_ids
        else {}
    )

    groups = _UnionFind()
    first_holder: dict[str, tuple] = {}
    for index, candidate in enumerate(candidates):
        node = ("new", index)
        groups.find(node)
        for key in candidate.keys:
            if key in known:
                groups.union(("thread", known[key]), node)
            if key in first_holder:
                groups.union(first_holder[key], node)
            else:
                first_holder[key] = node
        if candidate.provider_thread_id:
            if candidate.provider_thread_id in by_provider_id:
                groups.union(("thread", by_provider_id[candidate.provider_thread_id]), node)
            provider_node = ("provider", candidate.provider_thread_id)
            groups.union(provider_node, node)

    _subject_fallback(owner, candidates, groups)

    members: dict[tuple, list[tuple]] = defaultdict(list)
    for node in list(groups.parent):
        members[groups.find(node)].append(node)

    thread_of_group: dict[tuple, int] = {}
    merges: list[tuple[int, list[int]]] = []
    new_groups: list[tuple[tuple, list[int]]] = []
    for root, nodes in members.items():
        existing = sorted(node[1] for node in nodes if node[0] == "thread")
        indexes = sorted(node[1] for node in nodes if node[0] == "new")
        if not indexes:
            continue
        if existing:
            thread_of_group[root] = existing[0]
            if len(existing) > 1:
                merges.append((existing[0], existing[1:]))
        else:
            new_groups.append((root, indexes))

    if new_groups:
        visibility = _default_visibility(owner)
        threads = []
        for _root, indexes in new_groups:
            # What refresh_thread_stats would compute once the messages are stored (the subject of the
            # earliest by date, then by id: ids follow the order of `candidates`), written with the row.
            first = min(indexes, key=lambda i: (candidates[i].date, i))
            subject = candidates[first].parsed.subject
            threads.append(
                EmailThread(
                    owner=owner,
                    subject=subject[:SUBJECT_MAX],
                    normalized_subject=normalize_subject(subject),
                    message_count=len(indexes),
                    first_message_at=candidates[first].date,
                    last_message_at=max(candidates[i].date for i in indexes),
                    visibility=visibility,
                    provider_thread_id=next(
                        (candidates[i].provider_thread_id for i in indexes if candidates[i].provider_thread_id), ""
                    )[:100],
                )
            )
        bulk_insert(EmailThread, threads)
        for (root, _indexes), thread in zip(new_groups, threads, strict=True):
            thread_of_group[root] = thread.pk

    merged_away: set[int] = set()
    for target, others in merges:
        merge_threads(target, others)
        merged_away.update(others)

    thread_ids = [thread_of_group[groups.find(("new", index))] for index in range(len(candidates))]
    _remember_keys(owner, candidates, thread_ids, known)
    return ThreadAssignment(thread_ids=thread_ids, touched=set(thread_ids), merged_away=merged_away)


def merge_threads(target_id: int, other_ids: Sequence[int]) -> None:
    """Move everything of `other_ids` into `target_id` and delete them (a message joined them)."""
    others = [pk for pk in other_ids if pk != target_id]
    if not others:
        return
    EmailMessage.objects.filter(thread_id__in=others).update(thread_id=target_id)
    ThreadReference.objects.filter(thread_id__in=others).update(thread_id=target_id)
    # Links: keep the target's link when both threads have one for the same record (it holds the user's
    # latest decision for the bigger conversation); move the others over.
    target_links = set()
    for link in ThreadLink.objects.filter(thread_id=target_id):
        target_links.add(_link_target(link))
    for link in ThreadLink.objects.filter(thread_id__in=others).order_by("pk"):
        key = _link_target(link)
        if key in target_links:
            continue
        link.thread_id = target_id
        link.save(update_fields=["thread"])
        target_links.add(key)
    private = EmailThread.Visibility.PRIVATE
    if EmailThread.objects.filter(pk__in=others, visibility=private).exists():
        EmailThread.objects.filter(pk=target_id).update(visibility=private)
    EmailThread.objects.filter(pk__in=others).delete()


def refresh_thread_stats(thread_ids: Iterable[int]) -> None:
    """Recompute message_count, first/last_message_at and subject (of the earliest message) of these
    threads from their live (not deleted) messages, and write the threads whose values changed.

    Subjects change often during an initial sync, which takes the newest mail first: a thread starts
    with a reply's subject, its parent comes later. On PostgreSQL one statement computes the values and
    writes the threads whose subject stays (most of them) without sending them to Python; the threads
    whose subject changes come back for their normalized subject (normalize_subject) and are written by
    a second statement. Elsewhere one SELECT and one UPDATE. Each thread is written at most once."""
    ids = sorted(set(thread_ids))
    if not ids:
        return
    rows = []
    for pk, count, first, last, subject, normalized, wanted_count, wanted_first, wanted_last, earliest in _stats(ids):
        wanted = (wanted_count or 0, wanted_first, wanted_last)
        if earliest is not None and earliest[:SUBJECT_MAX] != subject:
            subject = earliest[:SUBJECT_MAX]
            normalized = normalize_subject(subject)
        elif (count, first, last) == wanted:
            continue
        rows.append((pk, *wanted, subject, normalized))
    _update_threads(rows)


# Per thread: its stored values, then from its live messages the count, first and last date (None without
# any) and the earliest subject; through the (thread_id, date) index (LATERAL): a GROUP BY over
# `thread_id = ANY(...)` was planned as a scan of the whole message table.
_STATS_SQL = """
    SELECT t.id, t.message_count, t.first_message_at, t.last_message_at, t.subject, t.normalized_subject,
           s.n, s.f, s.l, e.subject AS earliest
    FROM {threads} t
    CROSS JOIN LATERAL (SELECT count(*) AS n, min(date) AS f, max(date) AS l FROM {messages} m
                        WHERE m.thread_id = t.id AND m.deleted_at IS NULL) s
    LEFT JOIN LATERAL (SELECT subject FROM {messages} m WHERE m.thread_id = t.id AND m.deleted_at IS NULL
                       ORDER BY date, id LIMIT 1) e ON true
    WHERE t.id = ANY(%(ids)s)
"""


def _stats(ids: list[int]) -> list[tuple]:
    """The rows refresh_thread_stats compares: (pk, message_count, first/last_message_at, subject,
    normalized_subject, wanted count, first and last date, earliest subject), on PostgreSQL only those
    of threads whose subject changes, the others written here already."""
    if connection.vendor == "postgresql":
        threads, messages = (connection.ops.quote_name(model._meta.db_table) for model in (EmailThread, EmailMessage))
        stats = _STATS_SQL.format(threads=threads, messages=messages)
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                WITH wanted AS MATERIALIZED ({stats}),
                renamed AS (
                    SELECT * FROM wanted WHERE earliest IS NOT NULL AND left(earliest, %(max)s) <> subject
                ),
                counted AS (
                    UPDATE {threads} t SET message_count = w.n, first_message_at = w.f, last_message_at = w.l
                    FROM wanted w
                    WHERE t.id = w.id AND w.id NOT IN (SELECT id FROM renamed)
                      AND (w.message_count, w.first_message_at, w.last_message_at) IS DISTINCT FROM (w.n, w.f, w.l)
                )
                SELECT * FROM renamed
                """,  # noqa: S608 (table names from the models; values are parameters)
                {"ids": ids, "max": SUBJECT_MAX},
            )
            return cursor.fetchall()
    live = EmailMessage.objects.filter(thread=OuterRef("pk"), deleted_at__isnull=True).order_by()
    per_thread = live.values("thread")
    return list(
        EmailThread.objects.filter(pk__in=ids)
        .annotate(
            wanted_count=Subquery(per_thread.annotate(n=Count("pk")).values("n")[:1]),
            wanted_first=Subquery(per_thread.annotate(d=Min("date")).values("d")[:1]),
            wanted_last=Subquery(per_thread.annotate(d=Max("date")).values("d")[:1]),
            earliest=Subquery(live.order_by("date", "pk").values("subject")[:1]),
        )
        .values_list(
            "pk",
            "message_count",
            "first_message_at",
            "last_message_at",
            "subject",
            "normalized_subject",
            "wanted_count",
            "wanted_first",
            "wanted_last",
            "earliest",
        )
    )


_STAT_FIELDS = ("message_count", "first_message_at", "last_message_at", "subject", "normalized_subject")


def _update_threads(rows: list[tuple]) -> None:
    """(pk, message_count, first_message_at, last_message_at, subject, normalized_subject) -> the threads.
    On PostgreSQL one UPDATE from arrays (Django's bulk_update builds a CASE per row and field in Python,
    which took most of the time of this function)."""
    if not rows:
        return
    if connection.vendor != "postgresql":
        EmailThread.objects.bulk_update(
            [EmailThread(pk=row[0], **dict(zip(_STAT_FIELDS, row[1:], strict=True))) for row in rows],
            list(_STAT_FIELDS),
            batch_size=500,
        )
        return
    columns = list(zip(*rows, strict=True))
    table = connection.ops.quote_name(EmailThread._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {table} t SET message_count = v.n, first_message_at = v.f, last_message_at = v.l,
                                 subject = v.s, normalized_subject = v.ns
            FROM unnest(%s::bigint[], %s::integer[], %s::timestamptz[], %s::timestamptz[], %s::text[], %s::text[])
                 AS v(id, n, f, l, s, ns)
            WHERE t.id = v.id
            """,  # noqa: S608 (the table name comes from the model; values are parameters)
            [list(column) for column in columns],
        )


def bulk_insert(model: type[models.Model], objects: Sequence[models.Model]) -> None:
    """INSERT new model instances and set their primary keys (see insert_rows)."""
    if not objects:
        return
    fields = [field for field in model._meta.concrete_fields if not field.primary_key]
    rows = [[field.pre_save(obj, True) for field in fields] for obj in objects]
    ids = insert_rows(model, [field.attname for field in fields], rows, return_ids=True)
    for obj, pk in zip(objects, ids, strict=True):
        obj.pk = pk
        obj._state.adding = False
        obj._state.db = connection.alias


def insert_rows(
    model: type[models.Model], columns: Sequence[str], rows: Sequence[Sequence], *, return_ids: bool = False
) -> list[int]:
    """INSERT many rows given as plain values for `columns` (attnames); every other column gets its
    field default (auto_now_add: now). Returns the new ids when asked.

    On PostgreSQL through COPY, several times faster than bulk_create for wide rows (no SQL text, no
    per-value parameters; ids come from the table's sequence first); elsewhere (SQLite in `make run`)
    through bulk_create. Values must be what the column stores (str, int, bool, aware datetime, None).
    """
    if not rows:
        return []
    meta = model._meta
    given = {name: index for index, name in enumerate(columns)}
    fields = [field for field in meta.concrete_fields if not field.primary_key]
    missing = [field for field in fields if field.attname not in given]
    if connection.vendor != "postgresql":
        objects = [model(**dict(zip(columns, row, strict=True))) for row in rows]
        model.objects.bulk_create(objects, batch_size=500)
        return [obj.pk for obj in objects]
    now = timezone.now()
    # Defaults are computed once per call, except callable ones (uuid4 ...), which differ per row.
    per_row = [field for field in missing if field.has_default() and callable(field.default)]
    missing = [field for field in missing if field not in per_row] + per_row
    constants = [
        field.get_db_prep_save(now if getattr(field, "auto_now_add", False) else field.get_default(), connection)
        for field in missing[: len(missing) - len(per_row)]
    ]
    order = [given[field.attname] for field in fields if field.attname in given]
    columns_in_order = [field for field in fields if field.attname in given] + missing
    ids: list[int] = []
    with connection.cursor() as cursor:
        if return_ids:
            cursor.execute(
                "SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)",
                [meta.db_table, meta.pk.column, len(rows)],
            )
            ids = [pk for (pk,) in cursor.fetchall()]
            columns_in_order = [meta.pk, *columns_in_order]
        table = connection.ops.quote_name(meta.db_table)
        column_list = ", ".join(connection.ops.quote_name(field.column) for field in columns_in_order)
        types = _binary_copy_types(columns_in_order)
        statement = f"COPY {table} ({column_list}) FROM STDIN" + (" (FORMAT BINARY)" if types else "")
        # A naive datetime is UTC, as the text format reads it (Django's connections use UTC).
        naive_checks = [i for i, name in enumerate(types or ()) if name == "timestamptz"]
        with connection.wrap_database_errors, cursor.cursor.copy(statement) as copy:
            if types:
                copy.set_types(types)
            for number, row in enumerate(rows):
                values = [row[index] for index in order]
                values.extend(constants)
                values.extend(field.get_db_prep_save(field.get_default(), connection) for field in per_row)
                if return_ids:
                    values.insert(0, ids[number])
                for index in naive_checks:
                    value = values[index]
                    if value is not None and value.tzinfo is None:
                        values[index] = value.replace(tzinfo=UTC)
                copy.write_row(values)
    return ids


# Column types COPY can receive in PostgreSQL's binary format from psycopg's dumpers of the values
# insert_rows takes: no text escaping on either side and no parsing of numbers and dates by the server.
_BINARY_COPY_TYPES = {
    "bigint": "int8",
    "integer": "int4",
    "smallint": "int2",
    "boolean": "bool",
    "text": "text",
    "timestamp with time zone": "timestamptz",
}


def _binary_copy_types(fields: Sequence[models.Field]) -> list[str] | None:
    """psycopg type names for a binary COPY into these columns; None (text COPY) if one has another type."""
    types = []
    for column in fields:
        db_type = column.db_type(connection) or ""
        name = "text" if db_type.startswith("varchar(") else _BINARY_COPY_TYPES.get(db_type)
        if name is None:
            return None
        types.append(name)
    return types


# --- internals ------------------------------------------------------------------------------------


def _candidate(parsed: ParsedEmail, date: datetime, provider_thread_id: str, own: set[str]) -> ThreadCandidate:
    keys = [message_id_key(message_id) for message_id in parsed.thread_ids()]
    return ThreadCandidate(
        parsed=parsed,
        date=date,
        provider_thread_id=provider_thread_id or "",
        keys=keys,
        normalized_subject=normalize_subject(parsed.subject),
        looks_like_reply=has_reply_prefix(parsed.subject) or bool(parsed.in_reply_to or parsed.references),
        addresses=parsed.addresses() - own,
    )


def _subject_fallback(owner, candidates: list[ThreadCandidate], groups: _UnionFind) -> None:
    """Join lonely replies to a thread with the same subject and a shared participant (two queries)."""
    sizes: dict[tuple, int] = defaultdict(int)
    for node in list(groups.parent):
        sizes[groups.find(node)] += 1
    lonely = [
        index
        for index, candidate in enumerate(candidates)
        if candidate.looks_like_reply
        and candidate.normalized_subject
        and candidate.addresses
        and sizes[groups.find(("new", index))] == 1
    ]
    if not lonely:
        return
    subjects = {candidates[index].normalized_subject for index in lonely}
    earliest = min(candidates[index].date for index in lonely) - SUBJECT_WINDOW
    threads = list(
        EmailThread.objects.filter(owner=owner, normalized_subject__in=subjects)
        .filter(Q(last_message_at__gte=earliest) | Q(last_message_at__isnull=True))
        .values_list("pk", "normalized_subject", "first_message_at", "last_message_at")
    )
    addresses = set().union(*(candidates[index].addresses for index in lonely))
    thread_addresses: dict[int, set[str]] = defaultdict(set)
    if threads:
        for thread_id, address in (
            MessageParticipant.objects.filter(message__thread_id__in=[row[0] for row in threads], address__in=addresses)
            .values_list("message__thread_id", "address")
            .distinct()
        ):
            thread_addresses[thread_id].add(address)

    by_subject: dict[str, list[int]] = defaultdict(list)
    for index, candidate in enumerate(candidates):
        if candidate.normalized_subject in subjects:
            by_subject[candidate.normalized_subject].append(index)

    for index in lonely:
        candidate = candidates[index]
        best: tuple[datetime, tuple] | None = None
        for thread_id, subject, first_at, last_at in threads:
            if subject != candidate.normalized_subject or not (thread_addresses[thread_id] & candidate.addresses):
                continue
            if not _within_window(candidate.date, first_at, last_at):
                continue
            if best is None or (last_at and last_at > best[0]):
                best = (last_at or candidate.date, ("thread", thread_id))
        # Earlier messages of this batch with the same subject and people (a thread that starts now).
        for other_index in by_subject[candidate.normalized_subject]:
            other = candidates[other_index]
            if other_index == index:
                continue
            if other.date > candidate.date or (other.date == candidate.date and other_index > index):
                continue
            if not (other.addresses & candidate.addresses) or not _within_window(
                candidate.date, other.date, other.date
            ):
                continue
            if best is None or other.date > best[0]:
                best = (other.date, ("new", other_index))
        if best is not None:
            groups.union(best[1], ("new", index))


def _within_window(date: datetime, first_at: datetime | None, last_at: datetime | None) -> bool:
    if first_at is None or last_at is None:
        return True
    return first_at - SUBJECT_WINDOW <= date <= last_at + SUBJECT_WINDOW


def _remember_keys(owner, candidates: list[ThreadCandidate], thread_ids: list[int], known: dict[str, int]) -> None:
    # `known` holds every key of the batch already stored for this owner, read under the owner's
    # ingestion lock, so none of these rows can exist yet.
    rows = {}
    for candidate, thread_id in zip(candidates, thread_ids, strict=True):
        for key in candidate.keys:
            if key not in known and key not in rows:
                rows[key] = (owner.pk, key, thread_id)
    insert_rows(ThreadReference, ("owner_id", "key", "thread_id"), list(rows.values()))


def _default_visibility(owner) -> str:
    visibility = MailSettings.objects.filter(user=owner).values_list("default_visibility", flat=True).first()
    return visibility or EmailThread.Visibility.PRIVATE


def _link_target(link: ThreadLink) -> tuple[str, int]:
    for name in ("person", "organization", "deal", "lead", "project"):
        target_id = getattr(link, f"{name}_id")
        if target_id:
            return name, target_id
    return "none", link.pk
