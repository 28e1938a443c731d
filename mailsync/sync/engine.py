"""The sync engine: one account's mailbox -> the database, exactly once, crash-safe.

THE deletion rule: a message is marked deleted on the server only after a complete UID listing of
every synced folder shows no copy of it. A date window decides what is fetched, never what is deleted.

How a run goes (`sync_account`):
1. Take the account's lock (one sync per account at a time; PostgreSQL advisory lock, or a lease row
   on SQLite). A second worker that finds it taken returns at once.
2. Connect (mailsync.imap is the only module that speaks IMAP), discover folders with their roles.
   A folder that vanished while one with its UIDVALIDITY appeared, holding the same messages under
   the UIDs we checked, was renamed: the folder row takes the new name and keeps its copies and
   cursors. Otherwise the vanished folder's copies are dropped and the new folder is listed in full.
3. For every folder whose listing is complete, the cheap incremental pass: STATUS says whether anything
   changed (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, MESSAGES); the STATUS of all of them is asked in one
   round trip, and read again for a folder that comes after one where something changed. Only then:
   new UIDs are taken in, flag changes come through CONDSTORE CHANGEDSINCE, deletions through QRESYNC
   VANISHED (or a UID list diff on servers without it). A UIDVALIDITY change voids the folder's UIDs:
   its copies are dropped and the folder is listed again in full.
4. Full listing of the folders that need one (new, renamed but not recognised, reset, unfinished),
   within the time budget: every UID (SEARCH ALL: UIDs only, cheap), and of the UIDs not known yet
   only their Message-ID field. A UID whose Message-ID is that of a stored message becomes a copy of
   it without being fetched, so the message keeps its links, read state and visibility; a message
   never stored is fetched only inside the date window (the last N days, or the past-email period
   once synced); a UID the Message-ID alone cannot settle (a Message-ID that several stored messages
   share, say) is fetched and matched by content (ingest.match_identities). New UIDs of the
   incremental pass go through the same matching, whatever their date.
5. Within the time budget, a requested past-email sync (S4). Whatever does not fit is left for the
   next run, which the caller schedules at once (`SyncReport.more_work`).
6. Deletions (`settle_unlocated`): a message that lost its last copy is "unlocated" (a database
   field, so a killed run forgets nothing). Only when every synced folder's listing is complete, and
   STATUS shows that no folder received mail while the run went through them, is an unlocated message
   that still has no copy marked deleted (source "server"). One that shows up again comes back.

Every batch is fetched first, parsed outside any transaction, and written in one short transaction
that also advances the folder's cursor (ingest.ingest_batch's before_commit), so a worker killed at
any point leaves the database consistent with some prefix of the work and the next run completes it.
Large fetches are a pipeline (`_fetch_and_ingest`): one thread fetches batch N+1 while a parse worker
parses N and this thread writes N-1; no transaction is open while the network is read, and nothing
but that thread uses the IMAP session until it is joined.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from contacts.models import PersonEmail
from mailsync.connection.config import account_imap_config
from mailsync.connection.limits import imap_slot
from mailsync.connection.state import log_recovery, record_connection_failure
from mailsync.mailboxes.placement import refresh_mailboxes
from mailsync.mailboxes.tuning import refresh_statistics
from mailsync.models import EmailAccount, EmailMessage, MailFolder, MessageLocation
from mailsync.protocols import errors, imap

from .ingest import (
    FetchedMessage,
    IngestResult,
    ParsePool,
    PendingParse,
    attach_copies,
    flags_from_remaining_copies,
    ingest_batch,
    own_addresses_for,
    upsert_locations,
)
from .lock import account_lock, extend_lease
from .outbox import replay_pending
from .parsing import message_id_from_header, message_id_key, message_key_from_header, parse_message

logger = logging.getLogger(__name__)

FETCH_BATCH = 200
# Above this many messages to fetch in one go, parsing runs in a process pool next to the writes, and
# batches are larger: every batch pays for its list rows, thread counters, search documents and linking
# once, so larger ones cost less per message (memory: three batches in flight: one fetched, one parsed,
# one written).
POOL_THRESHOLD = 400
LARGE_FETCH_BATCH = 1000
DEFAULT_TIME_BUDGET = 25.0
# A run's connection slot outlives its time budget by this much (the last batch may overrun it).
SLOT_MARGIN_SECONDS = 120.0
# UIDs of a folder's stored copies compared with the server when a rename is suspected.
RENAME_SAMPLE = 20
# Folders never synced by "all folders" unless the user picks them.
EXCLUDED_BY_DEFAULT = {MailFolder.Role.JUNK, MailFolder.Role.DRAFTS}
ROLE_ORDER = {"inbox": 0, "sent": 1, "archive": 2, "all": 3, "": 4, "trash": 5, "drafts": 6, "junk": 7}


@dataclass
class SyncReport:
    account_id: int
    locked: bool = True
    created: int = 0
    # Copies of stored messages: fetched and matched, or recognised by Message-ID without a fetch.
    existing: int = 0
    # New messages stored apart from a different message with the same Message-ID (in `created` too).
    kept_apart: int = 0
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
        self.kept_apart += result.kept_apart
        self.failed += result.failed
        self.thread_ids |= result.thread_ids


# --------------------------------------------------------------------------------------------------
# Entry point


def sync_account(
    account_id: int, *, time_budget: float = DEFAULT_TIME_BUDGET, session=None, bulk: bool = True
) -> SyncReport:
    """Run one sync of the account. Never raises for mail-server problems: they land on the account.

    `session`: an already connected imap.ImapSession to reuse.
    `bulk=False`: only the quick part (new mail, flags and deletions of folders already listed); the
    initial listing of new folders and a past-email sync are left for a bulk run (`more_work`), so a
    sync for new mail never waits behind a large mailbox (mailsync.sync.tasks, "sync-bulk" queue).
    """
    report = SyncReport(account_id=account_id)
    with account_lock(account_id) as acquired:
        if not acquired:
            report.locked = False
            return report
        account = EmailAccount.objects.select_related("user").get(pk=account_id)
        if account.state in (EmailAccount.State.PAUSED, EmailAccount.State.REMOVED):
            return report
        attempted = timezone.now()  # stored with the outcome: one write per pass, not two
        try:
            if session is not None:
                _run(account, session, report, time_budget, bulk=bulk)
            else:
                # A slot of the provider's cap on simultaneous connections (mailsync.connection.limits).
                with (
                    imap_slot(account, seconds=time_budget + SLOT_MARGIN_SECONDS),
                    imap.connect(account_imap_config(account)) as new_session,
                ):
                    _run(account, new_session, report, time_budget, bulk=bulk)
        except errors.MailError as error:
            report.error = error
            _record_failure(account, error, attempted=attempted)
            return report
        except Exception as exc:  # a bug must not stop the schedule; it is logged with its traceback
            logger.exception("sync of account %s failed", account_id)
            error = errors.ServerError(f"Unexpected problem while syncing ({type(exc).__name__}).", protocol="imap")
            report.error = error
            _record_failure(account, error, attempted=attempted)
            return report
        _record_success(account, report)
    return report


def _run(
    account: EmailAccount, session: imap.ImapSession, report: SyncReport, time_budget: float, *, bulk: bool = True
) -> None:
    deadline = time.monotonic() + time_budget
    folders = discover_folders(account, session)
    report.folders = len(folders)
    # The CRM's own changes first (outbox of bulk actions): reading the server before would undo them.
    replay_pending(session, account)
    listed = [folder for folder in folders if folder.initial_synced_at is not None]
    # The STATUS of every listed folder in one round trip; the owner's addresses are read meanwhile.
    found: list[frozenset[str]] = []
    statuses = session.folder_statuses(
        [folder.name for folder in listed], meanwhile=lambda: found.append(own_addresses_for(account))
    )
    own = found[0]
    for folder in listed:
        status = statuses.get(folder.name)
        # A status read before an earlier folder's work (new mail, flags) may be out of date: read again.
        worked = _incremental(
            account,
            session,
            folder,
            own,
            report,
            deadline,
            folders=folders,
            status=status if isinstance(status, imap.FolderStatus) else None,
        )
        if worked:
            statuses = {}
    for folder in folders:
        if folder.initial_synced_at is None:
            if not bulk or time.monotonic() >= deadline:
                report.more_work = True
                break
            list_folder(account, session, folder, own, report, deadline=deadline, since=coverage_start(account))
            extend_lease(account.pk)
    initial_pending = any(f.initial_synced_at is None for f in folders)
    if not initial_pending and account.initial_sync_done_at is None:
        account.initial_sync_done_at = timezone.now()
        EmailAccount.objects.filter(pk=account.pk).update(initial_sync_done_at=account.initial_sync_done_at)
    if not initial_pending and account.past_sync_state in ("queued", "running") and not report.more_work:
        if bulk:
            _past_sync(account, session, folders, own, report, deadline)
        else:
            report.more_work = True
    report.deleted_messages += settle_unlocated(account, session, folders, report)


# --------------------------------------------------------------------------------------------------
# Folders


def discover_folders(account: EmailAccount, session: imap.ImapSession) -> list[MailFolder]:
    """Upsert the server's folders; return the ones to sync now, inbox first."""
    server_folders = session.list_folders()
    stored = {folder.name: folder for folder in account.folders.all()}
    _follow_renames(session, stored, server_folders)
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
        # Deleted on the server, or renamed in a way _follow_renames could not recognise: its copies
        # are gone; a new folder's full listing finds its messages again by identity.
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


