"""Ingestion pipeline: raw messages (fetched over IMAP or imported from files) -> stored mail, exactly once.

    ingest_batch(account, folder, items, uidvalidity=...)   one folder's fetched batch
    ingest_raw(account, raws)                               files (import_mail): no server location

Steps of a batch:
1. Parse every message (pure, outside any transaction; or beforehand in a process pool: `parsed=`).
2. Outside the transaction, write attachment files (and the raw bytes of messages that did not parse)
   for the messages not stored yet. File names are deterministic (account, message_key, part number),
   so a retry after a crash rewrites the same files instead of leaving orphans behind.
3. One short transaction, under a per-owner advisory lock (so two workers, or two accounts of one
   owner, never thread or insert the same mail twice):
   - messages already stored (unique (account, message_key)) only get their location (folder,
     uidvalidity, uid) added or refreshed and their flags updated: one mail in two folders is one
     EmailMessage with two MessageLocations;
   - new messages are threaded (threads.assign_threads) and inserted in bulk (COPY), with their
     participants (every one: large recipient lists are kept, S7), attachments and locations;
   - thread counters are refreshed, the caller's `before_commit(result)` runs (the sync engine
     advances its folder cursor there, in the same transaction), and `on_threads_changed` is
     scheduled with transaction.on_commit.
A constant number of queries per batch, not per message. A message that does not parse is stored
with parse_error and its raw bytes, and never stops the batch. If an insert still conflicts (another
code path inserted the same mail without the lock), the transaction is retried and finds it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.core.exceptions import SuspiciousFileOperation
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from django.utils.text import get_valid_filename

from crm.addresses import normalize_email
from mailsync.linking import blocking
from mailsync.linking import tasks as linking_tasks
from mailsync.linking.rules import own_addresses
from mailsync.mailboxes.locks import lock_owner_mail
from mailsync.mailboxes.placement import place, refresh_mailboxes
from mailsync.models import (
    Attachment,
    EmailAccount,
    EmailMessage,
    MailFolder,
    MessageLocation,
    MessageParticipant,
)

from .parsing import SENT, ParsedEmail, parse_many, parse_message
from .threads import assign_threads, insert_rows, refresh_thread_stats

logger = logging.getLogger(__name__)

# Ingestion is serialised per owner by mailsync.mailboxes.locks.lock_owner_mail (pg_advisory_xact_lock).
INSERT_ATTEMPTS = 3
# A Date header further in the future than this is not believed (spam, broken clocks): it would pin
# the thread to the top of every list. Arrival time is used instead.
FUTURE_TOLERANCE = timedelta(days=1)
MAX_INT = 2**31 - 1
FILE_WRITERS = 4


@dataclass(slots=True)
class FetchedMessage:
    """One message as the sync engine fetched it (or as import_mail read it: uid None)."""

    uid: int | None
    flags: tuple[str, ...] = ()
    internal_date: datetime | None = None
    raw: bytes = b""
    # Gmail X-GM-THRID (or another provider's thread id), when known.
    provider_thread_id: str = ""


@dataclass
class IngestResult:
    created: int = 0
    existing: int = 0
    # Stored, but with parse_error (raw bytes kept). Counted in `created` too.
    failed: int = 0
    locations_added: int = 0
    # EmailMessage pk of every item, in the order of the items.
    message_ids: list[int] = field(default_factory=list)
    created_ids: list[int] = field(default_factory=list)
    # Threads that received messages in this batch (for linking / blocking, see on_threads_changed).
    thread_ids: set[int] = field(default_factory=set)

    def add(self, other: IngestResult) -> None:
        self.created += other.created
        self.existing += other.existing
        self.failed += other.failed
        self.locations_added += other.locations_added
        self.message_ids.extend(other.message_ids)
        self.created_ids.extend(other.created_ids)
        self.thread_ids |= other.thread_ids


def on_threads_changed(thread_ids: set[int]) -> None:
    """THE place where follow-up work for threads that received mail starts, after the commit.

    Called by ingestion through transaction.on_commit with every thread a batch touched (new threads
    and existing ones with new messages). Linking (the task mailsync.linking.tasks.link_threads) and
    blocked-address flags (mailsync.linking.blocking.recompute_blocked_for_threads) plug in here; both are
    idempotent, so a crash between commit and this call is repaired by the next sync or a relink.
    """
    ids = sorted(thread_ids)
    if not ids:
        return
    # Blocked flags are cheap (two set-based UPDATEs) and hide mail at once; linking can take longer
    # on a big batch, so it runs as its own task (inline in tests and with CELERY_TASK_ALWAYS_EAGER).
    blocking.recompute_blocked_for_threads(ids)
    linking_tasks.link_threads.delay(ids)


def own_addresses_for(account: EmailAccount) -> frozenset[str]:
    """Every address of the account's owner: all their accounts and aliases, and their login."""
    return frozenset(own_addresses(account.user) | {normalize_email(account.email_address)} - {""})


