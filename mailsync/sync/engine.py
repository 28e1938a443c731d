"""The sync engine: one account's mailbox -> the database, exactly once, crash-safe.

How a run goes (`sync_account`):
1. Take the account's lock (one sync per account at a time; PostgreSQL advisory lock, or a lease row
   on SQLite). A second worker that finds it taken returns at once.
2. Connect (mailsync.imap is the only module that speaks IMAP), discover folders with their roles.
3. For every synced folder, the cheap incremental pass: STATUS says whether anything changed
   (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, MESSAGES). Only then: new UIDs are fetched, flag changes
   come through CONDSTORE CHANGEDSINCE, deletions through QRESYNC VANISHED (or a UID list diff on
   servers without it). A UIDVALIDITY change voids the folder's UIDs: its locations are dropped and
   the folder is fetched again; messages are matched by their message key, so nothing is duplicated.
4. Within a time budget, the windowed work: the initial sync (the last N days, newest first) of
   folders that have not had it yet, then a requested past-email sync (S4). Whatever does not fit is
   left for the next run, which the caller schedules at once (`SyncReport.more_work`).
5. Messages that are no longer in any synced folder are marked deleted (source "server"); one that
   shows up again (moved into a synced folder) comes back.

Every batch is fetched first, parsed outside any transaction, and written in one short transaction
that also advances the folder's cursor (ingest.ingest_batch's before_commit), so a worker killed at
any point leaves the database consistent with some prefix of the work and the next run completes it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from contacts.models import PersonEmail
from mailsync.connection.config import account_imap_config
from mailsync.connection.state import record_connection_failure
from mailsync.mailboxes.placement import refresh_mailboxes
from mailsync.models import EmailAccount, EmailMessage, MailFolder, MessageLocation
from mailsync.protocols import errors, imap

from .ingest import FetchedMessage, IngestResult, ParsePool, ingest_batch, own_addresses_for
from .lock import account_lock, extend_lease
from .outbox import replay_pending
from .parsing import parse_message

logger = logging.getLogger(__name__)

FETCH_BATCH = 200
# Above this many messages to fetch in one go, parsing runs in a process pool next to the writes.
POOL_THRESHOLD = 400
DEFAULT_TIME_BUDGET = 25.0
# Folders never synced by "all folders" unless the user picks them.
EXCLUDED_BY_DEFAULT = {MailFolder.Role.JUNK, MailFolder.Role.DRAFTS}
ROLE_ORDER = {"inbox": 0, "sent": 1, "archive": 2, "all": 3, "": 4, "trash": 5, "drafts": 6, "junk": 7}


@dataclass
class SyncReport:
    account_id: int
    locked: bool = True
    created: int = 0
    existing: int = 0
    failed: int = 0
    flag_changes: int = 0
    removed_locations: int = 0
    deleted_messages: int = 0
    folders: int = 0
    more_work: bool = False
    error: errors.MailError | None = None
    thread_ids: set[int] = field(default_factory=set)

    def absorb(self, result: IngestResult) -> None:
        self.created += result.created
        self.existing += result.existing
        self.failed += result.failed
        self.thread_ids |= result.thread_ids


# --------------------------------------------------------------------------------------------------
# Entry point


def sync_account(account_id: int, *, time_budget: float = DEFAULT_TIME_BUDGET, session=None) -> SyncReport:
    """Run one sync of the account. Never raises for mail-server problems: they land on the account.

    `session`: an already connected imap.ImapSession to reuse (the IDLE watcher passes its own).
    """
    report = SyncReport(account_id=account_id)
    with account_lock(account_id) as acquired:
        if not acquired:
            report.locked = False
            return report
        account = EmailAccount.objects.select_related("user").get(pk=account_id)
        if account.state in (EmailAccount.State.PAUSED, EmailAccount.State.REMOVED):
            return report
        EmailAccount.objects.filter(pk=account_id).update(last_sync_at=timezone.now())
        try:
            if session is not None:
                _run(account, session, report, time_budget)
            else:
                with imap.connect(account_imap_config(account)) as new_session:
                    _run(account, new_session, report, time_budget)
        except errors.MailError as error:
            report.error = error
            _record_failure(account, error)
            return report
        except Exception as exc:  # a bug must not stop the schedule; it is logged with its traceback
            logger.exception("sync of account %s failed", account_id)
            error = errors.ServerError(f"Unexpected problem while syncing ({type(exc).__name__}).", protocol="imap")
            report.error = error
            _record_failure(account, error)
            return report
        _record_success(account, report)
    return report


def _run(account: EmailAccount, session: imap.ImapSession, report: SyncReport, time_budget: float) -> None:
    deadline = time.monotonic() + time_budget
    own = own_addresses_for(account)
    folders = discover_folders(account, session)
    report.folders = len(folders)
    # The CRM's own changes first (outbox of bulk actions): reading the server before would undo them.
    replay_pending(session, account)
    touched_messages: set[int] = set()
    for folder in folders:
        if folder.initial_synced_at is not None:
            touched_messages |= _incremental(account, session, folder, own, report)
    for folder in folders:
        if folder.initial_synced_at is None:
            if time.monotonic() >= deadline:
                report.more_work = True
                break
            _initial_window(account, session, folder, own, report, deadline)
            extend_lease(account.pk)
    initial_pending = any(f.initial_synced_at is None for f in folders)
    if not initial_pending and account.initial_sync_done_at is None:
        account.initial_sync_done_at = timezone.now()
        EmailAccount.objects.filter(pk=account.pk).update(initial_sync_done_at=account.initial_sync_done_at)
    if not initial_pending and account.past_sync_state in ("queued", "running") and not report.more_work:
        _past_sync(account, session, folders, own, report, deadline)
    report.deleted_messages += mark_server_deletions(account, touched_messages)
    refresh_mailboxes(touched_messages)


# --------------------------------------------------------------------------------------------------
# Folders


def discover_folders(account: EmailAccount, session: imap.ImapSession) -> list[MailFolder]:
    """Upsert the server's folders; return the ones to sync now, inbox first."""
    server_folders = session.list_folders()
    stored = {folder.name: folder for folder in account.folders.all()}
    seen = set()
    for item in server_folders:
        seen.add(item.name)
        folder = stored.get(item.name)
        if folder is None:
            stored[item.name] = MailFolder.objects.create(
                account=account,
                name=item.name,
                delimiter=item.delimiter,
                role=item.role,
                noselect=item.noselect,
                selected=item.role not in EXCLUDED_BY_DEFAULT,
            )
            continue
        changes = {}
        if (folder.role, folder.delimiter, folder.noselect, folder.exists_on_server) != (
            item.role,
            item.delimiter,
            item.noselect,
            True,
        ):
            changes = {
                "role": item.role,
                "delimiter": item.delimiter,
                "noselect": item.noselect,
                "exists_on_server": True,
            }
            MailFolder.objects.filter(pk=folder.pk).update(**changes)
            for name, value in changes.items():
                setattr(folder, name, value)
    gone = [folder for name, folder in stored.items() if name not in seen and folder.exists_on_server]
    for folder in gone:
        # The folder was deleted or renamed on the server: its copies are gone (a rename shows up as
        # a new folder whose messages are matched again by message key).
        _drop_locations(folder, MessageLocation.objects.filter(folder=folder))
        MailFolder.objects.filter(pk=folder.pk).update(exists_on_server=False, uidvalidity=None, initial_synced_at=None)
    wanted = [
        folder
        for name, folder in stored.items()
        if name in seen
        and not folder.noselect
        and (folder.selected if not account.sync_all_folders else folder.role not in EXCLUDED_BY_DEFAULT)
    ]
    wanted.sort(key=lambda f: (ROLE_ORDER.get(f.role, 4), f.name))
    return wanted