def _follow_renames(session: imap.ImapSession, stored: dict[str, MailFolder], server_folders) -> None:
    """A stored folder that vanished, and a folder that appeared with the same UIDVALIDITY whose UIDs
    hold the same messages (Message-IDs of up to RENAME_SAMPLE stored copies compared): a rename. The
    folder row takes the new name, keeping its copies, cursors and the user's choice to sync it."""
    names = {item.name for item in server_folders}
    vanished = [f for name, f in stored.items() if name not in names and f.exists_on_server and f.uidvalidity]
    appeared = [
        item
        for item in server_folders
        if not item.noselect and (item.name not in stored or not stored[item.name].exists_on_server)
    ]
    if not vanished or not appeared:
        return
    by_validity: dict[int, list[MailFolder]] = {}
    for folder in vanished:
        by_validity.setdefault(folder.uidvalidity, []).append(folder)
    for item in appeared:
        status = session.folder_status(item.name)
        candidates = by_validity.get(status.uidvalidity or -1, [])
        if len(candidates) != 1 or not _holds_same_messages(session, candidates[0], item.name, status):
            continue  # none, or ambiguous: a new folder plus a vanished one
        folder = candidates.pop()
        logger.info("folder %s of account %s was renamed to %s", folder.name, folder.account_id, item.name)
        previous = stored.pop(item.name, None)
        if previous is not None:  # a folder of that name that vanished earlier: its copies are gone already
            previous.delete()
        del stored[folder.name]
        MailFolder.objects.filter(pk=folder.pk).update(name=item.name)
        folder.name = item.name
        stored[item.name] = folder