def as_fetched(item) -> FetchedMessage:
    """Accept FetchedMessage, (uid, flags, internaldate, raw[, provider_thread_id]) or bare bytes."""
    if isinstance(item, FetchedMessage):
        return item
    if isinstance(item, bytes | bytearray | memoryview):
        return FetchedMessage(uid=None, raw=bytes(item))
    uid, flags, internal_date, raw, *rest = item
    return FetchedMessage(
        uid=uid,
        flags=tuple(flags or ()),
        internal_date=internal_date,
        raw=raw,
        provider_thread_id=str(rest[0]) if rest and rest[0] else "",
    )


def parse_items(items: Sequence[FetchedMessage], own_addresses: frozenset[str]) -> list[ParsedEmail]:
    return [parse_message(item.raw, own_addresses=own_addresses) for item in items]


class ParsePool:
    """Parses batches in worker processes, so the caller can fetch or write the previous batch meanwhile.

    Parsing is pure CPU work (mailsync.parsing imports no Django), so workers come from a forkserver:
    no database connection, lock or thread of the parent is inherited.

        with ParsePool() as pool:
            pending = pool.submit(raws_1, own)
            ...                                   # fetch the next batch
            ingest_batch(account, folder, items_1, uidvalidity=uv, parsed=pending.result())
    """

    def __init__(self, workers: int | None = None, chunk_size: int = 50):
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["mailsync.sync.parsing"])
        self.chunk_size = chunk_size
        # Default: one core is left to the writing process (and PostgreSQL, often on the same machine);
        # on 2 cores one parser already outpaces the database writes.
        workers = workers or max(1, (os.cpu_count() or 2) - 1)
        self._executor = ProcessPoolExecutor(max_workers=workers, mp_context=context)

    def submit(self, raws: Sequence[bytes], own_addresses: frozenset[str]) -> PendingParse:
        chunks = [list(raws[start : start + self.chunk_size]) for start in range(0, len(raws), self.chunk_size)]
        return PendingParse([self._executor.submit(parse_many, chunk, own_addresses) for chunk in chunks])

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ParsePool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class PendingParse:
    def __init__(self, futures):
        self._futures = futures

    def result(self) -> list[ParsedEmail]:
        parsed: list[ParsedEmail] = []
        for future in self._futures:
            parsed.extend(future.result())
        return parsed


def ingest_raw(
    account: EmailAccount,
    raws: Iterable[bytes],
    *,
    flags: Sequence[str] = (),
    parsed: Sequence[ParsedEmail] | None = None,
    own_addresses: frozenset[str] | None = None,
) -> IngestResult:
    """Store messages that come from files (no folder, no UID). Same identity rules as a sync."""
    items = [FetchedMessage(uid=None, flags=tuple(flags), raw=raw) for raw in raws]
    return ingest_batch(account, None, items, parsed=parsed, own_addresses=own_addresses)


def ingest_batch(
    account: EmailAccount,
    folder: MailFolder | None,
    items: Iterable,
    *,
    uidvalidity: int | None = None,
    parsed: Sequence[ParsedEmail] | None = None,
    own_addresses: frozenset[str] | None = None,
    before_commit: Callable[[IngestResult], None] | None = None,
) -> IngestResult:
    """Store a batch of messages of one folder (or of no folder, for imports), idempotently.

    `items`: FetchedMessage or (uid, flags, internaldate, raw[, provider_thread_id]) tuples.
    `uidvalidity`: of the folder when the batch was fetched (default: folder.uidvalidity).
    `parsed`: ParsedEmail per item when parsing was done elsewhere (ParsePool), else parsed here.
    `before_commit(result)`: runs inside the transaction after the writes (advance cursors there).
    Do not call this inside a transaction that is held open across network I/O.
    """
    fetched = [as_fetched(item) for item in items]
    if folder is not None:
        uidvalidity = folder.uidvalidity if uidvalidity is None else uidvalidity
        if uidvalidity is None:
            raise ValueError("ingest_batch needs the folder's UIDVALIDITY to record locations")
        if any(item.uid is None for item in fetched):
            raise ValueError("every fetched message needs its UID")
    own = own_addresses if own_addresses is not None else own_addresses_for(account)
    if parsed is None:
        parsed = parse_items(fetched, own)
    elif len(parsed) != len(fetched):
        raise ValueError("parsed and items differ in length")
    if not fetched:
        return IngestResult()

    keys = {item.message_key for item in parsed}
    stored_before = set(
        EmailMessage.objects.filter(account=account, message_key__in=keys).values_list("message_key", flat=True)
    )
    files = _FileWriter(account)
    for item, parsed_item in zip(fetched, parsed, strict=True):
        if parsed_item.parse_error:
            files.remember_raw(parsed_item.message_key, item.raw)
    files.write_new(parsed, skip=stored_before)

    for attempt in range(1, INSERT_ATTEMPTS + 1):
        try:
            return _write_batch(account, folder, uidvalidity, fetched, parsed, own, files, before_commit)
        except IntegrityError:
            if attempt == INSERT_ATTEMPTS:
                raise
            logger.warning("ingest of %s message(s) for account %s conflicted; retrying", len(fetched), account.pk)
    raise AssertionError("unreachable")


