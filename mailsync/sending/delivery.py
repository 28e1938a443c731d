"""Delivery of a queued message through its owner's account: never twice, never lost.

    deliver(outgoing_id)   what the task runs (and the beat sweep, for what is due or was left behind)

1. The message's delivery lock (a PostgreSQL session advisory lock, freed when a killed worker's
   connection dies; elsewhere a lease on `sending_started_at`) keeps two workers off one message.
2. Claim, in a short transaction: queued and due -> sending. A message found in "sending" was left by a
   worker that died: it is recovered (3) before anything is sent again.
3. Recovery: if the server had not confirmed it (`delivered_at` empty), its Message-ID is looked for in
   the Sent folder. Found: it left; nothing is sent. Not found, and the provider files what it sends in
   Sent itself: it never reached the server; it is sent now. Not found elsewhere: nobody can know
   whether the server took it, so it is not sent again by itself: it fails as "delivery uncertain" with
   Retry (the same bytes and Message-ID). Sent folder unreachable, or the claim younger than
   FILING_GRACE (the provider may still be filing it): it waits for the next sweep.
4. Sending: SMTP with password or XOAUTH2 (protocols.smtp); the server's acceptance is written at once
   (`delivered_at`, refused recipients). A classified error fails the message with the reason (and an
   authentication error also marks the account, as a sync would).
5. The CRM's copy: the exact bytes are ingested like synced mail (same identity as the copy a sync will
   find), so the message shows in Sent and in its thread at once; a new conversation started from a
   record is linked to it. Then state "sent".
6. The Sent copy, exactly once: nothing to do where the provider files sent mail itself; elsewhere the
   Sent folder is searched for the Message-ID and the bytes appended only if absent. A failure here
   leaves `sent_copy` pending for the sweep; the message is sent either way.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import timedelta

from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from mailsync.accounts.providers import get_preset
from mailsync.connection.config import account_imap_config, account_smtp_config
from mailsync.connection.state import record_connection_failure
from mailsync.linking.rules import MANUAL, target_field_for
from mailsync.models import MailFolder, OutgoingMessage, ThreadLink
from mailsync.protocols import errors, imap, smtp
from mailsync.protocols.imap import assign_roles
from mailsync.sync.ingest import ingest_raw
from mailsync.sync.lock import session_lock
from mailsync.sync.parsing import message_id_from_header, normalize_message_id

logger = logging.getLogger(__name__)

State = OutgoingMessage.State
SentCopy = OutgoingMessage.SentCopy
DELIVERY_LOCK_NAMESPACE = 0x73656E64  # "send"
# Without advisory locks (SQLite): a message in "sending" for longer than this was left by a dead worker.
LEASE = timedelta(minutes=10)
# A provider that files sent mail itself may take a moment to do so: a message left in "sending" more
# recently than this is not judged by its absence from Sent yet.
FILING_GRACE = timedelta(minutes=2)
# The sweep retries a pending Sent copy for this long after sending.
SENT_COPY_RETRY_WINDOW = timedelta(days=1)


@contextlib.contextmanager
def delivery_lock(outgoing_id: int) -> Iterator[bool]:
    """The message's delivery lock (see the module docstring); without PostgreSQL the lease in _claim."""
    if connection.vendor != "postgresql":
        yield True
        return
    with session_lock(DELIVERY_LOCK_NAMESPACE, outgoing_id) as acquired:
        yield acquired


def deliver(outgoing_id: int) -> str:
    """Move one message on as far as it can go now; returns its state (or "busy" / "missing")."""
    with delivery_lock(outgoing_id) as held:
        if not held:
            return "busy"
        claimed = _claim(outgoing_id)
        if claimed is None:
            outgoing = OutgoingMessage.objects.filter(pk=outgoing_id).first()
            return outgoing.state if outgoing is not None else "missing"
        outgoing, left_behind = claimed
        if outgoing.state == State.SENDING and outgoing.delivered_at is None:
            if left_behind and not _recovered(outgoing):
                return _current_state(outgoing)
            if outgoing.delivered_at is None and not _send(outgoing):
                return _current_state(outgoing)
        if outgoing.state == State.SENDING:
            _store_sent(outgoing)
        if outgoing.sent_copy == SentCopy.PENDING:
            _file_sent_copy(outgoing)
        return _current_state(outgoing)


def _current_state(outgoing: OutgoingMessage) -> str:
    return OutgoingMessage.objects.filter(pk=outgoing.pk).values_list("state", flat=True).first() or "missing"