def _holds_same_messages(session: imap.ImapSession, folder: MailFolder, name: str, status) -> bool:
    sample = dict(
        MessageLocation.objects.filter(folder=folder, uidvalidity=folder.uidvalidity)
        .order_by("-uid")
        .values_list("uid", "message__message_key")[:RENAME_SAMPLE]
    )
    session.select(name, readonly=True)
    compared = 0
    for item in session.fetch_identities(list(sample)):
        key = message_key_from_header(item.raw)
        if not key:
            continue
        if key != sample[item.uid]:
            return False
        compared += 1
    return compared > 0 or (status.uidnext or 0) >= (folder.uidnext or 0)


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
    account: EmailAccount,
    session: imap.ImapSession,
    folder: MailFolder,
    own: frozenset[str],
    report: SyncReport,
    deadline: float | None = None,
    folders: list[MailFolder] = (),
    status: imap.FolderStatus | None = None,
) -> bool:
    """Bring one folder whose listing is complete up to date. `folders`: every synced folder; `status`:
    its STATUS if just read (else read here). False when nothing changed (no command sent after STATUS)."""
    if status is None:
        status = session.folder_status(folder.name)
    if status.uidvalidity != folder.uidvalidity:
        _uidvalidity_reset(account, session, folder, own, report, status, deadline)
        return True
    unchanged = (
        status.uidnext == folder.uidnext
        and status.messages == folder.message_count
        and (status.highestmodseq is None or status.highestmodseq == folder.highestmodseq)
    )
    if unchanged and status.highestmodseq is not None:
        return False
    if unchanged and folder.last_synced_at and timezone.now() - folder.last_synced_at < timedelta(minutes=10):
        # Without CONDSTORE, flag changes are invisible in STATUS: look at flags every 10 minutes.
        return False

    selected = session.select(folder.name, readonly=True)
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
        _drop_locations(folder, _locations(folder, vanished))
    elif not session.condstore_enabled or not folder.highestmodseq:
        stored_uids = list(_locations(folder).values_list("uid", flat=True))
        current = session.fetch_flags(stored_uids)
        report.flag_changes += apply_flag_changes(folder, current)
        _drop_locations(folder, _locations(folder, [uid for uid in stored_uids if uid not in current]))

    def advance(result: IngestResult | None = None, *, final: bool = True) -> None:
        if final:
            MailFolder.objects.filter(pk=folder.pk).update(
                uidnext=new_uidnext,
                highestmodseq=selected.highestmodseq,
                message_count=selected.exists,
                last_synced_at=timezone.now(),
            )

    elsewhere = [f for f in folders if f.pk != folder.pk and f.initial_synced_at is not None and f.uidvalidity]
    take_in_uids(
        account,
        session,
        folder,
        new_uids,
        own,
        report,
        uidvalidity=folder.uidvalidity,
        on_done=advance,
        elsewhere=elsewhere,
        window_start=coverage_start(account),
    )
    folder.uidnext, folder.highestmodseq, folder.message_count = new_uidnext, selected.highestmodseq, selected.exists
    return True