# --- the transaction ------------------------------------------------------------------------------


def _compress_bodies_with_lz4() -> None:
    """Bodies are TOASTed; lz4 compresses them several times faster than the default pglz (measured:
    message inserts take half the time). SET LOCAL: this transaction only, no schema change; values
    remember their method, so reading needs nothing. Skipped when the server lacks lz4."""
    global _LZ4_AVAILABLE
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        if _LZ4_AVAILABLE is None:
            cursor.execute("SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'")
            row = cursor.fetchone()
            _LZ4_AVAILABLE = bool(row and row[0])
        if _LZ4_AVAILABLE:
            cursor.execute("SELECT set_config('default_toast_compression', 'lz4', true)")


_LZ4_AVAILABLE: bool | None = None


def _write_batch(
    account: EmailAccount,
    folder: MailFolder | None,
    uidvalidity: int | None,
    fetched: list[FetchedMessage],
    parsed: Sequence[ParsedEmail],
    own: frozenset[str],
    files: _FileWriter,
    before_commit: Callable[[IngestResult], None] | None,
) -> IngestResult:
    now = timezone.now()
    result = IngestResult()
    with transaction.atomic():
        lock_owner_mail(account.user_id)
        keys = [item.message_key for item in parsed]
        stored = {
            row[0]: row[1:]
            for row in EmailMessage.objects.filter(account=account, message_key__in=set(keys)).values_list(
                "message_key", "pk", "is_read", "is_flagged", "is_draft"
            )
        }
        new_positions: list[int] = []
        claimed: set[str] = set()
        for position, key in enumerate(keys):
            if key not in stored and key not in claimed:
                claimed.add(key)
                new_positions.append(position)

        dates = [_message_date(parsed[p], fetched[p], now) for p in new_positions]
        assignment = assign_threads(
            account.user,
            [parsed[p] for p in new_positions],
            dates=dates,
            provider_thread_ids=[fetched[p].provider_thread_id for p in new_positions],
            own_addresses=own,
        )
        files.write_new([parsed[p] for p in new_positions], skip=set())  # only what step 2 skipped
        sent_folder = folder is not None and folder.role in (MailFolder.Role.SENT, MailFolder.Role.DRAFTS)
        rows = [
            _message_row(account, parsed[p], fetched[p], thread_id, date, files, sent_folder, now, folder)
            for p, thread_id, date in zip(new_positions, assignment.thread_ids, dates, strict=True)
        ]
        if rows:
            _compress_bodies_with_lz4()
        created_ids = insert_rows(EmailMessage, MESSAGE_COLUMNS, rows, return_ids=True)

        pk_by_key = {key: row[0] for key, row in stored.items()}
        pk_by_key.update((keys[p], pk) for p, pk in zip(new_positions, created_ids, strict=True))
        new_parsed = [parsed[p] for p in new_positions]
        _insert_children(created_ids, new_parsed, files)

        if folder is not None:
            result.locations_added = _upsert_locations(folder, uidvalidity, fetched, keys, pk_by_key)
            _update_flags(fetched, keys, stored)

        refresh_thread_stats(assignment.touched)
        result.created = len(created_ids)
        result.failed = sum(1 for item in new_parsed if item.parse_error)
        result.existing = len(fetched) - len(created_ids)
        result.message_ids = [pk_by_key[key] for key in keys]
        result.created_ids = created_ids
        result.thread_ids = set(assignment.touched)
        if before_commit is not None:
            before_commit(result)
        refresh_mailboxes(result.message_ids, thread_ids=result.thread_ids)
        touched = set(result.thread_ids)
        transaction.on_commit(lambda: on_threads_changed(touched))
    for pk, item in zip(created_ids, new_parsed, strict=True):
        if item.parse_error:
            logger.info("message %s of account %s kept raw: %s", pk, account.pk, item.parse_error)
    return result


