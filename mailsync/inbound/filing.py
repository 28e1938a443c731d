"""One Smart BCC message -> filed into the CRM, or listed under "Not filed" with the reason.

Both inbound paths (webhooks, SMTP receiver) call `file_message` with the raw message, the envelope
recipient (a BCC address is only in the envelope) and the SPF / DKIM verdicts they have.

Rules, in order:
1. The recipient must be a Smart BCC address (else: nothing is recorded; the SMTP receiver has already
   refused it at RCPT time). A retired address files nothing: "Sent to a Smart BCC address you replaced".
2. The From address must be the user's login address, an address (or alias) of one of their connected
   accounts, or a confirmed alternate. Anything else is not filed, "unconfirmed" when it is an
   alternate still waiting for its confirmation.
3. Where the inbound path reported them, SPF and DKIM must not both fail for the From domain (a forged
   From passes neither).
4. Filing is ingestion, as for synced mail (mailsync.sync.ingest): threading, placement (Sent), linking and
   the default visibility, attachments, and its identity rules. The message goes into the account the
   sender's address belongs to, so that its copy in that account's Sent folder (synced before or after)
   is the same message, one row. A sender with no connected account (login address, alternates) gets a
   mailbox-less account row of its own (provider "smart_bcc", never synced: state "removed", which
   every sync, watcher and server action skips); connecting that mailbox later re-activates the same
   row, so its Sent copies meet the filed ones there too. A copy of the message the owner already has in
   any account (same Message-ID and same content: `same_content`) is not stored twice: the delivery
   points at it. Where ingestion fingerprints content, a newly filed message is left without a
   fingerprint (`_await_server_copy`), so the Sent copy synced later is taken for it, not kept apart.
5. A SmartBccDelivery row records every filed message ("via Smart BCC") and every refusal ("Not filed").

Delivering the same message twice (a provider's retry) files it once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from django.db import transaction
from django.db.models import Q

from crm.addresses import normalize_email
from mailsync.models import EmailAccount, EmailMessage, SmartBccAddress, SmartBccDelivery
from mailsync.sync.ingest import ingest_raw, own_addresses_for
from mailsync.sync.parsing import ParsedEmail, parse_message

from . import selectors, services
from .authentication import AuthResults

logger = logging.getLogger(__name__)

SMART_BCC_PROVIDER = "smart_bcc"
Reason = SmartBccDelivery.Reason
Status = SmartBccDelivery.Status


@dataclass(frozen=True)
class InboundMail:
    raw: bytes
    recipient: str
    channel: str
    envelope_sender: str = ""
    event_id: str = ""
    auth: AuthResults = field(default_factory=AuthResults)


@dataclass(frozen=True)
class FilingOutcome:
    status: str  # "filed", "not_filed", or "unknown_recipient" (nothing recorded)
    reason: str = ""
    message_id: int | None = None
    delivery_id: int | None = None

    @property
    def filed(self) -> bool:
        return self.status == Status.FILED


UNKNOWN_RECIPIENT = FilingOutcome(status="unknown_recipient")


def file_message(mail: InboundMail) -> FilingOutcome:
    address = selectors.address_for_recipient(mail.recipient)
    if address is None:
        logger.info("Smart BCC: no address %r; message dropped", mail.recipient[:320])
        return UNKNOWN_RECIPIENT
    user = address.user
    parsed = parse_message(mail.raw)
    sender = normalize_email(parsed.from_address)

    if address.retired_at is not None:
        return _not_filed(mail, address, parsed, Reason.RETIRED_ADDRESS)
    senders = selectors.sender_addresses(user)
    if not sender or sender not in senders.accepted:
        reason = Reason.UNCONFIRMED_SENDER if sender in senders.pending else Reason.UNKNOWN_SENDER
        return _not_filed(mail, address, parsed, reason)
    if mail.auth.both_failed:
        return _not_filed(mail, address, parsed, Reason.FAILED_AUTHENTICATION)

    with transaction.atomic():
        message_id = _stored_copy(user.pk, parsed)
        if message_id is None:
            account = _account_for_sender(user, sender)
            own = own_addresses_for(account) | senders.accepted
            result = ingest_raw(account, [mail.raw], flags=("\\Seen",), own_addresses=own)
            message_id = result.message_ids[0]
            if result.created:
                _await_server_copy(account, message_id, parsed.message_key)
        delivery, _created = SmartBccDelivery.objects.get_or_create(
            user=user,
            message_id=message_id,
            defaults=_delivery_fields(mail, address, parsed, Status.FILED, Reason.NONE),
        )
    logger.info("Smart BCC: message %s filed for user %s via %s", message_id, user.pk, mail.channel)
    return FilingOutcome(status=Status.FILED, message_id=message_id, delivery_id=delivery.pk)


def _stored_copy(owner_id: int, parsed: ParsedEmail) -> int | None:
    """The owner's stored copy of this message, in any of their accounts: the same Message-ID key and
    the same content once the differences a trip through the Internet makes are set aside (`same_content`).
    A different message that reuses the Message-ID is not a copy."""
    candidates = list(
        EmailMessage.objects.filter(account__user_id=owner_id, message_key=parsed.message_key)
        .order_by("pk")
        .prefetch_related("attachments")
    )
    return next((message.pk for message in candidates if same_content(message, parsed)), None)


def same_content(stored: EmailMessage, parsed: ParsedEmail) -> bool:
    """Is `parsed` (a BCC copy) the message `stored` (e.g. the sender's Sent copy)?

    The two never have the same bytes: the BCC copy gained trace headers and a DKIM-Signature on its
    way, the Sent copy keeps the Bcc header the client wrote. What the sender wrote is the same: From,
    Subject, Date, the text and the attachments (parsed by the same parser, so compared as parsed)."""
    if normalize_email(stored.from_address) != normalize_email(parsed.from_address):
        return False
    if (stored.subject or "") != (parsed.subject or ""):
        return False
    if parsed.date is not None and stored.date is not None and abs((stored.date - parsed.date).total_seconds()) > 1:
        return False
    if _text(stored.body_text) != _text(parsed.body_text):
        return False
    stored_files = sorted((a.filename, a.size) for a in stored.attachments.all())
    return stored_files == sorted((a.filename[:500], a.size) for a in parsed.attachments)


def _text(value: str) -> str:
    return " ".join((value or "").split())


def _await_server_copy(account: EmailAccount, message_id: int, message_key: str) -> None:
    """Let the sender's Sent copy, synced later, be this message.

    The BCC copy's content fingerprint is never the Sent copy's (trace headers and a DKIM-Signature on
    one, the Bcc header on the other), so ingestion would keep the two apart. A message whose
    fingerprint is not known yet (content_hash "") is taken by the next copy with its Message-ID that
    ingestion meets in the account (mailsync.sync.ingest.match_identities), which records its own."""
    waiting = EmailMessage.objects.filter(account=account, message_key=message_key, content_hash="")
    if waiting.exists():
        return  # another filed message with this Message-ID already waits for its copy
    EmailMessage.objects.filter(pk=message_id).update(content_hash="")


def _account_for_sender(user, sender: str) -> EmailAccount:
    """The connected account the sender's address belongs to, else the sender's mailbox-less row."""
    account = (
        EmailAccount.objects.filter(user=user)
        .exclude(state=EmailAccount.State.REMOVED)
        .filter(Q(email_address__iexact=sender) | Q(addresses__address__iexact=sender))
        .order_by("pk")
        .first()
    )
    if account is not None:
        return account
    account, _created = EmailAccount.objects.get_or_create(
        user=user,
        email_address=sender,
        defaults={
            "provider": SMART_BCC_PROVIDER,
            "username": sender,
            "state": EmailAccount.State.REMOVED,
            "display_name": "Smart BCC",
        },
    )
    return account


def _delivery_fields(mail: InboundMail, address: SmartBccAddress, parsed: ParsedEmail, status: str, reason: str):
    return {
        "address": address,
        "status": status,
        "reason": reason,
        "channel": mail.channel[:20],
        "event_id": (mail.event_id or "")[:200],
        "from_address": (parsed.from_address or "")[:320],
        "subject": (parsed.subject or "")[:300],
        "message_id_header": (parsed.message_id or "")[:998],
        "envelope_sender": (mail.envelope_sender or "")[:320],
        "spf": mail.auth.spf,
        "dkim": mail.auth.dkim,
    }


def _not_filed(mail: InboundMail, address: SmartBccAddress, parsed: ParsedEmail, reason: str) -> FilingOutcome:
    user_id = address.user_id
    if mail.event_id:
        repeated = SmartBccDelivery.objects.filter(user_id=user_id, channel=mail.channel, event_id=mail.event_id)
        existing = repeated.values_list("pk", flat=True).first()
        if existing is not None:  # the provider retried a delivery already listed
            return FilingOutcome(status=Status.NOT_FILED, reason=reason, delivery_id=existing)
    delivery = SmartBccDelivery.objects.create(
        user_id=user_id, **_delivery_fields(mail, address, parsed, Status.NOT_FILED, reason)
    )
    services.prune_not_filed(user_id)
    logger.info("Smart BCC: message for user %s not filed (%s)", user_id, reason)
    return FilingOutcome(status=Status.NOT_FILED, reason=reason, delivery_id=delivery.pk)