def _vanished_by_diff(session: imap.ImapSession, folder: MailFolder) -> list[int]:
    on_server = set(session.search_all_uids())
    return [uid for uid in _locations(folder).values_list("uid", flat=True) if uid not in on_server]


def _uidvalidity_reset(account, session, folder, own, report, status, deadline) -> None:
    """RFC 3501 2.3.1.1: the folder's UIDs are void. Its copies are dropped (their messages become
    unlocated, not deleted) and the folder is listed again in full, matched by identity."""
    logger.warning(
        "UIDVALIDITY of %s/%s changed (%s -> %s): listing the folder again",
        account.pk,
        folder.name,
        folder.uidvalidity,
        status.uidvalidity,
    )
    _drop_locations(folder, MessageLocation.objects.filter(folder=folder))
    MailFolder.objects.filter(pk=folder.pk).update(
        uidvalidity=None, uidnext=None, highestmodseq=None, initial_synced_at=None, message_count=0
    )
    folder.uidvalidity = folder.uidnext = folder.highestmodseq = folder.initial_synced_at = None
    list_folder(account, session, folder, own, report, deadline=deadline, since=coverage_start(account))


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
    """Delete server copies; a message left without any becomes unlocated (settle_unlocated decides)."""
    with transaction.atomic():
        message_ids = set(locations.values_list("message_id", flat=True))
        if message_ids:
            locations.delete()
            EmailMessage.objects.filter(pk__in=message_ids, unlocated_since__isnull=True).exclude(
                pk__in=MessageLocation.objects.filter(message_id__in=message_ids).values("message_id")
            ).update(unlocated_since=timezone.now())
            flags_from_remaining_copies(message_ids)
    refresh_mailboxes(message_ids)
    return message_ids


def settle_unlocated(
    account: EmailAccount, session: imap.ImapSession, folders: list[MailFolder], report: SyncReport
) -> int:
    """THE deletion rule. Unlocated messages that have a copy again are located; those that still have
    none are marked deleted on the server, but only when every synced folder's listing is complete
    and no folder received mail since this run looked at it (the message may be on its way into one).
    Returns how many were marked deleted."""
    unlocated = list(
        EmailMessage.objects.filter(account=account, unlocated_since__isnull=False).values_list("pk", flat=True)
    )
    if not unlocated:
        return 0
    located = set(MessageLocation.objects.filter(message_id__in=unlocated).values_list("message_id", flat=True))
    if located:
        EmailMessage.objects.filter(pk__in=located).update(unlocated_since=None)
    missing = [pk for pk in unlocated if pk not in located]
    if not missing or any(folder.initial_synced_at is None for folder in folders):
        return 0
    statuses = session.folder_statuses([folder.name for folder in folders])
    for folder in folders:
        status = statuses[folder.name]
        if isinstance(status, errors.MailError):
            raise status
        if (status.uidvalidity, status.uidnext) != (folder.uidvalidity, folder.uidnext):
            report.more_work = True  # look again at once, before deciding anything
            return 0
    with transaction.atomic():
        gone = EmailMessage.objects.filter(pk__in=missing).exclude(
            pk__in=MessageLocation.objects.filter(message_id__in=missing).values("message_id")
        )
        deleted = gone.filter(deleted_at__isnull=True).update(
            deleted_at=timezone.now(), deletion_source="server", unlocated_since=None
        )
        gone.update(unlocated_since=None)  # deleted in the CRM already: stays so
    refresh_mailboxes(missing)
    return deleted