def synced_folder_ids(account: EmailAccount) -> list[int]:
    folders = account.folders.filter(exists_on_server=True, noselect=False)
    if account.sync_all_folders:
        folders = folders.exclude(role__in=EXCLUDED_BY_DEFAULT)
    else:
        folders = folders.filter(selected=True)
    return list(folders.values_list("pk", flat=True))


# --------------------------------------------------------------------------------------------------
# Incremental pass


def _incremental(
    account: EmailAccount, session: imap.ImapSession, folder: MailFolder, own: frozenset[str], report: SyncReport
) -> set[int]:
    """Bring one already-synced folder up to date. Returns ids of messages that lost a location."""
    status = session.folder_status(folder.name)
    if status.uidvalidity != folder.uidvalidity:
        return _uidvalidity_reset(account, session, folder, own, report, status)
    unchanged = (
        status.uidnext == folder.uidnext
        and status.messages == folder.message_count
        and (status.highestmodseq is None or status.highestmodseq == folder.highestmodseq)
    )
    if unchanged and status.highestmodseq is not None:
        return set()
    if unchanged and folder.last_synced_at and timezone.now() - folder.last_synced_at < timedelta(minutes=10):
        # Without CONDSTORE, flag changes are invisible in STATUS: look at flags every 10 minutes.
        return set()

    selected = session.select(folder.name, readonly=True)
    lost: set[int] = set()
    # New mail: every UID at or above the stored UIDNEXT, whatever its date.
    start = folder.uidnext or 1
    new_uids = session.search_uids_from(start) if (selected.uidnext or 0) > start else []
    new_uidnext = selected.uidnext or (max(new_uids) + 1 if new_uids else folder.uidnext)

    # Flags and deletions of what we already have.
    if session.condstore_enabled and folder.highestmodseq and selected.highestmodseq != folder.highestmodseq:
        changes = session.fetch_changed_flags(folder.highestmodseq)
        report.flag_changes += apply_flag_changes(folder, changes.changed)
        vanished = list(changes.vanished)
        if not session.qresync_enabled and status.messages < folder.message_count + len(new_uids):
            vanished = _vanished_by_diff(session, folder)
        lost |= _drop_locations(folder, _locations(folder, vanished))
    elif not session.condstore_enabled or not folder.highestmodseq:
        stored_uids = list(_locations(folder).values_list("uid", flat=True))
        current = session.fetch_flags(stored_uids)
        report.flag_changes += apply_flag_changes(folder, current)
        lost |= _drop_locations(folder, _locations(folder, [uid for uid in stored_uids if uid not in current]))

    def advance(result: IngestResult | None = None, *, final: bool = True) -> None:
        if final:
            MailFolder.objects.filter(pk=folder.pk).update(
                uidnext=new_uidnext,
                highestmodseq=selected.highestmodseq,
                message_count=selected.exists,
                last_synced_at=timezone.now(),
            )

    if new_uids:
        _fetch_and_ingest(
            account, session, folder, new_uids, own, report, uidvalidity=folder.uidvalidity, on_done=advance
        )
    else:
        with transaction.atomic():
            advance()
    folder.uidnext, folder.highestmodseq, folder.message_count = new_uidnext, selected.highestmodseq, selected.exists
    return lost


