"""Writes for Smart BCC settings: the personal address, alternate senders and their confirmation (B1, B2).

Confirmation links are signed (django.core.signing, salted for this purpose) and expire after
MAILSYNC_SMART_BCC_CONFIRM_HOURS. They name the alternate's row and address, so a link for an address that
was removed (or removed and added again) does nothing. Opening a link shows a page with a button; only
the POST confirms, so a mail gateway that fetches every link (Safe Links and the like) confirms nothing.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from django.conf import settings
from django.core import signing
from django.core.exceptions import ValidationError
from django.core.mail import EmailMessage as OutgoingEmail
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string
from django.utils import timezone

from crm.addresses import normalize_email
from crm.models import User
from mailsync.models import SmartBccAddress, SmartBccDelivery, SmartBccSender

from . import selectors

# Unambiguous lower-case letters and digits (no 0/o, 1/l/i): addresses are read aloud and retyped.
ADDRESS_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
ADDRESS_TOKEN_LENGTH = 10  # 31**10 ~ 8e14: not guessable, and the sender rules apply anyway
CONFIRM_SALT = "mailsync.inbound.confirm-sender"
MAX_ALTERNATES = 10
RESEND_INTERVAL = timedelta(minutes=2)
# "Not filed" keeps this many rows per user: anyone who learns an address can send to it.
NOT_FILED_KEPT = 200


def _new_local_part() -> str:
    return "u-" + "".join(secrets.choice(ADDRESS_ALPHABET) for _ in range(ADDRESS_TOKEN_LENGTH))


def _create_address(user: User) -> SmartBccAddress:
    for _attempt in range(5):
        try:
            with transaction.atomic():
                return SmartBccAddress.objects.create(user=user, local_part=_new_local_part())
        except IntegrityError:
            # Another request made this user's address meanwhile, or (never seen) a token collided.
            existing = selectors.active_address(user)
            if existing is not None:
                return existing
    raise RuntimeError("could not create a unique Smart BCC address")


@transaction.atomic
def ensure_address(*, user: User) -> SmartBccAddress:
    """The user's active address, created on first use."""
    return selectors.active_address(user) or _create_address(user)


@transaction.atomic
def replace_address(*, user: User) -> SmartBccAddress:
    """ "New address": the active one is retired (mail to it is refused from now on) and a new one made."""
    User.objects.select_for_update().filter(pk=user.pk).first()  # two clicks at once make one address
    SmartBccAddress.objects.filter(user=user, retired_at__isnull=True).update(retired_at=timezone.now())
    return _create_address(user)


def _clean_alternate(user: User, address: str) -> str:
    cleaned = normalize_email(address)
    try:
        validate_email(cleaned)
    except ValidationError:
        raise ValidationError("Enter a valid email address, such as name@example.com.") from None
    known = selectors.sender_addresses(user)
    if cleaned == known.login:
        raise ValidationError("This is your login address: it is always accepted.")
    if cleaned in known.accounts:
        raise ValidationError("This address belongs to one of your connected accounts: it is already accepted.")
    if selectors.smart_bcc_domain() and cleaned.endswith("@" + selectors.smart_bcc_domain()):
        raise ValidationError("Smart BCC addresses cannot send mail themselves.")
    return cleaned


@transaction.atomic
def add_alternate_sender(*, user: User, address: str) -> SmartBccSender:
    """Add an alternate address (unconfirmed); the caller sends the confirmation (send_confirmation)."""
    cleaned = _clean_alternate(user, address)
    existing = SmartBccSender.objects.filter(user=user, address=cleaned).first()
    if existing is not None:
        return existing
    if SmartBccSender.objects.filter(user=user).count() >= MAX_ALTERNATES:
        raise ValidationError(f"You can have at most {MAX_ALTERNATES} alternate addresses. Remove one first.")
    return SmartBccSender.objects.create(user=user, address=cleaned)


@transaction.atomic
def remove_alternate_sender(*, user: User, sender: SmartBccSender) -> None:
    if sender.user_id != user.pk:
        raise ValidationError("This is not your address.")
    sender.delete()


def confirmation_token(sender: SmartBccSender) -> str:
    return signing.dumps({"sender": sender.pk, "address": sender.address}, salt=CONFIRM_SALT)


def confirmation_max_age() -> timedelta:
    return timedelta(hours=settings.MAILSYNC_SMART_BCC_CONFIRM_HOURS)


def send_confirmation(*, sender: SmartBccSender, confirm_url: str) -> None:
    """Email the signed link to the alternate address through the product's own mail backend
    (EMAIL_BACKEND). Raises ValidationError when asked again too soon or when the backend fails."""
    if sender.confirmed_at:
        raise ValidationError("This address is already confirmed.")
    now = timezone.now()
    if sender.confirmation_sent_at and now - sender.confirmation_sent_at < RESEND_INTERVAL:
        raise ValidationError("A confirmation email was sent a moment ago. Check that mailbox (and its spam folder).")
    context = {
        "user": sender.user,
        "address": sender.address,
        "confirm_url": confirm_url,
        "hours": settings.MAILSYNC_SMART_BCC_CONFIRM_HOURS,
    }
    email = OutgoingEmail(
        subject="Confirm that you send from this address (CRM Smart BCC)",
        body=render_to_string("mailsync/smart_bcc/confirmation_email.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[sender.address],
    )
    try:
        email.send(fail_silently=False)
    except Exception as error:  # SMTP errors, ESP API errors: all mean "not sent"
        raise ValidationError(
            f"The confirmation email could not be sent ({type(error).__name__}). Try again later."
        ) from error
    SmartBccSender.objects.filter(pk=sender.pk).update(confirmation_sent_at=now)
    sender.confirmation_sent_at = now


class ConfirmationError(ValidationError):
    pass


def sender_for_token(token: str) -> SmartBccSender:
    """The alternate a confirmation link names; ConfirmationError when it expired or is not valid."""
    try:
        payload = signing.loads(token, salt=CONFIRM_SALT, max_age=confirmation_max_age())
    except signing.SignatureExpired:
        raise ConfirmationError(
            "This confirmation link has expired. Ask for a new one under Settings > Smart BCC."
        ) from None
    except signing.BadSignature:
        raise ConfirmationError("This confirmation link is not valid. Copy the whole link from the email.") from None
    sender = (
        SmartBccSender.objects.select_related("user")
        .filter(pk=payload.get("sender"), address=payload.get("address"))
        .first()
    )
    if sender is None:
        raise ConfirmationError("This address was removed from Smart BCC since the link was sent.")
    return sender


@transaction.atomic
def confirm_sender(*, token: str) -> SmartBccSender:
    sender = sender_for_token(token)
    if not sender.confirmed_at:
        sender.confirmed_at = timezone.now()
        sender.save(update_fields=["confirmed_at"])
    return sender


@transaction.atomic
def clear_not_filed(*, user: User) -> int:
    deleted, _ = SmartBccDelivery.objects.filter(user=user, status=SmartBccDelivery.Status.NOT_FILED).delete()
    return deleted


def prune_not_filed(user_id: int) -> None:
    """Keep the newest NOT_FILED_KEPT rows of a user's "Not filed" list."""
    stale = (
        SmartBccDelivery.objects.filter(user_id=user_id, status=SmartBccDelivery.Status.NOT_FILED)
        .order_by("-received_at", "-pk")
        .values_list("pk", flat=True)[NOT_FILED_KEPT : NOT_FILED_KEPT + 1000]
    )
    ids = list(stale)
    if ids:
        SmartBccDelivery.objects.filter(pk__in=ids).delete()