# --------------------------------------------------------------------------------------------------
# Windowed work: initial sync and past-email sync


def list_folder(account, session, folder, own, report, *, deadline, since) -> bool:
    """The full listing of a folder (new, reset, renamed, or unfinished): every UID, matched to stored
    messages by identity; messages never stored are fetched when they arrived on or after `since`.
    Complete (True, initial_synced_at set) when every UID has been looked at; crash-safe and
    idempotent: a run that stops half-way leaves copies that the next one keeps."""
    selected = session.select(folder.name, readonly=True)
    uidvalidity = selected.uidvalidity
    # Copies under another UIDVALIDITY (changed between two runs of an unfinished listing) are void.
    _drop_locations(folder, MessageLocation.objects.filter(folder=folder).exclude(uidvalidity=uidvalidity))
    on_server = session.search_all_uids()
    present = set(on_server)
    known = set(MessageLocation.objects.filter(folder=folder, uidvalidity=uidvalidity).values_list("uid", flat=True))
    expunged = [uid for uid in known if uid not in present]
    if expunged:
        _drop_locations(
            folder, MessageLocation.objects.filter(folder=folder, uidvalidity=uidvalidity, uid__in=expunged)
        )
    unknown = [uid for uid in reversed(on_server) if uid not in known]  # newest first
    in_window = set(session.search_uids_since(since)) if unknown else set()

    def finish(result=None, final=True) -> None:
        if not final:
            return
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

    complete = take_in_uids(
        account,
        session,
        folder,
        unknown,
        own,
        report,
        uidvalidity=uidvalidity,
        deadline=deadline,
        on_done=finish,
        fetch_only=in_window,
    )
    if not complete:
        report.more_work = True
    return complete


def take_in_uids(
    account,
    session,
    folder,
    uids,
    own,
    report,
    *,
    uidvalidity,
    on_done,
    deadline=None,
    fetch_only=None,
    elsewhere=None,
    window_start=None,
) -> bool:
    """Record server UIDs (no location yet) as copies of stored messages or as new messages.

    The Message-ID field of each UID comes first (cheap); a UID it shows to be a copy of a stored
    message is recorded without a fetch (match_by_message_id). The others are fetched and ingested,
    except, when `fetch_only` is given, never-stored ones outside it (the date window).
    A new message older than `window_start` may have copies that listings of this folder or of the
    `elsewhere` folders passed over (old mail is not fetched): they are searched for by Message-ID and
    recorded in the same transaction as the message, so no copy of a stored message goes unrecorded.
    on_done(result, final=True) runs in the transaction of the last write (cursors advance there)."""
    if uids:
        known = set(
            MessageLocation.objects.filter(folder=folder, uidvalidity=uidvalidity, uid__in=uids).values_list(
                "uid", flat=True
            )
        )
        uids = [uid for uid in uids if uid not in known]
    other_copies: dict[str, list[tuple[MailFolder, int, tuple[str, ...]]]] = {}
    # New mail of the incremental pass always (its old copies elsewhere are looked for); a listing only
    # when some stored message could be among its UIDs.
    if uids and (elsewhere is not None or EmailMessage.objects.filter(account=account).exists()):
        found, unsure, newcomers = match_by_message_id(account, session, folder, uidvalidity, uids)
        report.existing += len(found)
        uids = [uid for uid in uids if uid not in found and (fetch_only is None or uid in fetch_only or uid in unsure)]
        fetching = set(uids)
        old_ones = {
            key: message_id
            for uid, (key, message_id, arrived) in newcomers.items()
            if uid in fetching and window_start is not None and arrived is not None and arrived.date() < window_start
        }
        if old_ones and elsewhere is not None:
            # This folder too: an older copy here may have been passed over by its listing.
            other_copies = _copies_elsewhere(session, [*elsewhere, folder], old_ones, skip={folder.pk: fetching})
            session.select(folder.name, readonly=True)
    elif fetch_only is not None:
        uids = [uid for uid in uids if uid in fetch_only]
    if not uids:
        with transaction.atomic():
            on_done(None, final=True)
        return True
    if deadline is not None and time.monotonic() >= deadline:
        return False

    def record_other_copies(result: IngestResult) -> None:
        if not other_copies or not result.created_ids:
            return
        for pk, key in EmailMessage.objects.filter(
            pk__in=result.created_ids, message_key__in=list(other_copies)
        ).values_list("pk", "message_key"):
            for other, uid, flags in other_copies[key]:
                upsert_locations(other, other.uidvalidity, {uid: (pk, " ".join(sorted(flags))[:500])})

    return _fetch_and_ingest(
        account,
        session,
        folder,
        uids,
        own,
        report,
        uidvalidity=uidvalidity,
        deadline=deadline,
        on_done=on_done,
        on_batch=record_other_copies if other_copies else None,
    )