def _vanished_by_diff(session: imap.ImapSession, folder: MailFolder) -> list[int]:
    on_server = set(session.search_all_uids())
    return [uid for uid in _locations(folder).values_list("uid", flat=True) if uid not in on_server]


def _uidvalidity_reset(account, session, folder, own, report, status) -> set[int]:
    """RFC 3501 2.3.1.1: the folder's UIDs are void. Drop its locations and fetch it again; the
    messages themselves are matched by message key, so none is duplicated or lost."""
    logger.warning(
        "UIDVALIDITY of %s/%s changed (%s -> %s): resyncing the folder",
        account.pk,
        folder.name,
        folder.uidvalidity,
        status.uidvalidity,
    )
    lost = _drop_locations(folder, MessageLocation.objects.filter(folder=folder))
    MailFolder.objects.filter(pk=folder.pk).update(
        uidvalidity=None, uidnext=None, highestmodseq=None, initial_synced_at=None, message_count=0
    )
    folder.uidvalidity = folder.uidnext = folder.highestmodseq = folder.initial_synced_at = None
    # Fetch the same window the account covers: the initial days, or the past-email period if longer.
    _initial_window(account, session, folder, own, report, deadline=None, since=coverage_start(account))
    return lost


def coverage_start(account: EmailAccount):
    days = account.initial_sync_days
    if account.past_sync_months and account.past_sync_state == "done":
        days = max(days, account.past_sync_months * 31)
    return (timezone.now() - timedelta(days=days)).date()


