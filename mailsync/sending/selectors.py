"""Reads of sending, with the access rules: an outgoing message (draft, queued, failed...) is its owner's
alone: nobody else, a company admin included, may open, change or send it, nor send from someone
else's account. What others see of sent mail is the stored message, by the normal thread rules."""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import Q, QuerySet

from contacts.models import Person, PersonEmail
from crm.models import User
from mailsync.linking import access
from mailsync.models import (
    DeliveryFailure,
    EmailAccount,
    EmailMessage,
    MessageParticipant,
    OutgoingAttachment,
    OutgoingMessage,
    TrackingEvent,
)

from . import tracking

AUTOCOMPLETE_LIMIT = 8


def sendable_accounts(user: User) -> QuerySet[EmailAccount]:
    """The user's own accounts that have an outgoing server (removed ones excluded)."""
    if not user.is_authenticated:
        return EmailAccount.objects.none()
    return (
        EmailAccount.objects.filter(user=user)
        .exclude(state=EmailAccount.State.REMOVED)
        .exclude(smtp_host="")
        .order_by("email_address")
    )


def outgoing_for(user: User) -> QuerySet[OutgoingMessage]:
    if not user.is_authenticated:
        return OutgoingMessage.objects.none()
    return OutgoingMessage.objects.filter(owner=user, account__user=user)


def get_outgoing_for_user(user: User, pk: int) -> OutgoingMessage:
    """The user's own outgoing message; OutgoingMessage.DoesNotExist (-> 404) for anyone else's."""
    return outgoing_for(user).select_related("account").get(pk=pk)


def get_outgoing_attachment_for_user(user: User, pk: int) -> OutgoingAttachment:
    return OutgoingAttachment.objects.select_related("message").get(
        pk=pk, message__owner=user, message__account__user=user
    )


def untouched_drafts() -> QuerySet[OutgoingMessage]:
    """Drafts the user never typed in: a composer opened from a link or a Reply button and left
    (not listed; cleanup.discard_untouched_drafts deletes them after a day)."""
    return OutgoingMessage.objects.filter(state=OutgoingMessage.State.DRAFT, edited=False)


def drafts_for(user: User) -> QuerySet[OutgoingMessage]:
    return (
        outgoing_for(user).filter(state=OutgoingMessage.State.DRAFT).filter(edited=True).order_by("-updated_at", "-pk")
    )


def outbox_for(user: User) -> QuerySet[OutgoingMessage]:
    """Mail on its way out, or that could not go: what the Sent list shows above the sent mail."""
    return outgoing_for(user).filter(
        state__in=[OutgoingMessage.State.QUEUED, OutgoingMessage.State.SENDING, OutgoingMessage.State.FAILED]
    )


def get_source_message(user: User, pk: int) -> EmailMessage:
    """A message the user may reply to or forward: one they may see (EmailMessage.DoesNotExist otherwise)."""
    return access.visible_messages(user).select_related("thread", "account").get(pk=pk)


def state_of_sent_messages(user: User, message_ids: list[int]) -> dict[int, OutgoingMessage]:
    """The outgoing row behind each of these stored messages the user sent from the CRM (for the thread view)."""
    return {
        outgoing.sent_message_id: outgoing for outgoing in outgoing_for(user).filter(sent_message_id__in=message_ids)
    }


def address_suggestions(user: User, query: str) -> list[tuple[str, str]]:
    """(name, address) for the To / Cc / Bcc autocomplete: people of the CRM the user may see, then the
    user's recent correspondents (addresses in mail they may see), matching `query`."""
    query = query.strip()
    if len(query) < 2:
        return []
    found: dict[str, str] = {}
    people = (
        PersonEmail.objects.filter(person__in=Person.objects.visible_to(user))
        .filter(
            Q(email__icontains=query) | Q(person__first_name__icontains=query) | Q(person__last_name__icontains=query)
        )
        .select_related("person")
        .order_by("-is_primary", "email")[:AUTOCOMPLETE_LIMIT]
    )
    for item in people:
        found.setdefault(item.email, f"{item.person.first_name} {item.person.last_name}".strip())
    if len(found) < AUTOCOMPLETE_LIMIT:
        recent = (
            MessageParticipant.objects.filter(message__in=access.visible_messages(user).filter(account__user=user))
            .filter(Q(address__icontains=query) | Q(name__icontains=query))
            .order_by("-message__date")
            .values_list("address", "name")[:50]
        )
        own = {account.email_address.lower() for account in sendable_accounts(user)}
        for address, name in recent:
            if address.lower() not in own and len(found) < AUTOCOMPLETE_LIMIT:
                found.setdefault(address, name)
    return [(name, address) for address, name in found.items()]