def _claim(outgoing_id: int) -> tuple[OutgoingMessage, bool] | None:
    now = timezone.now()
    with transaction.atomic():
        outgoing = (
            OutgoingMessage.objects.select_for_update()
            .select_related("account", "owner")
            .filter(pk=outgoing_id)
            .first()
        )
        if outgoing is None:
            return None
        if outgoing.state == State.QUEUED and outgoing.send_at is not None and outgoing.send_at <= now:
            outgoing.state = State.SENDING
            outgoing.sending_started_at = now
            outgoing.attempts += 1
            outgoing.save(update_fields=["state", "sending_started_at", "attempts", "updated_at"])
            return outgoing, False
        if outgoing.state == State.SENDING:
            if connection.vendor != "postgresql" and outgoing.sending_started_at > now - LEASE:
                return None  # perhaps still being sent by a live worker
            return outgoing, True
        if outgoing.state == State.SENT and outgoing.sent_copy == SentCopy.PENDING:
            return outgoing, False
    return None


def _files_sent_mail(outgoing: OutgoingMessage) -> bool:
    preset = get_preset(outgoing.account.provider)
    return preset is not None and preset.files_sent_mail


def _fail(outgoing: OutgoingMessage, error: errors.MailError, *, refused: list | None = None) -> None:
    OutgoingMessage.objects.filter(pk=outgoing.pk).update(
        state=State.FAILED,
        error_code=error.code[:40],
        error_message=error.message,
        error_fix=error.fix,
        error_detail=error.detail,
        refused_recipients=refused or [],
        updated_at=timezone.now(),
    )
    outgoing.state = State.FAILED
    if error.needs_reauth:
        record_connection_failure(account=outgoing.account, error=error)


def _mark_delivered(outgoing: OutgoingMessage, refused: list[dict], *, sent_copy: str = "") -> None:
    outgoing.delivered_at = timezone.now()
    outgoing.refused_recipients = refused
    fields = {"delivered_at": outgoing.delivered_at, "refused_recipients": refused, "updated_at": timezone.now()}
    if sent_copy:
        outgoing.sent_copy = fields["sent_copy"] = sent_copy
    OutgoingMessage.objects.filter(pk=outgoing.pk).update(**fields)


def _refused_list(refused: dict[str, tuple[int, str]]) -> list[dict]:
    return [{"address": address, "code": code, "reason": text} for address, (code, text) in refused.items()]


def _send(outgoing: OutgoingMessage) -> bool:
    """Hand the bytes to the SMTP server; True when it accepted them."""
    try:
        config = account_smtp_config(outgoing.account)
        client = smtp.connect(config)
        try:
            refused = smtp.send_message(
                client,
                config,
                sender=outgoing.account.email_address,
                recipients=list(outgoing.envelope_recipients),
                data=bytes(outgoing.mime),
            )
        finally:
            with contextlib.suppress(Exception):
                client.quit()
    except errors.DeliveryUncertain as error:
        # Like a worker killed at that moment: the Sent folder may tell; otherwise the user decides.
        logger.warning("delivery of outgoing %s uncertain: %s", outgoing.pk, error.detail)
        return _recovered(outgoing, uncertain=error)
    except errors.RecipientsRefused as error:
        _fail(outgoing, error, refused=_refused_list(error.refused))
        return False
    except errors.MailError as error:
        _fail(outgoing, error)
        return False
    _mark_delivered(outgoing, _refused_list(refused))
    return True


def _recovered(outgoing: OutgoingMessage, *, uncertain: errors.MailError | None = None) -> bool:
    """A message whose delivery was interrupted: True when it may go on (found in Sent: delivered; or
    certainly not delivered: sent now), False when it failed or must wait for the next sweep."""
    found = _look_in_sent(outgoing)
    if found is None:
        return False  # cannot tell now: stays "sending", the sweep comes back
    if found:
        _mark_delivered(outgoing, [], sent_copy=SentCopy.FOUND)
        return True
    if _files_sent_mail(outgoing) and uncertain is None:
        if outgoing.sending_started_at and outgoing.sending_started_at > timezone.now() - FILING_GRACE:
            return False  # the provider may not have filed it yet: the sweep looks again a little later
        return _send(outgoing)
    _fail(outgoing, uncertain or errors.DeliveryUncertain(protocol="smtp"))
    return False


