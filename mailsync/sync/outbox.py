"""The outbox: changes made in the CRM that the mail server must hear of, replayed in order.

A bulk action of the mail lists (mailsync.workspace.actions) changes the CRM at once and, in the same
transaction, writes one PendingServerAction per mail account (`queue_on_server`). They are replayed on
the server through mailsync.protocols.imap, in order, one IMAP session, grouped by folder:
- by a Celery task per account after the commit (`apply_pending_on_server`, mailsync.sync.tasks);
- by every sync before it reads the server (`replay_pending`, mailsync.sync.engine), so a sync never
  undoes a read state the server has not heard of.
What is repeated:
- read / unread: always (\\Seen is two-way, as in every mail client);
- archive, move to inbox, delete: only when the user asked for it (MailSettings.apply_actions_on_server,
  S5): MOVE from the Inbox to the Archive folder (created when there is none; Gmail: All Mail), back to
  the Inbox, or to the Trash. Deleting never expunges (S6).
The replay runs under the account's sync lock (mailsync.sync.lock), and moves the stored locations along
with the server copies (COPYUID), so the next sync finds each message where it now is: one message, with
its CRM state (is_archived, deleted_at with deletion_source "user" are never undone by a sync). A paused
account, one needing re-authentication, a busy or dead server only delay the change: the rows wait for
the next sync of the working account. A server failure is recorded on the account (the account banner
shows it) and never undoes the CRM action. A command the server refuses outright is dropped (logged)
rather than retried forever in front of the rest; a removed account's outbox is dropped.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

from django.db import transaction

from mailsync.connection.config import account_imap_config
from mailsync.connection.limits import imap_slot
from mailsync.connection.state import record_connection_failure
from mailsync.mailboxes.placement import refresh_mailboxes
from mailsync.models import EmailAccount, EmailMessage, MailFolder, MessageLocation, PendingServerAction
from mailsync.protocols import errors, imap

from .lock import account_lock

logger = logging.getLogger(__name__)

READ, UNREAD, ARCHIVE, MOVE_TO_INBOX, DELETE = "read", "unread", "archive", "inbox", "delete"
# Actions that change the mail account only when the user asked for it (S5); read state always does.
OPTIONAL_ON_SERVER = {ARCHIVE, MOVE_TO_INBOX, DELETE}
SEEN = "\\Seen"


@dataclass(frozen=True)
class Queued:
    replay_now: list[int] = field(default_factory=list)  # accounts that are syncing: replay after the commit
    waiting: int = 0  # accounts that are paused / need re-authentication: their rows wait for the next sync


def queue_on_server(*, action: str, message_ids: list[int]) -> Queued:
    """Write the outbox rows of `action` on these messages, one per mail account, in the caller's
    transaction. The caller replays `replay_now` after the commit (mailsync.sync.tasks.replay_after_commit)."""
    by_account: dict[int, list[int]] = defaultdict(list)
    for pk, account_id in EmailMessage.objects.filter(pk__in=message_ids).values_list("pk", "account_id"):
        by_account[account_id].append(pk)
    accounts = EmailAccount.objects.filter(pk__in=by_account).exclude(state=EmailAccount.State.REMOVED)
    active = [account.pk for account in accounts if account.is_active]
    PendingServerAction.objects.bulk_create(
        PendingServerAction(account=account, action=action, message_ids=sorted(by_account[account.pk]))
        for account in sorted(accounts, key=lambda account: account.pk)
    )
    return Queued(replay_now=sorted(active), waiting=len(accounts) - len(active))


class RetryLater(Exception):
    """The account is busy (a sync holds its lock) or the server failed transiently: try again later."""


@dataclass
class ServerReport:
    moved: int = 0
    flagged: int = 0
    applied: int = 0  # outbox rows done
    dropped: int = 0  # outbox rows the server refused (or that no longer make sense)
    skipped: str = ""  # why nothing was done now (account paused, busy, failing, ...)


def apply_pending_on_server(*, account_id: int, final_attempt: bool = True) -> ServerReport:
    """Replay an account's outbox on the mail server. Never raises a mail error: failures are recorded on
    the account (the rows stay for the next sync), except transient ones before the final attempt
    (RetryLater)."""
    account = EmailAccount.objects.filter(pk=account_id).first()
    if account is None:
        return ServerReport(skipped="account gone")
    if account.state == EmailAccount.State.REMOVED:
        dropped, _ = PendingServerAction.objects.filter(account=account).delete()
        return ServerReport(dropped=dropped, skipped="account removed")
    if not account.is_active:
        return ServerReport(skipped=f"account {account.get_state_display().lower()}: kept for its next sync")
    if not PendingServerAction.objects.filter(account=account).exists():
        return ServerReport()  # an earlier task or a sync did it
    try:
        with account_lock(account.pk) as acquired:
            if not acquired:
                if final_attempt:
                    return ServerReport(skipped="account busy: kept for its next sync")
                raise RetryLater(f"account {account.pk} is syncing")
            with imap_slot(account, seconds=300), imap.connect(account_imap_config(account)) as session:
                return replay_pending(session, account)
    except errors.MailError as error:
        if error.transient and not final_attempt:
            raise RetryLater(str(error)) from error
        logger.warning("replaying actions on the server failed for account %s: %s", account.pk, error)
        record_connection_failure(account=account, error=error)
        return ServerReport(skipped=error.message)


def replay_pending(session: imap.ImapSession, account: EmailAccount) -> ServerReport:
    """Apply the account's outbox in order over an open session (the caller holds the account's lock).
    Connection-level errors (transient, authentication) propagate and keep the remaining rows; a command
    the server refuses drops its row, so that it cannot block every later action and sync."""
    report = ServerReport()
    for pending in PendingServerAction.objects.filter(account=account).order_by("pk"):
        if pending.action in (READ, UNREAD, *OPTIONAL_ON_SERVER):
            try:
                done = _apply(session, account, pending.action, [int(pk) for pk in pending.message_ids])
            except errors.MailError as error:
                if error.transient or error.needs_reauth:
                    raise
                logger.warning("account %s: the server refused %s (%s); dropped", account.pk, pending, error)
                report.dropped += 1
            else:
                report.moved += done.moved
                report.flagged += done.flagged
                report.applied += 1
        else:
            logger.warning("account %s: unknown server action %r dropped", account.pk, pending.action)
            report.dropped += 1
        pending.delete()
    return report


def _apply(session: imap.ImapSession, account: EmailAccount, action: str, message_ids: list[int]) -> ServerReport:
    report = ServerReport()
    locations = list(
        MessageLocation.objects.filter(
            message_id__in=message_ids, folder__account=account, folder__exists_on_server=True
        )
        .select_related("folder")
        .order_by("folder_id", "uid")
    )
    if action in (READ, UNREAD):
        by_folder = _group(locations)
        for folder, folder_locations in by_folder.items():
            uids = _current_uids(session, folder, folder_locations)
            if uids:
                (session.add_flags if action == READ else session.remove_flags)(uids, [SEEN])
                report.flagged += len(uids)
        return report
    target_role = {
        ARCHIVE: MailFolder.Role.ARCHIVE,
        MOVE_TO_INBOX: MailFolder.Role.INBOX,
        DELETE: MailFolder.Role.TRASH,
    }[action]
    to_move = _locations_to_move(action, locations)
    if not to_move:
        return report
    target = _target_folder(session, account, target_role)
    target_uidvalidity = None
    for folder, folder_locations in _group(to_move).items():
        if folder.pk == target.pk:
            continue
        uids = _current_uids(session, folder, folder_locations)
        if not uids:
            continue
        mapping = session.move(uids, target.name)
        if target_uidvalidity is None:
            target_uidvalidity = session.folder_status(target.name).uidvalidity
        _follow_moves(folder_locations, target, target_uidvalidity, mapping)
        report.moved += len(uids)
    refresh_mailboxes(message_ids)
    return report


def _group(locations: list[MessageLocation]) -> dict[MailFolder, list[MessageLocation]]:
    grouped: dict[MailFolder, list[MessageLocation]] = {}
    for location in locations:
        grouped.setdefault(location.folder, []).append(location)
    return grouped


def _current_uids(session: imap.ImapSession, folder: MailFolder, locations: list[MessageLocation]) -> list[int]:
    """Select the folder read-write; the UIDs of these locations if they still mean the same messages."""
    selected = session.select(folder.name, readonly=False)
    return [location.uid for location in locations if location.uidvalidity == selected.uidvalidity]


def _locations_to_move(action: str, locations: list[MessageLocation]) -> list[MessageLocation]:
    by_message: dict[int, list[MessageLocation]] = defaultdict(list)
    for location in locations:
        by_message[location.message_id].append(location)
    chosen: list[MessageLocation] = []
    for copies in by_message.values():
        roles = {copy.folder.role for copy in copies}
        if action == ARCHIVE:
            chosen.extend(copy for copy in copies if copy.folder.role == MailFolder.Role.INBOX)
        elif action == DELETE:
            chosen.extend(copy for copy in copies if copy.folder.role != MailFolder.Role.TRASH)
        elif action == MOVE_TO_INBOX and MailFolder.Role.INBOX not in roles:
            # One copy back to the Inbox (two would become two copies there); Sent copies stay in Sent.
            movable = [
                copy for copy in copies if copy.folder.role not in (MailFolder.Role.SENT, MailFolder.Role.DRAFTS)
            ]
            movable.sort(key=lambda copy: _RETURN_PREFERENCE.get(copy.folder.role, 9))
            chosen.extend(movable[:1])
    return chosen


_RETURN_PREFERENCE = {MailFolder.Role.ARCHIVE: 0, MailFolder.Role.ALL: 1, MailFolder.Role.TRASH: 2}
_FOLDER_NAMES = {MailFolder.Role.ARCHIVE: "Archive", MailFolder.Role.TRASH: "Trash", MailFolder.Role.INBOX: "INBOX"}


def _target_folder(session: imap.ImapSession, account: EmailAccount, role: str) -> MailFolder:
    """The account's folder for `role` as the server lists it now; an Archive (or Gmail's All Mail) or
    Trash folder is created when the server has none."""
    server_folders = [folder for folder in session.list_folders() if not folder.noselect]
    found = next((folder for folder in server_folders if folder.role == role), None)
    if found is None and role == MailFolder.Role.ARCHIVE:
        found = next((folder for folder in server_folders if folder.role == MailFolder.Role.ALL), None)
    if found is None:
        name = _FOLDER_NAMES[role]
        session.create_folder(name)
        found = imap.Folder(name=name, delimiter="", role=role, flags=(), noselect=False)
    folder, _created = MailFolder.objects.get_or_create(
        account=account, name=found.name, defaults={"role": found.role, "delimiter": found.delimiter}
    )
    return folder


def _follow_moves(
    locations: list[MessageLocation], target: MailFolder, uidvalidity: int | None, mapping: dict[int, int]
) -> None:
    """Point the stored locations at the moved copies (or forget them when the server did not say where
    they went): the next sync then neither loses the message nor takes it for deleted."""
    with transaction.atomic():
        moved, forgotten = [], []
        for location in locations:
            new_uid = mapping.get(location.uid)
            if new_uid is None or uidvalidity is None:
                forgotten.append(location.pk)
                continue
            location.folder, location.uidvalidity, location.uid = target, uidvalidity, new_uid
            moved.append(location)
        if forgotten:
            MessageLocation.objects.filter(pk__in=forgotten).delete()
        if moved:
            MessageLocation.objects.bulk_update(moved, ["folder", "uidvalidity", "uid"], batch_size=1000)