def apply_flag_changes(folder: MailFolder, flags_by_uid: dict[int, tuple[str, ...]]) -> int:
    """Mirror server flags (read, flagged, draft) onto the stored messages; returns how many changed."""
    if not flags_by_uid:
        return 0
    rows = list(
        MessageLocation.objects.filter(
            folder=folder, uidvalidity=folder.uidvalidity, uid__in=list(flags_by_uid)
        ).values_list(
            "pk", "uid", "flags", "message_id", "message__is_read", "message__is_flagged", "message__is_draft"
        )
    )
    location_updates, message_updates = [], []
    for pk, uid, old_flags, message_id, is_read, is_flagged, is_draft in rows:
        flags = flags_by_uid[uid]
        text = " ".join(sorted(flags))[:500]
        if text != old_flags:
            location_updates.append(MessageLocation(pk=pk, flags=text))
        lowered = {flag.lower() for flag in flags}
        wanted = ("\\seen" in lowered, "\\flagged" in lowered, "\\draft" in lowered)
        if wanted != (is_read, is_flagged, is_draft):
            message_updates.append(
                EmailMessage(pk=message_id, is_read=wanted[0], is_flagged=wanted[1], is_draft=wanted[2])
            )
    with transaction.atomic():
        MessageLocation.objects.bulk_update(location_updates, ["flags"], batch_size=1000)
        EmailMessage.objects.bulk_update(message_updates, ["is_read", "is_flagged", "is_draft"], batch_size=1000)
    refresh_mailboxes(message.pk for message in message_updates)
    return len(message_updates)


def _locations(folder: MailFolder, uids: list[int] | None = None):
    qs = MessageLocation.objects.filter(folder=folder, uidvalidity=folder.uidvalidity)
    return qs if uids is None else qs.filter(uid__in=uids)


def _drop_locations(folder: MailFolder, locations) -> set[int]:
    message_ids = set(locations.values_list("message_id", flat=True))
    if message_ids:
        locations.delete()
    refresh_mailboxes(message_ids)
    return message_ids


def mark_server_deletions(account: EmailAccount, message_ids: set[int]) -> int:
    """Messages that lost their last location in a synced folder are gone from the server."""
    if not message_ids:
        return 0
    gone = (
        EmailMessage.objects.filter(account=account, pk__in=message_ids, deleted_at__isnull=True)
        .exclude(pk__in=MessageLocation.objects.filter(message_id__in=message_ids).values("message_id"))
        .values_list("pk", flat=True)
    )
    return EmailMessage.objects.filter(pk__in=list(gone)).update(deleted_at=timezone.now(), deletion_source="server")


# --------------------------------------------------------------------------------------------------
# Windowed work: initial sync and past-email sync


