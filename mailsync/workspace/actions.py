"""Bulk actions of the mail lists: mark read / unread, archive, move back to the inbox, delete (S5, S6).

Who: a user acts on their OWN conversations in the list they are looking at. Ids of anyone else's
threads, or of threads no longer in that list, are refused and counted, and nothing happens to them.

Scope: read / unread, archive and "move to inbox" change the thread's visible messages in that list
(archiving a conversation leaves the user's replies in Sent); delete removes the whole conversation.

CRM first: the action is one transaction (messages + list rows, mailsync.mailboxes) that also writes
one PendingServerAction per mail account (the outbox, mailsync.sync.outbox). After the commit a Celery
task per account replays that account's outbox on the server; every sync replays it too before it
reads the server. A paused account, one needing re-authentication, a busy or dead server only delay
the change. What is repeated on the server:
- read / unread: always (\\Seen is two-way, as in every mail client; otherwise the next sync of the
  flags would undo the change);
- archive, move to inbox, delete: only with MailSettings.apply_actions_on_server (S5). Deleting never
  expunges: the provider keeps the mail in its Trash (S6: it can be synced again from there; in the CRM
  it stays deleted).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from crm.models import User
from crm.params import parse_ids
from mailsync.mailboxes.locks import lock_owner_mail
from mailsync.mailboxes.placement import refresh_mailboxes
from mailsync.models import EmailMessage, Mailbox, MailSettings
from mailsync.sync import outbox
from mailsync.sync.outbox import ARCHIVE, DELETE, MOVE_TO_INBOX, OPTIONAL_ON_SERVER, READ, UNREAD
from mailsync.sync.tasks import replay_after_commit

from .inbox import MAILBOXES, own_entries

LABELS = {
    READ: "Mark read",
    UNREAD: "Mark unread",
    ARCHIVE: "Archive",
    MOVE_TO_INBOX: "Move to Inbox",
    DELETE: "Delete",
}
DONE = {
    READ: "marked read",
    UNREAD: "marked unread",
    ARCHIVE: "archived",
    MOVE_TO_INBOX: "moved to the Inbox",
    DELETE: "deleted",
}
ACTIONS_BY_MAILBOX = {
    Mailbox.INBOX: (READ, UNREAD, ARCHIVE, DELETE),
    Mailbox.BULK: (READ, UNREAD, ARCHIVE, MOVE_TO_INBOX, DELETE),
    # Delivery reports are evidence of what happened to sent mail: moved or archived, never deleted from here.
    Mailbox.REPORTS: (READ, UNREAD, ARCHIVE, MOVE_TO_INBOX),
    Mailbox.SENT: (READ, UNREAD, DELETE),
    Mailbox.ARCHIVE: (READ, UNREAD, MOVE_TO_INBOX, DELETE),
    Mailbox.TRASH: (READ, UNREAD, MOVE_TO_INBOX, DELETE),
}
DELETE_WARNING = "Deleted emails cannot be restored in the CRM unless they are synced again from your mail provider."


@dataclass(frozen=True)
class Selection:
    """The part of a request the user may act on."""

    thread_ids: list[int]
    message_ids: list[int]
    refused: int  # requested ids that are not the user's conversations in this list


@dataclass(frozen=True)
class ActionResult:
    action: str
    threads: int
    messages: int
    refused: int
    on_server: bool  # the mail account is changed too (after the commit)
    waiting: int = 0  # accounts that are paused / need re-authentication: changed when they sync again

    def summary(self) -> str:
        noun = "conversation" if self.threads == 1 else "conversations"
        text = f"{self.threads} {noun} {DONE[self.action]}."
        if self.on_server and self.action in OPTIONAL_ON_SERVER:
            if self.waiting:
                text += " Your mail account is updated when its sync runs again (it is paused or needs attention)."
            else:
                text += " Your mail account is updated too."
        return text


def allowed_actions(mailbox: str) -> tuple[str, ...]:
    return ACTIONS_BY_MAILBOX.get(mailbox, ())


def _parse_ids(raw_ids: set[str]) -> set[int]:
    return parse_ids(raw_ids)


def select(user: User, *, mailbox: str, thread_ids, action: str) -> Selection:
    """The requested threads that are the user's own in this list, and the messages the action touches."""
    raw = {str(value).strip() for value in thread_ids}
    requested = _parse_ids(raw)
    own = sorted(
        set(own_entries(user).filter(mailbox=mailbox, thread_id__in=requested).values_list("thread_id", flat=True))
    )
    messages = EmailMessage.objects.filter(
        thread_id__in=own, thread__owner=user, deleted_at__isnull=True, is_blocked=False
    )
    if action != DELETE:
        messages = messages.filter(mailbox=mailbox)
    return Selection(
        thread_ids=own,
        message_ids=sorted(messages.values_list("pk", flat=True)),
        refused=len(raw) - len(own),
    )


