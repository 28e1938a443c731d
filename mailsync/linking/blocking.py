"""Blocked addresses and domains (SPEC F1): which received messages a user's block list hides.

A pattern is an exact normalised address ("ann@spam.example") or a whole domain ("@spam.example").
A domain pattern matches that exact domain only, not its subdomains: "@example.com" does not hide
mail from "news.example.com". Blocking more than the user wrote is the costly mistake (hidden mail
looks lost), and a subdomain is one more pattern away.

The rule: a received message is hidden only when
- every sender-side address (From and Sender) is blocked, and
- no recipient (To, Cc, Bcc) other than the owner's own addresses is left unblocked: a colleague or a
  customer in To/Cc keeps the message, the owner's own address in To (always there) does not.
Reply-To is deliberately ignored: it is written by the sender, so it proves nobody else takes part,
and counting it would let every newsletter with a Reply-To address escape its block.
A message the owner sent is never hidden.

`is_blocked` is stored on EmailMessage so every list, timeline and count filters on one column;
`recompute_blocked` rewrites it in two set-based UPDATEs whenever the block list changes, and
ingestion calls `recompute_blocked_for_threads` for new mail.
"""

import re
from collections import defaultdict
from collections.abc import Iterable

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, Q, QuerySet

from crm.addresses import normalize_domain, normalize_email
from crm.models import User
from mailsync.mailboxes.placement import refresh_user_mailboxes
from mailsync.mailboxes.tuning import tune_planner
from mailsync.models import BlockedAddress, EmailMessage, EmailThread, MessageParticipant

from .rules import own_addresses

SENDER_ROLES = (MessageParticipant.Role.FROM, MessageParticipant.Role.SENDER)
RECIPIENT_ROLES = (MessageParticipant.Role.TO, MessageParticipant.Role.CC, MessageParticipant.Role.BCC)
DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$")
ADDRESS_RE = re.compile(r"^[^@\s]+@[^@\s]+$")


def normalize_block_pattern(value: str) -> str:
    """ "Ann <Ann@Spam.example>" -> "ann@spam.example"; "@Spam.example" or "spam.example" -> "@spam.example".

    Raises ValidationError with a message for the user when the value is neither.
    """
    value = (value or "").strip()
    if not value:
        raise ValidationError("Enter an email address (ann@example.com) or a domain (@example.com).")
    if value.startswith("@") or "@" not in value:
        domain = normalize_domain(value)
        if not DOMAIN_RE.match(domain):
            if value.startswith("@"):
                raise ValidationError(f"“{value}” is not a domain. Write a domain like @example.com.")
            raise ValidationError(
                f"“{value}” is neither an email address (ann@example.com) nor a domain (@example.com)."
            )
        return f"@{domain}"
    address = normalize_email(value)
    if not address or not ADDRESS_RE.match(address) or not DOMAIN_RE.match(address.rsplit("@", 1)[1]):
        raise ValidationError(f"“{value}” is not an email address. Write it like ann@example.com.")
    return address


def split_patterns(patterns: Iterable[str]) -> tuple[set[str], set[str]]:
    """(exact addresses, domains without the "@")."""
    addresses, domains = set(), set()
    for pattern in patterns:
        if pattern.startswith("@"):
            domains.add(pattern[1:])
        elif pattern:
            addresses.add(pattern)
    return addresses, domains


def is_address_blocked(address: str, patterns: Iterable[str]) -> bool:
    addresses, domains = split_patterns(patterns)
    address = normalize_email(address)
    return bool(address) and (address in addresses or address.rsplit("@", 1)[1] in domains)


def is_message_blocked(
    *,
    sender_side: Iterable[str],
    recipients: Iterable[str],
    own: Iterable[str],
    patterns: Iterable[str],
    sent: bool = False,
) -> bool:
    """The F1 rule for one message, in Python (the SQL in `_blocked_messages` is the same rule)."""
    patterns = list(patterns)
    own = {normalize_email(address) for address in own}
    senders = {normalize_email(address) for address in sender_side} - {""}
    if sent or not senders or senders & own:
        return False
    if not all(is_address_blocked(address, patterns) for address in senders):
        return False
    others = {normalize_email(address) for address in recipients} - own - {""}
    return all(is_address_blocked(address, patterns) for address in others)


def blocked_address_condition(patterns: Iterable[str]) -> Q:
    """A Q on MessageParticipant.address matching any of the patterns (never matches when empty)."""
    addresses, domains = split_patterns(patterns)
    condition = Q(address__in=addresses) if addresses else Q(pk__in=[])
    for domain in sorted(domains):
        condition |= Q(address__endswith=f"@{domain}")
    return condition