def _initial_window(account, session, folder, own, report, deadline, since=None) -> None:
    """Fetch the folder's last N days, newest first. Done when every UID of the window is stored."""
    since = since or (timezone.now() - timedelta(days=account.initial_sync_days)).date()
    selected = session.select(folder.name, readonly=True)
    uidvalidity = selected.uidvalidity
    # Locations under another UIDVALIDITY (changed between two runs of an unfinished initial sync)
    # are void; their messages are matched again by message key below.
    _drop_locations(folder, MessageLocation.objects.filter(folder=folder).exclude(uidvalidity=uidvalidity))
    stored = set(MessageLocation.objects.filter(folder=folder, uidvalidity=uidvalidity).values_list("uid", flat=True))
    wanted = [uid for uid in reversed(session.search_uids_since(since)) if uid not in stored]
    if deadline is not None and time.monotonic() >= deadline and wanted:
        report.more_work = True
        return

    def finish() -> None:
        now = timezone.now()
        MailFolder.objects.filter(pk=folder.pk).update(
            uidvalidity=uidvalidity,
            uidnext=selected.uidnext,
            highestmodseq=selected.highestmodseq,
            message_count=selected.exists,
            initial_synced_at=now,
            last_synced_at=now,
        )
        folder.uidvalidity, folder.uidnext, folder.highestmodseq = uidvalidity, selected.uidnext, selected.highestmodseq
        folder.message_count, folder.initial_synced_at = selected.exists, now

    complete = _fetch_and_ingest(
        account,
        session,
        folder,
        wanted,
        own,
        report,
        uidvalidity=uidvalidity,
        deadline=deadline,
        on_done=lambda result=None, final=True: finish() if final else None,
    )
    if not wanted:
        with transaction.atomic():
            finish()
    elif not complete:
        report.more_work = True


def request_past_sync(account: EmailAccount, *, months: int, only_contacts: bool) -> None:
    """S4: remember the request; the next sync runs it after the initial sync is done."""
    if months not in (1, 3, 6, 12):
        raise ValueError("months must be 1, 3, 6 or 12")
    if account.initial_sync_done_at is None:
        raise ValueError("Past emails can be synced once the initial sync has finished.")
    EmailAccount.objects.filter(pk=account.pk).update(
        past_sync_months=months,
        past_sync_only_contacts=only_contacts,
        past_sync_state="queued",
        past_sync_done=0,
        past_sync_total=0,
        past_sync_started_at=timezone.now(),
        past_sync_finished_at=None,
    )


def _past_sync(account, session, folders, own, report, deadline) -> None:
    since = (timezone.now() - timedelta(days=31 * account.past_sync_months)).date()
    plan: list[tuple[MailFolder, int, list[int]]] = []
    for folder in folders:
        selected = session.select(folder.name, readonly=True)
        stored = set(_locations(folder).values_list("uid", flat=True))
        uids = [uid for uid in reversed(session.search_uids_since(since)) if uid not in stored]
        if uids and account.past_sync_only_contacts:
            uids = _uids_with_contacts(session, uids)
        plan.append((folder, selected.uidvalidity, uids))
    remaining = sum(len(uids) for _, _, uids in plan)
    total = account.past_sync_done + remaining
    EmailAccount.objects.filter(pk=account.pk).update(past_sync_state="running", past_sync_total=total)
    account.past_sync_total = total

    def progress(result: IngestResult | None = None, *, final: bool = False) -> None:
        if result is not None:
            EmailAccount.objects.filter(pk=account.pk).update(
                past_sync_done=F("past_sync_done") + len(result.message_ids)
            )

    for folder, uidvalidity, uids in plan:
        if not uids:
            continue
        if uidvalidity != folder.uidvalidity:
            continue  # the incremental pass of the next run resyncs this folder first
        session.select(folder.name, readonly=True)
        complete = _fetch_and_ingest(
            account, session, folder, uids, own, report, uidvalidity=uidvalidity, deadline=deadline, on_batch=progress
        )
        if not complete:
            report.more_work = True
            return
    EmailAccount.objects.filter(pk=account.pk).update(
        past_sync_state="done", past_sync_done=total, past_sync_finished_at=timezone.now()
    )


def _uids_with_contacts(session: imap.ImapSession, uids: list[int]) -> list[int]:
    """Keep the UIDs whose headers name at least one CRM person (cheap: headers only)."""
    by_uid = {}
    for item in session.fetch_headers(uids):
        parsed = parse_message(item.raw)
        by_uid[item.uid] = parsed.addresses()
    everyone = set().union(*by_uid.values()) if by_uid else set()
    known = set(PersonEmail.objects.filter(email__in=list(everyone)).values_list("email", flat=True))
    return [uid for uid in uids if by_uid.get(uid, set()) & known]