def _message_date(parsed: ParsedEmail, item: FetchedMessage, now: datetime) -> datetime:
    arrival = _aware(item.internal_date)
    date = parsed.date
    if date is None or date > now + FUTURE_TOLERANCE:
        date = arrival or now
    return date


def _aware(value: datetime | None) -> datetime | None:
    # imapclient returns INTERNALDATE naive in local time (normalise_times=True); Django sets TZ.
    if value is None:
        return None
    return timezone.make_aware(value) if timezone.is_naive(value) else value


def _flag_set(flags: Iterable) -> set[str]:
    return {flag.decode("ascii", "replace") if isinstance(flag, bytes) else str(flag) for flag in flags}


MESSAGE_COLUMNS = (
    "account_id",
    "thread_id",
    "message_key",
    "message_id",
    "in_reply_to",
    "references",
    "subject",
    "from_name",
    "from_address",
    "date",
    "internal_date",
    "snippet",
    "body_text",
    "body_html",
    "has_remote_images",
    "direction",
    "size",
    "has_attachments",
    "recipient_count",
    "is_read",
    "is_flagged",
    "is_draft",
    "parse_error",
    "raw",
    "created_at",
    "mailbox",
)


def _message_row(
    account: EmailAccount,
    parsed: ParsedEmail,
    item: FetchedMessage,
    thread_id: int,
    date: datetime,
    files: _FileWriter,
    sent_folder: bool,
    now: datetime,
    folder: MailFolder | None = None,
) -> tuple:
    """Column values in MESSAGE_COLUMNS order (plain values: rows go to COPY, no model instances)."""
    flags = {flag.lower() for flag in _flag_set(item.flags)}
    sent = parsed.direction == SENT or sent_folder
    direction = EmailMessage.Direction.SENT.value if sent else EmailMessage.Direction.RECEIVED.value
    # Its list (Inbox, Sent, ...) from the start, so that refresh_mailboxes need not rewrite the row.
    roles = {folder.role} if folder is not None else set()
    mailbox = place(restored_to_inbox=False, is_archived=False, direction=direction, roles=roles)
    return (
        account.pk,
        thread_id,
        parsed.message_key,
        parsed.message_id[:998],
        parsed.in_reply_to[:998],
        " ".join(parsed.references),
        parsed.subject,
        parsed.from_name[:300],
        parsed.from_address[:320],
        date,
        _aware(item.internal_date),
        parsed.snippet[:300],
        parsed.body_text,
        parsed.body_html,
        parsed.has_remote_images,
        EmailMessage.Direction.SENT.value if sent else EmailMessage.Direction.RECEIVED.value,
        min(parsed.size, MAX_INT),
        parsed.has_attachments,
        parsed.recipient_count,
        "\\seen" in flags,
        "\\flagged" in flags,
        "\\draft" in flags,
        parsed.parse_error,
        files.raw_names.get(parsed.message_key, ""),
        now,
        mailbox,
    )


def _insert_children(message_ids: list[int], parsed: list[ParsedEmail], files: _FileWriter) -> None:
    participants = []
    attachments = []
    for message_id, item in zip(message_ids, parsed, strict=True):
        participants.extend(
            (message_id, role, address[:320], name[:300]) for role, name, address in item.participants()
        )
        stored_names = files.attachment_names.get(item.message_key, [])
        attachments.extend(
            (
                message_id,
                attachment.filename[:500],
                attachment.content_type[:200],
                min(attachment.size, MAX_INT),
                attachment.content_id[:500],
                attachment.is_inline,
                name,
            )
            for attachment, name in zip(item.attachments, stored_names, strict=True)
        )
    insert_rows(MessageParticipant, ("message_id", "role", "address", "name"), participants)
    insert_rows(
        Attachment,
        ("message_id", "filename", "content_type", "size", "content_id", "is_inline", "file"),
        attachments,
    )