def delivery_failures_of(message_ids: Iterable[int]) -> dict[int, list[DeliveryFailure]]:
    """message pk -> what delivery reports say about it: the newest report per recipient (a delay notice
    followed by the final bounce shows the bounce). One query.

    The caller has already checked that the user may see these messages: the delivery outcome of a message
    is seen by whoever may see its thread, never more. The report itself stays in its owner's mailbox
    (Delivery reports): only the recipient, the outcome, the status and the server's diagnostic show here."""
    ids = [int(pk) for pk in message_ids if pk]
    if not ids:
        return {}
    result: dict[int, dict[str, DeliveryFailure]] = {}
    for failure in DeliveryFailure.objects.filter(sent_message_id__in=ids).order_by("reported_at", "pk"):
        result.setdefault(failure.sent_message_id, {})[failure.recipient] = failure
    return {pk: sorted(by_recipient.values(), key=lambda f: f.recipient) for pk, by_recipient in result.items()}


def tracking_of(message_ids: Iterable[int]) -> dict[int, tracking.TrackingSummary]:
    """sent message pk -> what its tracking saw ("Opened 3 times (1 likely by a person), clicked 'pricing'"),
    for the messages sent from the CRM with tracking on. Two queries.

    The caller has already checked that the user may see these messages: tracking data of a message is
    seen by whoever may see its thread, never more."""
    ids = [int(pk) for pk in message_ids if pk]
    if not ids:
        return {}
    tracked = dict(
        OutgoingMessage.objects.filter(sent_message_id__in=ids, tracking=True).values_list("pk", "sent_message_id")
    )
    if not tracked:
        return {}
    events: dict[int, list[TrackingEvent]] = {pk: [] for pk in tracked}
    for event in TrackingEvent.objects.filter(outgoing_id__in=list(tracked)).select_related("link"):
        events[event.outgoing_id].append(event)
    return {tracked[pk]: tracking.summarize(items) for pk, items in events.items()}


def recent_tracking_activity(user: User, *, limit: int = 8) -> list[TrackingEvent]:
    """The newest opens and clicks likely by a person of the user's own tracked mail (the dashboard's
    "activity"): only the sender sees them here."""
    if not user.is_authenticated:
        return []
    return list(
        TrackingEvent.objects.filter(outgoing__owner=user, verdict=TrackingEvent.Verdict.PERSON)
        .select_related("outgoing", "outgoing__sent_message", "link")
        .order_by("-occurred_at", "-pk")[:limit]
    )


def tracking_of_threads(thread_ids: Iterable[int]) -> dict[int, tracking.TrackingSummary]:
    """thread pk -> what tracking saw of the tracked mail sent in it (all its tracked messages together), for
    a record's timeline. Two queries for the whole page. The caller has checked that the user may see the
    threads (the timeline only lists visible ones)."""
    ids = [int(pk) for pk in thread_ids if pk]
    if not ids:
        return {}
    thread_of = dict(
        OutgoingMessage.objects.filter(sent_message__thread_id__in=ids, tracking=True).values_list(
            "pk", "sent_message__thread_id"
        )
    )
    if not thread_of:
        return {}
    events: dict[int, list[TrackingEvent]] = {thread_id: [] for thread_id in thread_of.values()}
    for event in TrackingEvent.objects.filter(outgoing_id__in=list(thread_of)).select_related("link"):
        events[thread_of[event.outgoing_id]].append(event)
    return {thread_id: tracking.summarize(items) for thread_id, items in events.items()}