def _validate(mailbox: str, action: str) -> None:
    if mailbox not in MAILBOXES:
        raise ValidationError("Unknown mailbox.")
    if action not in allowed_actions(mailbox):
        raise ValidationError(f"This action is not available in {MAILBOXES[mailbox]}.")


def preview(user: User, *, mailbox: str, action: str, thread_ids) -> Selection:
    """What an action would change (for the delete confirmation); nothing is written."""
    _validate(mailbox, action)
    return select(user, mailbox=mailbox, thread_ids=thread_ids, action=action)


@transaction.atomic
def apply_bulk_action(*, user: User, mailbox: str, action: str, thread_ids) -> ActionResult:
    """Apply `action` to the user's conversations `thread_ids` in `mailbox` (CRM now, server after commit)."""
    _validate(mailbox, action)
    # The owner's mail lock, as ingestion takes it: a batch arriving meanwhile waits, then sees this state.
    lock_owner_mail(user.pk)
    selection = select(user, mailbox=mailbox, thread_ids=thread_ids, action=action)
    ids = selection.message_ids
    if ids:
        messages = EmailMessage.objects.filter(pk__in=ids)
        if action == READ:
            messages.update(is_read=True)
        elif action == UNREAD:
            messages.update(is_read=False)
        elif action == ARCHIVE:
            messages.update(is_archived=True, restored_to_inbox=False)
        elif action == MOVE_TO_INBOX:
            messages.update(is_archived=False, restored_to_inbox=True)
        elif action == DELETE:
            # "user": a deletion in the CRM that a later sync never undoes (engine._restore_reappeared).
            messages.update(deleted_at=timezone.now(), deletion_source="user")
        refresh_mailboxes(ids)
    on_server = bool(ids) and (action not in OPTIONAL_ON_SERVER or applies_on_server(user))
    waiting = 0
    if on_server:
        queued = outbox.queue_on_server(action=action, message_ids=ids)
        replay_after_commit(queued.replay_now)
        waiting = queued.waiting
    return ActionResult(
        action=action,
        threads=len(selection.thread_ids),
        messages=len(ids),
        refused=selection.refused,
        on_server=on_server,
        waiting=waiting,
    )


# Conversations per transaction when an action applies to a whole filtered list ("select all N matching").
BATCH_THREADS = 500


def apply_in_batches(*, user: User, mailbox: str, action: str, thread_ids: list[int]) -> ActionResult:
    """apply_bulk_action over any number of conversations, BATCH_THREADS per transaction, so that a list
    of 100,000 never holds the owner's mail lock (which ingestion waits for) in one long transaction."""
    _validate(mailbox, action)
    results = [
        apply_bulk_action(
            user=user, mailbox=mailbox, action=action, thread_ids=thread_ids[start : start + BATCH_THREADS]
        )
        for start in range(0, len(thread_ids), BATCH_THREADS)
    ]
    return ActionResult(
        action=action,
        threads=sum(result.threads for result in results),
        messages=sum(result.messages for result in results),
        refused=sum(result.refused for result in results),
        on_server=any(result.on_server for result in results),
        waiting=max((result.waiting for result in results), default=0),
    )


def applies_on_server(user: User) -> bool:
    return MailSettings.objects.filter(user=user, apply_actions_on_server=True).exists()