def _blocked_messages(messages: QuerySet[EmailMessage], patterns: list[str], own: set[str]) -> QuerySet:
    """The messages among `messages` that the patterns hide (the F1 rule as one SQL query)."""
    if not patterns:
        return messages.none()
    own = own or {""}  # an empty IN () would make the whole query empty
    blocked = blocked_address_condition(patterns)
    participants = MessageParticipant.objects.filter(message=OuterRef("pk"))
    senders = participants.filter(role__in=SENDER_ROLES)
    return (
        messages.filter(direction=EmailMessage.Direction.RECEIVED)
        .exclude(from_address__in=own)
        .filter(Exists(senders))
        .exclude(Exists(senders.exclude(blocked)))
        .exclude(Exists(senders.filter(address__in=own)))
        .exclude(Exists(participants.filter(role__in=RECIPIENT_ROLES).exclude(blocked).exclude(address__in=own)))
    )


def user_patterns(user: User) -> list[str]:
    return list(BlockedAddress.objects.filter(user=user).values_list("pattern", flat=True))


def _user_messages(user: User) -> QuerySet[EmailMessage]:
    return EmailMessage.objects.filter(thread__owner=user)


def recompute_blocked(user: User, *, thread_ids: Iterable[int] | None = None) -> int:
    """Bring `is_blocked` of the user's messages (optionally only these threads) in line with the list.

    Returns how many messages changed. Two UPDATE statements, however many messages there are.
    """
    messages = _user_messages(user)
    if thread_ids is not None:
        messages = messages.filter(thread_id__in=list(thread_ids))
    should_block = _blocked_messages(messages, user_patterns(user), own_addresses(user))
    unblocked = messages.filter(is_blocked=True).exclude(pk__in=should_block.values("pk")).update(is_blocked=False)
    blocked = should_block.filter(is_blocked=False).update(is_blocked=True)
    if unblocked or blocked:
        refresh_user_mailboxes(user, thread_ids)  # the lists and their counts follow (mailsync.mailbox)
    return unblocked + blocked


@transaction.atomic
def recompute_blocked_for_threads(thread_ids: Iterable[int]) -> None:
    """For ingestion: set `is_blocked` on the messages of these (new or changed) threads."""
    tune_planner()  # index lookups by thread id (a batch's ~1,000 threads were a scan of them all)
    by_owner: dict[int, list[int]] = defaultdict(list)
    threads = EmailThread.objects.filter(pk__in=set(thread_ids)).order_by()
    for thread_id, owner_id in threads.values_list("pk", "owner_id"):
        by_owner[owner_id].append(thread_id)
    owners = User.objects.in_bulk(list(by_owner))
    patterns_by_owner: dict[int, list[str]] = defaultdict(list)
    for owner_id, pattern in BlockedAddress.objects.filter(user_id__in=list(by_owner)).values_list(
        "user_id", "pattern"
    ):
        patterns_by_owner[owner_id].append(pattern)
    for owner_id, ids in by_owner.items():
        if (
            patterns_by_owner.get(owner_id)
            # The threads are this owner's already: no join with the threads (it made this a scan).
            or EmailMessage.objects.filter(thread_id__in=ids, is_blocked=True).exists()
        ):
            recompute_blocked(owners[owner_id], thread_ids=ids)


def preview_block(user: User, pattern: str) -> int:
    """How many messages the user can see now would a new pattern hide (nothing is written)."""
    pattern = normalize_block_pattern(pattern)
    messages = _user_messages(user).filter(is_blocked=False, deleted_at__isnull=True)
    patterns = [*user_patterns(user), pattern]
    return _blocked_messages(messages, patterns, own_addresses(user)).count()


@transaction.atomic
def add_block(user: User, pattern: str) -> BlockedAddress:
    pattern = normalize_block_pattern(pattern)
    try:
        with transaction.atomic():
            blocked = BlockedAddress.objects.create(user=user, pattern=pattern)
    except IntegrityError:
        raise ValidationError(f"{pattern} is already blocked.") from None
    recompute_blocked(user)
    return blocked


@transaction.atomic
def remove_block(user: User, blocked: BlockedAddress) -> None:
    if blocked.user_id != user.pk:
        raise ValidationError("This blocked address belongs to someone else.")
    blocked.delete()
    recompute_blocked(user)
