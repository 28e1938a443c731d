"""Delivery reports at ingestion: a bounce (parsing found a BounceReport) -> DeliveryFailure rows, matched to
the owner's message that bounced, and the person's address marked as bouncing.

Runs inside ingestion's transaction, in a savepoint of its own: bad input (a malformed report, a report
about nobody's message, a database error here) is logged and loses nothing: the report is stored and
listed in Delivery reports like any message, and the sync goes on.

Matching, among the owner's own messages (every mailbox of the owner; a message sent from the CRM is
ingested as one at once):
1. the Message-ID the report encloses;
2. else a message the owner sent to that recipient with the same subject (Re:/Fwd: aside), the newest
   one not after the report.
The sent copy may be stored after its report (a folder synced later, an import): every batch also looks
up the unmatched failures whose enclosed Message-ID is one of its new messages.

The address is marked as bouncing (contacts.PersonEmail.bouncing_since) only for a permanent failure of a
matched message (a report about mail the owner never sent is backscatter from a forged sender) whose
status says the address itself failed: 5.1.x (bad mailbox / address), 5.2.x (mailbox disabled, full), or
a report without a specific status. Policy and network refusals (5.7.x spam / authentication, 5.4.x
routing, 5.3.x, 5.5.x) say nothing about the address.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from contacts.models import PersonEmail
from mailsync.models import DeliveryFailure, EmailMessage, MessageParticipant

from .parsing import SENT, ParsedEmail, normalize_message_id
from .threads import normalize_subject

logger = logging.getLogger(__name__)

RECIPIENT_ROLES = (MessageParticipant.Role.TO, MessageParticipant.Role.CC, MessageParticipant.Role.BCC)


def record_delivery_reports(owner_id: int, created: Sequence[tuple[int, ParsedEmail]]) -> None:
    """For messages just stored (pk, parsed): record the failures the reports among them name and match
    them; match earlier failures to the new messages they are about. Never raises."""
    reports = [(pk, parsed) for pk, parsed in created if parsed.bounce is not None and parsed.direction != SENT]
    # Late copies: only mail the owner sent can be what a report is about (no query for received mail).
    message_ids = {
        parsed.message_id: pk
        for pk, parsed in created
        if parsed.message_id and parsed.bounce is None and parsed.direction == SENT
    }
    if not reports and not message_ids:
        return
    try:
        with transaction.atomic():
            if reports:
                _record(owner_id, reports)
            if message_ids:
                _match_late_copies(owner_id, message_ids)
    except Exception:
        logger.exception("delivery reports of owner %s not recorded; the messages are stored as they are", owner_id)


def is_address_failure(status: str) -> bool:
    """Does a permanent failure with this enhanced status say the address itself does not work?"""
    return not status or status.startswith(("5.0.", "5.1.", "5.2."))


def _record(owner_id: int, reports: list[tuple[int, ParsedEmail]]) -> None:
    now = timezone.now()
    rows = []
    for pk, parsed in reports:
        bounce = parsed.bounce
        original_id = normalize_message_id(f"<{bounce.original_message_id}>") if bounce.original_message_id else ""
        for recipient in bounce.recipients:
            rows.append(
                DeliveryFailure(
                    owner_id=owner_id,
                    report_id=pk,
                    recipient=recipient.address[:320],
                    permanent=recipient.permanent,
                    status=recipient.status[:12],
                    action=recipient.action[:20],
                    diagnostic=recipient.diagnostic,
                    original_message_id=original_id[:998],
                    original_subject=bounce.original_subject,
                    reported_at=parsed.date or now,
                )
            )
    created = DeliveryFailure.objects.bulk_create(rows, ignore_conflicts=True)
    failures = list(
        DeliveryFailure.objects.filter(report_id__in=[pk for pk, _parsed in reports], sent_message__isnull=True)
    )
    if not created or not failures:
        return
    report_ids = {pk for pk, _parsed in reports}
    by_id = _messages_by_id(owner_id, {f.original_message_id for f in failures if f.original_message_id}, report_ids)
    matched = []
    for failure in failures:
        sent = by_id.get(failure.original_message_id) if failure.original_message_id else None
        if sent is None:
            sent = _message_by_recipient_and_subject(owner_id, failure, report_ids)
        if sent is not None:
            failure.sent_message_id = sent
            matched.append(failure)
    if matched:
        DeliveryFailure.objects.bulk_update(matched, ["sent_message"])
        _mark_bouncing(matched)


def _messages_by_id(owner_id: int, message_ids: set[str], exclude: set[int]) -> dict[str, int]:
    if not message_ids:
        return {}
    found: dict[str, int] = {}
    for pk, message_id, direction in (
        EmailMessage.objects.filter(thread__owner_id=owner_id, message_id__in=message_ids)
        .exclude(pk__in=exclude)
        .order_by("pk")
        .values_list("pk", "message_id", "direction")
    ):
        # Several copies stored apart: prefer the one the owner sent.
        if message_id not in found or direction == EmailMessage.Direction.SENT:
            found[message_id] = pk
    return found


def _message_by_recipient_and_subject(owner_id: int, failure: DeliveryFailure, exclude: set[int]) -> int | None:
    subject = normalize_subject(failure.original_subject or "")
    if not subject:
        return None
    candidates = (
        EmailMessage.objects.filter(
            thread__owner_id=owner_id,
            direction=EmailMessage.Direction.SENT,
            participants__address=failure.recipient,
            participants__role__in=RECIPIENT_ROLES,
        )
        .exclude(pk__in=exclude)
        .filter(Q(date__isnull=True) | Q(date__lte=failure.reported_at or timezone.now()))
        .order_by("-date", "-pk")
        .values_list("pk", "subject")[:20]
    )
    for pk, message_subject in candidates:
        if normalize_subject(message_subject) == subject:
            return pk
    return None


def _match_late_copies(owner_id: int, message_ids: dict[str, int]) -> None:
    waiting = list(
        DeliveryFailure.objects.filter(
            owner_id=owner_id, sent_message__isnull=True, original_message_id__in=list(message_ids)
        )
    )
    for failure in waiting:
        failure.sent_message_id = message_ids[failure.original_message_id]
    if waiting:
        DeliveryFailure.objects.bulk_update(waiting, ["sent_message"])
        _mark_bouncing(waiting)


def _mark_bouncing(failures: list[DeliveryFailure]) -> None:
    """The person's address is bouncing: the newest permanent address failure of each recipient wins."""
    newest: dict[str, DeliveryFailure] = {}
    for failure in failures:
        if not (failure.permanent and is_address_failure(failure.status)):
            continue
        kept = newest.get(failure.recipient)
        if kept is None or (failure.reported_at or timezone.now()) > (kept.reported_at or timezone.now()):
            newest[failure.recipient] = failure
    for address, failure in newest.items():
        PersonEmail.objects.filter(email__iexact=address).update(
            bouncing_since=failure.reported_at or timezone.now(),
            bounce_status=failure.status,
            bounce_diagnostic=failure.diagnostic[:500],
        )