def _sent_folder(outgoing: OutgoingMessage, session: imap.ImapSession) -> str:
    known = (
        MailFolder.objects.filter(account=outgoing.account, role=MailFolder.Role.SENT, exists_on_server=True)
        .values_list("name", flat=True)
        .first()
    )
    if known:
        return known
    for folder in assign_roles(session.list_folders()):
        if folder.role == "sent":
            return folder.name
    return ""


def _find(session: imap.ImapSession, message_id: str) -> bool:
    uids = session.search_message_ids([f"<{message_id}>"])
    if not uids:
        return False
    return any(
        message_id_from_header(item.raw) == normalize_message_id(f"<{message_id}>")
        for item in session.fetch_identities(uids)
    )


def _look_in_sent(outgoing: OutgoingMessage) -> bool | None:
    try:
        with imap.connect(account_imap_config(outgoing.account)) as session:
            name = _sent_folder(outgoing, session)
            if not name:
                return False
            session.select(name, readonly=True)
            return _find(session, outgoing.message_id)
    except errors.MailError as error:
        logger.warning("outgoing %s: cannot look in Sent: %s", outgoing.pk, error)
        return None


def _store_sent(outgoing: OutgoingMessage) -> None:
    """The CRM's copy (the very bytes sent) in the owner's mail, linked like the conversation it joins."""
    result = ingest_raw(outgoing.account, [bytes(outgoing.mime)], flags=("\\Seen",))
    message_pk = result.message_ids[0]
    with transaction.atomic():
        locked = OutgoingMessage.objects.select_for_update().get(pk=outgoing.pk)
        locked.sent_message_id = message_pk
        locked.state = State.SENT
        locked.sent_at = timezone.now()
        if _files_sent_mail(outgoing) and locked.sent_copy == SentCopy.PENDING:
            locked.sent_copy = SentCopy.PROVIDER
        locked.save()
        record = next((getattr(locked, name) for name in ("deal", "lead", "project", "person", "organization")
                       if getattr(locked, f"{name}_id")), None)  # fmt: skip
        if record is not None:
            _link(locked, record)
    outgoing.state, outgoing.sent_copy, outgoing.sent_message_id = locked.state, locked.sent_copy, message_pk


def _link(outgoing: OutgoingMessage, record) -> None:
    thread_id = outgoing.sent_message.thread_id
    field = target_field_for(record)
    ThreadLink.objects.update_or_create(
        thread_id=thread_id,
        **{field: record},
        defaults={"state": ThreadLink.State.LINKED, "rule": MANUAL, "reason": f"Sent from {record}"[:300]},
        create_defaults={
            "state": ThreadLink.State.LINKED,
            "rule": MANUAL,
            "reason": f"Sent from {record}"[:300],
            "created_by": outgoing.owner,
        },
    )


def _file_sent_copy(outgoing: OutgoingMessage) -> None:
    if _files_sent_mail(outgoing):
        OutgoingMessage.objects.filter(pk=outgoing.pk).update(sent_copy=SentCopy.PROVIDER)
        return
    try:
        with imap.connect(account_imap_config(outgoing.account)) as session:
            name = _sent_folder(outgoing, session)
            if not name:
                outcome = SentCopy.NO_FOLDER
            else:
                session.select(name)
                if _find(session, outgoing.message_id):
                    outcome = SentCopy.FOUND
                else:
                    session.append(name, bytes(outgoing.mime), flags=["\\Seen"], internaldate=outgoing.delivered_at)
                    outcome = SentCopy.APPENDED
    except errors.MailError as error:
        logger.warning("outgoing %s: Sent copy not filed yet: %s", outgoing.pk, error)
        return
    OutgoingMessage.objects.filter(pk=outgoing.pk).update(sent_copy=outcome)
    outgoing.sent_copy = outcome


def due_ids() -> list[int]:
    """What the beat sweep hands to the task: due queued mail, mail left in "sending" (the lock tells
    whether its worker still lives), and sent mail whose Sent copy is still to be filed."""
    now = timezone.now()
    sending = Q(state=State.SENDING)
    if connection.vendor != "postgresql":
        sending &= Q(sending_started_at__lt=now - LEASE)
    return list(
        OutgoingMessage.objects.filter(
            Q(state=State.QUEUED, send_at__lte=now)
            | sending
            | Q(state=State.SENT, sent_copy=SentCopy.PENDING, sent_at__gte=now - SENT_COPY_RETRY_WINDOW)
        )
        .order_by("send_at", "pk")
        .values_list("pk", flat=True)[:500]
    )