def _copies_elsewhere(session, folders, message_ids_by_key: dict[str, str], *, skip: dict[int, set[int]]):
    """key -> [(folder, uid, flags)] of the UIDs of `folders` (listings complete) that hold messages with
    these Message-IDs and no location yet (nor in `skip`: folder pk -> UIDs). Leaves another folder selected."""
    found: dict[str, list[tuple[MailFolder, int, tuple[str, ...]]]] = {}
    for other in folders:
        selected = session.select(other.name, readonly=True)
        if selected.uidvalidity != other.uidvalidity:
            continue  # reset since: its next listing matches everything by identity anyway
        uids = session.search_message_ids(list(message_ids_by_key.values()))
        known = set(
            MessageLocation.objects.filter(folder=other, uidvalidity=other.uidvalidity, uid__in=uids).values_list(
                "uid", flat=True
            )
        )
        known |= skip.get(other.pk, set())
        for item in session.fetch_identities([uid for uid in uids if uid not in known]):
            key = message_key_from_header(item.raw)
            if key in message_ids_by_key:
                found.setdefault(key, []).append((other, item.uid, item.flags))
    return found


def match_by_message_id(account, session, folder, uidvalidity, uids) -> tuple[set[int], set[int]]:
    """Which of `uids` (no location yet) are copies of stored messages, from their Message-ID field.

    A UID is such a copy when exactly one stored message has its Message-ID, that message has no copy
    in this folder yet, and it either has a copy in another folder (a copy or a move: the account's
    rule for one Message-ID in two folders) or the same size (a folder reset, a move of a message
    whose last copy just went). Those get their location, flags and restored visibility here, in
    batches. Returns (UIDs recorded, UIDs to fetch and match by content: shared or missing Message-ID,
    uid -> (key, Message-ID, INTERNALDATE) of the UIDs whose Message-ID no stored message has)."""
    found: set[int] = set()
    unsure: set[int] = set()
    newcomers: dict[int, tuple[str, str, object]] = {}
    idless_stored: bool | None = None
    for start in range(0, len(uids), imap.MAX_UIDS_PER_COMMAND):
        chunk = uids[start : start + imap.MAX_UIDS_PER_COMMAND]
        items = list(session.fetch_identities(chunk))
        ids = {item.uid: message_id_from_header(item.raw) for item in items}
        keys = {uid: message_id_key(message_id) if message_id else "" for uid, message_id in ids.items()}
        candidates: dict[str, list[tuple[int, int]]] = {}
        for pk, key, size in EmailMessage.objects.filter(
            account=account, message_key__in=set(keys.values()) - {""}
        ).values_list("pk", "message_key", "size"):
            candidates.setdefault(key, []).append((pk, size))
        pks = [pk for group in candidates.values() for pk, _size in group]
        folders_of: dict[int, set[int]] = {}
        for message_id, folder_id in (
            MessageLocation.objects.filter(message_id__in=pks).values_list("message_id", "folder_id").distinct()
        ):
            folders_of.setdefault(message_id, set()).add(folder_id)
        copies: dict[int, tuple[int, tuple[str, ...]]] = {}
        for item in items:
            key = keys[item.uid]
            if not key:
                if idless_stored is None:
                    idless_stored = EmailMessage.objects.filter(account=account, message_id="").exists()
                if idless_stored:
                    unsure.add(item.uid)
                continue
            group = candidates.get(key)
            if not group:
                newcomers[item.uid] = (key, ids[item.uid], item.internaldate)
                continue  # never stored
            if len(group) == 1:
                pk, size = group[0]
                elsewhere = folders_of.get(pk, set())
                if folder.pk not in elsewhere and (elsewhere or size == item.size):
                    copies[item.uid] = (pk, item.flags)
                    folders_of.setdefault(pk, set()).add(folder.pk)
                    continue
            unsure.add(item.uid)
        if copies:
            attach_copies(account, folder, uidvalidity, copies)
            found |= set(copies)
    return found, unsure, newcomers


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
    pooled = len(uids) >= POOL_THRESHOLD
    batches = _batches(uids, pooled=pooled)
    last = len(batches) - 1
    pool = ParsePool() if pooled else None

    def fetch(batch: list[int]) -> tuple[list[FetchedMessage], PendingParse | None]:
        items = [
            FetchedMessage(uid=m.uid, flags=m.flags, internal_date=m.internaldate, raw=m.raw)
            for m in session.fetch_messages(batch, batch_size=len(batch))
        ]
        # Parsing starts as soon as the batch is here, not when the writer gets to it: the worker
        # never waits for the writer (parsing is the slowest stage on a small machine).
        return items, (pool.submit([item.raw for item in items], own) if pool else None)

    # The next batch is fetched by one thread while this one writes (socket reads and TLS release the GIL).
    # Only that thread uses the session until it is joined: the writes below touch the database only.
    fetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imap-fetch")
    try:
        # Batch N+1 is fetched (then parsed, in the pool) while N is parsed and N-1 is written.
        pending = None  # (items, parse future or None, is_last)
        next_items = fetcher.submit(fetch, batches[0])
        for index in range(len(batches)):
            items, future = next_items.result()
            out_of_time = deadline is not None and index < last and time.monotonic() >= deadline
            if index < last and not out_of_time:
                next_items = fetcher.submit(fetch, batches[index + 1])
            if pending is not None:
                _write(account, folder, uidvalidity, own, report, pending, on_done, on_batch)
                extend_lease(account.pk)
            pending = (items, future, index == last)
            if out_of_time:
                _write(account, folder, uidvalidity, own, report, pending, on_done, on_batch)
                return False  # the next run continues with the UIDs not stored yet
        _write(account, folder, uidvalidity, own, report, pending, on_done, on_batch)
        return True
    finally:
        fetcher.shutdown(wait=True)  # the session is the caller's again only once no fetch runs
        if pool is not None:
            pool.close()