def _upsert_locations(
    folder: MailFolder,
    uidvalidity: int | None,
    fetched: list[FetchedMessage],
    keys: list[str],
    pk_by_key: dict[str, int],
) -> int:
    """Record (folder, uidvalidity, uid) -> message; refresh flags and message of known locations.
    Returns how many locations are new."""
    wanted: dict[int, tuple[int, str]] = {}
    for item, key in zip(fetched, keys, strict=True):
        wanted[item.uid] = (pk_by_key[key], " ".join(sorted(_flag_set(item.flags)))[:500])
    known = {
        uid: (pk, message_id, flags)
        for pk, uid, message_id, flags in MessageLocation.objects.filter(
            folder=folder, uidvalidity=uidvalidity, uid__in=list(wanted)
        ).values_list("pk", "uid", "message_id", "flags")
    }
    new_rows = [
        (message_id, folder.pk, uidvalidity, uid, flags)
        for uid, (message_id, flags) in wanted.items()
        if uid not in known
    ]
    insert_rows(MessageLocation, ("message_id", "folder_id", "uidvalidity", "uid", "flags"), new_rows)
    changed = [
        MessageLocation(pk=known[uid][0], message_id=message_id, flags=flags)
        for uid, (message_id, flags) in wanted.items()
        if uid in known and known[uid][1:] != (message_id, flags)
    ]
    if changed:
        MessageLocation.objects.bulk_update(changed, ["message", "flags"], batch_size=500)
    return len(new_rows)


def _update_flags(fetched: list[FetchedMessage], keys: list[str], stored: dict[str, tuple]) -> None:
    """Flags of already stored messages follow the server copy fetched last."""
    changed = []
    for item, key in zip(fetched, keys, strict=True):
        if key not in stored:
            continue
        pk, is_read, is_flagged, is_draft = stored[key]
        flags = {flag.lower() for flag in _flag_set(item.flags)}
        wanted = ("\\seen" in flags, "\\flagged" in flags, "\\draft" in flags)
        if wanted != (is_read, is_flagged, is_draft):
            changed.append(EmailMessage(pk=pk, is_read=wanted[0], is_flagged=wanted[1], is_draft=wanted[2]))
            stored[key] = (pk, *wanted)
    if changed:
        EmailMessage.objects.bulk_update(changed, ["is_read", "is_flagged", "is_draft"], batch_size=500)


# --- files ----------------------------------------------------------------------------------------


class _FileWriter:
    """Writes attachment payloads and raw bytes through Django's default storage, once per message.

    Names are a function of (account, message_key, part number), so a retry after a crash or a
    concurrent writer produces the same names, and an existing file of the right size is reused.
    """

    def __init__(self, account: EmailAccount):
        self.account_id = account.pk
        self.attachment_names: dict[str, list[str]] = {}
        self.raw_names: dict[str, str] = {}
        self._raws: dict[str, bytes] = {}

    def remember_raw(self, key: str, raw: bytes) -> None:
        self._raws[key] = raw

    def write_new(self, parsed: Sequence[ParsedEmail], *, skip: set[str]) -> None:
        jobs: list[tuple[str, int, str, bytes]] = []  # (message key, part number or 0 for raw, name, data)
        for item in parsed:
            key = item.message_key
            if key in skip or key in self.attachment_names:
                continue
            self.attachment_names[key] = [""] * len(item.attachments)
            stem = f"{self.account_id}/{key[:2]}/{key}"
            jobs.extend(
                (key, number, f"attachments/{stem}-{number}-{_safe_name(attachment.filename)}", attachment.payload)
                for number, attachment in enumerate(item.attachments, start=1)
            )
            if item.parse_error and key in self._raws:
                jobs.append((key, 0, f"raw/{stem}.eml", self._raws[key]))
        if not jobs:
            return
        # Small files, many syscalls each: a few threads overlap them (the GIL is released meanwhile).
        if len(jobs) > 4:
            with ThreadPoolExecutor(max_workers=FILE_WRITERS) as executor:
                names = list(executor.map(lambda job: _store(job[2], job[3]), jobs))
        else:
            names = [_store(job[2], job[3]) for job in jobs]
        for (key, number, _name, _data), stored in zip(jobs, names, strict=True):
            if number:
                self.attachment_names[key][number - 1] = stored
            else:
                self.raw_names[key] = stored


def _safe_name(filename: str) -> str:
    stem, dot, extension = filename.rpartition(".")
    if not dot:
        stem, extension = filename, ""
    try:
        stem = get_valid_filename(stem)[:80]
    except SuspiciousFileOperation:
        stem = "attachment"
    try:
        extension = get_valid_filename(extension)[:16] if extension else ""
    except SuspiciousFileOperation:
        extension = ""
    return f"{stem}.{extension}" if extension else stem


def _store(name: str, data: bytes) -> str:
    """Save bytes under `name`; an existing file of the same size (a previous attempt) is reused."""
    if default_storage.exists(name):
        if default_storage.size(name) == len(data):
            return name
        default_storage.delete(name)
    # ContentFile wraps the bytes without copying them (BytesIO shares an immutable buffer).
    return default_storage.save(name, ContentFile(data))