# --------------------------------------------------------------------------------------------------
# Fetch + parse + write pipeline


def _fetch_and_ingest(
    account: EmailAccount,
    session: imap.ImapSession,
    folder: MailFolder,
    uids: list[int],
    own: frozenset[str],
    report: SyncReport,
    *,
    uidvalidity: int,
    deadline: float | None = None,
    on_done=None,
    on_batch=None,
) -> bool:
    """Fetch `uids` (in the given order) in batches and ingest them; True when all were done.

    on_batch(result) runs inside each batch's transaction; on_done(result, final=True) inside the
    last one (that is where cursors advance, atomically with the last write)."""
    if not uids:
        return True
    batches = [uids[i : i + FETCH_BATCH] for i in range(0, len(uids), FETCH_BATCH)]
    last = len(batches) - 1
    pool = ParsePool() if len(uids) >= POOL_THRESHOLD else None
    try:
        # One batch of look-ahead: batch N is fetched (and parsed in the pool) while N-1 is written.
        pending = None  # (items, parse future or None, is_last)
        for index, batch in enumerate(batches):
            items = [
                FetchedMessage(uid=m.uid, flags=m.flags, internal_date=m.internaldate, raw=m.raw)
                for m in session.fetch_messages(batch, batch_size=FETCH_BATCH)
            ]
            future = pool.submit([item.raw for item in items], own) if pool else None
            if pending is not None:
                _write(account, folder, uidvalidity, own, report, pending, on_done, on_batch)
                extend_lease(account.pk)
            pending = (items, future, index == last)
            if deadline is not None and index < last and time.monotonic() >= deadline:
                _write(account, folder, uidvalidity, own, report, pending, on_done, on_batch)
                return False  # the next run continues with the UIDs not stored yet
        _write(account, folder, uidvalidity, own, report, pending, on_done, on_batch)
        return True
    finally:
        if pool is not None:
            pool.close()


def _write(account, folder, uidvalidity, own, report, pending, on_done, on_batch) -> None:
    items, future, is_last = pending
    parsed = future.result() if future is not None else None

    def before_commit(result: IngestResult) -> None:
        _restore_reappeared(result)
        if on_batch is not None:
            on_batch(result)
        if is_last and on_done is not None:
            on_done(result, final=True)

    result = ingest_batch(
        account, folder, items, uidvalidity=uidvalidity, parsed=parsed, own_addresses=own, before_commit=before_commit
    )
    report.absorb(result)


def _restore_reappeared(result: IngestResult) -> None:
    existing = set(result.message_ids) - set(result.created_ids)
    if existing:
        EmailMessage.objects.filter(pk__in=existing, deletion_source="server").update(
            deleted_at=None, deletion_source=""
        )


# --------------------------------------------------------------------------------------------------
# Account state


def _record_success(account: EmailAccount, report: SyncReport) -> None:
    now = timezone.now()
    state = EmailAccount.State.SYNCING if account.initial_sync_done_at else EmailAccount.State.INITIAL_SYNC
    EmailAccount.objects.filter(pk=account.pk).exclude(
        state__in=[EmailAccount.State.PAUSED, EmailAccount.State.REMOVED]
    ).update(
        state=state,
        last_success_at=now,
        last_error_code="",
        last_error_message="",
        last_error_fix="",
        last_error_detail="",
        consecutive_failures=0,
        next_retry_at=None,
    )


def _record_failure(account: EmailAccount, error: errors.MailError) -> None:
    record_connection_failure(account=account, error=error)


def due_accounts():
    """Accounts the scheduler should sync now."""
    now = timezone.now()
    return EmailAccount.objects.filter(
        state__in=[
            EmailAccount.State.CONNECTING,
            EmailAccount.State.INITIAL_SYNC,
            EmailAccount.State.SYNCING,
            EmailAccount.State.ERROR,
        ]
    ).filter(Q(next_retry_at__isnull=True) | Q(next_retry_at__lte=now))


def sync_interval() -> int:
    return settings.MAILSYNC_SYNC_INTERVAL