def _batches(uids: list[int], *, pooled: bool) -> list[list[int]]:
    """The fetch batches: a small first one (parsing starts early, the first mail is listed soon), large
    ones when pooled, and small ones again at the end, where nothing overlaps the last parse and write."""
    if not pooled:
        return [uids[i : i + FETCH_BATCH] for i in range(0, len(uids), FETCH_BATCH)]
    head, middle = uids[:FETCH_BATCH], uids[FETCH_BATCH:]
    cut = max(0, len(middle) - LARGE_FETCH_BATCH)  # the last LARGE_FETCH_BATCH go in small batches
    large = [middle[i : min(i + LARGE_FETCH_BATCH, cut)] for i in range(0, cut, LARGE_FETCH_BATCH)]
    small = [middle[i : i + FETCH_BATCH] for i in range(cut, len(middle), FETCH_BATCH)]
    return [head, *large, *small]


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
    if result.created_ids:
        refresh_statistics()  # a first sync grows its tables far past what the planner last saw


def _restore_reappeared(result: IngestResult) -> None:
    existing = set(result.message_ids) - set(result.created_ids)
    if existing:
        EmailMessage.objects.filter(pk__in=existing, deletion_source="server").update(
            deleted_at=None, deletion_source=""
        )


# --------------------------------------------------------------------------------------------------
# Account state


def _record_success(account: EmailAccount, report: SyncReport) -> None:
    log_recovery(account)
    now = timezone.now()
    state = EmailAccount.State.SYNCING if account.initial_sync_done_at else EmailAccount.State.INITIAL_SYNC
    EmailAccount.objects.filter(pk=account.pk).exclude(
        state__in=[EmailAccount.State.PAUSED, EmailAccount.State.REMOVED]
    ).update(
        state=state,
        last_sync_at=now,  # the same instant: the account list shows "last try" only after a failed one
        last_success_at=now,
        last_error_code="",
        last_error_message="",
        last_error_fix="",
        last_error_detail="",
        consecutive_failures=0,
        next_retry_at=None,
    )


def _record_failure(account: EmailAccount, error: errors.MailError, *, attempted) -> None:
    EmailAccount.objects.filter(pk=account.pk).update(last_sync_at=attempted)
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
