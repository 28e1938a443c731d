"""Writes of sending: drafts and their files, queueing (Message-ID and MIME bytes fixed), undo, retry.

Every function takes the outgoing message its caller got through `selectors.get_outgoing_for_user`
(the owner's own); each checks the state it may act on under a row lock, so a click and the worker
never both win. Delivery itself is `delivery.deliver`, run by the task `tasks.send_outgoing`.
"""

from __future__ import annotations

import html as html_lib
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import UploadedFile
from django.db import models, transaction
from django.utils import timezone
from django.utils.formats import date_format

from crm.models import User
from mailsync.accounts.providers import get_preset
from mailsync.linking.rules import target_field_for
from mailsync.models import (
    EmailAccount,
    EmailMessage,
    MailSettings,
    MessageParticipant,
    OutgoingAttachment,
    OutgoingMessage,
)
from mailsync.sync.ingest import own_addresses_for

from . import mime, smart_fields, tasks, template_selectors, template_services, tracking
from .addresses import AddressError, Recipient, format_recipients, parse_recipients
from .selectors import sendable_accounts

State = OutgoingMessage.State
Kind = OutgoingMessage.Kind
INLINE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp"}
MB = 1024 * 1024


# --- Drafts ------------------------------------------------------------------------------------------


def _default_account(user: User, source: EmailMessage | None) -> EmailAccount:
    accounts = sendable_accounts(user)
    if source is not None:
        own = accounts.filter(pk=source.account_id).first()
        if own is not None:
            return own
    account = accounts.first()
    if account is None:
        raise ValidationError("Connect a mail account with an outgoing (SMTP) server first (Settings > Email sync).")
    return account


def _participants(message: EmailMessage, *roles: str) -> list[Recipient]:
    return [
        Recipient(address=participant.address, name=participant.name)
        for participant in message.participants.all()
        if participant.role in roles
    ]


def _reply_recipients(user: User, source: EmailMessage, kind: str, account: EmailAccount) -> tuple[str, str]:
    own = set(own_addresses_for(account)) | {a.email_address.lower() for a in sendable_accounts(user)}
    if source.direction == EmailMessage.Direction.SENT:
        # Replying to one's own message continues with its recipients.
        to = _participants(source, MessageParticipant.Role.TO)
    else:
        to = _participants(source, MessageParticipant.Role.REPLY_TO) or _participants(
            source, MessageParticipant.Role.FROM
        )
    cc: list[Recipient] = []
    if kind == Kind.REPLY_ALL:
        others = _participants(source, MessageParticipant.Role.TO, MessageParticipant.Role.CC)
        taken = {recipient.address.lower() for recipient in to}
        for recipient in others:
            if recipient.address.lower() not in own and recipient.address.lower() not in taken:
                taken.add(recipient.address.lower())
                cc.append(recipient)
    to = [recipient for recipient in to if recipient.address.lower() not in own] or to
    return format_recipients(to), format_recipients(cc)


def _quote_of(source: EmailMessage, kind: str) -> tuple[str, str]:
    """(header line, sanitised HTML of the original) for the quote below a reply or forward."""
    body = source.body_html or (
        "<p>" + html_lib.escape(source.body_text).replace("\n", "<br>") + "</p>" if source.body_text else ""
    )
    sender = f"{source.from_name} <{source.from_address}>" if source.from_name else source.from_address
    when = date_format(timezone.localtime(source.date), "DATETIME_FORMAT") if source.date else ""
    if kind == Kind.FORWARD:
        recipients = ", ".join(p.address for p in source.participants.all() if p.role == MessageParticipant.Role.TO)
        header = (
            f"---------- Forwarded message ----------\nFrom: {sender}\nDate: {when}\nSubject: {source.subject}\n"
            f"To: {recipients}"
        )
    else:
        header = f"On {when}, {sender} wrote:"
    return header, mime.sanitize_body(body)


def _record_fields(record: models.Model | None) -> dict:
    return {target_field_for(record): record} if record is not None else {}


def _record_address(record: models.Model | None) -> str:
    if record is None:
        return ""
    person = record if target_field_for(record) == "person" else getattr(record, "person", None)
    if person is not None and person.primary_email:
        return format_recipients([Recipient(address=person.primary_email, name=person.name)])
    return ""


@transaction.atomic
def create_draft(
    *,
    user: User,
    kind: str = Kind.NEW,
    source: EmailMessage | None = None,
    record: models.Model | None = None,
    to: str = "",
) -> OutgoingMessage:
    """A new draft: empty, addressed to `to` or to `record`'s person, or a reply / reply all / forward of
    `source` (a message the caller checked the user may see) with the original quoted."""
    account = _default_account(user, source)
    outgoing = OutgoingMessage(owner=user, account=account, kind=kind, **_record_fields(record))
    outgoing.tracking = MailSettings.objects.filter(user=user, track_by_default=True).exists()
    if source is not None and kind in (Kind.REPLY, Kind.REPLY_ALL, Kind.FORWARD):
        outgoing.source_message = source
        outgoing.quote_header, outgoing.quoted_html = _quote_of(source, kind)
        if kind == Kind.FORWARD:
            outgoing.subject = mime.forward_subject(source.subject)
        else:
            outgoing.subject = mime.reply_subject(source.subject)
            outgoing.to_addresses, outgoing.cc_addresses = _reply_recipients(user, source, kind, account)
    else:
        outgoing.kind = Kind.NEW
        outgoing.to_addresses = to.strip() or _record_address(record)
    outgoing.save()
    if outgoing.kind == Kind.FORWARD and source is not None:
        for attachment in source.attachments.all():
            with attachment.file.open("rb") as handle:
                data = handle.read()
            OutgoingAttachment.objects.create(
                message=outgoing,
                filename=attachment.filename or "attachment",
                content_type=attachment.content_type,
                size=len(data),
                is_inline=attachment.is_inline and bool(attachment.content_id),
                content_id=attachment.content_id.strip("<>") if attachment.is_inline else "",
                file=ContentFile(data, name=attachment.filename or "attachment"),
            )
    # The account's default signature, above the quote (a reply's or forward's own default).
    signature = template_selectors.default_signature(account, reply=outgoing.kind != Kind.NEW)
    if signature is not None:
        block = template_services.signature_block(outgoing=outgoing, signature=signature)
        outgoing.body_html = f'<div dir="auto"><br></div>{block}'
        outgoing.save(update_fields=["body_html", "updated_at"])
    return outgoing


def _lock(outgoing: OutgoingMessage) -> OutgoingMessage:
    return OutgoingMessage.objects.select_for_update().select_related("account").get(pk=outgoing.pk)


def _editable(outgoing: OutgoingMessage) -> OutgoingMessage:
    locked = _lock(outgoing)
    if locked.state != State.DRAFT:
        raise ValidationError("This message is no longer a draft: it has been sent or is on its way.")
    return locked


@transaction.atomic
def save_draft(
    *,
    outgoing: OutgoingMessage,
    account: EmailAccount | None = None,
    to: str,
    cc: str,
    bcc: str,
    subject: str,
    body_html: str,
    tracking: bool | None = None,
) -> OutgoingMessage:
    """Store what the user typed (autosave). Addresses are kept as typed; they are checked when sent.
    The body is sanitised on every save. `tracking`: open and click tracking on or off (None: unchanged)."""
    locked = _editable(outgoing)
    if account is not None:
        if account.user_id != locked.owner_id or account.state == EmailAccount.State.REMOVED:
            raise ValidationError("You can only send from your own mail accounts.")
        locked.account = account
    locked.to_addresses, locked.cc_addresses, locked.bcc_addresses = to[:10000], cc[:10000], bcc[:10000]
    locked.subject = mime.clean_header_text(subject)[:998]
    locked.body_html = mime.sanitize_body(body_html)
    if tracking is not None:
        locked.tracking = tracking
    locked.edited = True
    locked.save()
    return locked


def limit_bytes(account: EmailAccount) -> int:
    """The per-message attachment limit of the account's provider (bytes); 0 = only the server's SIZE."""
    preset = get_preset(account.provider)
    if preset is None:
        return 0
    return preset.attachment_limit_mb * MB


def _provider_name(account: EmailAccount) -> str:
    preset = get_preset(account.provider)
    return preset.name if preset is not None else "your provider"


def _check_total_size(outgoing: OutgoingMessage, extra: int = 0) -> None:
    limit = limit_bytes(outgoing.account)
    if not limit:
        return
    total = extra + sum(outgoing.attachments.values_list("size", flat=True))
    if total > limit:
        raise ValidationError(
            f"The attachments come to {total / MB:.1f} MB; {_provider_name(outgoing.account)} accepts up to "
            f"{limit // MB} MB per message. Remove some, or share a link to the file instead."
        )


@transaction.atomic
def add_attachment(*, outgoing: OutgoingMessage, upload: UploadedFile, inline: bool = False) -> OutgoingAttachment:
    """Store an uploaded file on the draft (an inline image when `inline`: sent as a cid: part)."""
    locked = _editable(outgoing)
    content_type = (upload.content_type or "application/octet-stream").split(";")[0].strip().lower()
    if inline and content_type not in INLINE_TYPES:
        raise ValidationError("Only PNG, JPEG, GIF or WebP images can be placed in the text; attach other files.")
    _check_total_size(locked, upload.size or 0)
    if not locked.edited:
        locked.edited = True
        locked.save(update_fields=["edited", "updated_at"])
    name = mime.clean_header_text(upload.name or "attachment")[:200] or "attachment"
    return OutgoingAttachment.objects.create(
        message=locked,
        filename=name,
        content_type=content_type if "/" in content_type else "application/octet-stream",
        size=upload.size or 0,
        is_inline=inline,
        content_id=mime.new_content_id() if inline else "",
        file=upload,
    )


@transaction.atomic
def remove_attachment(*, attachment: OutgoingAttachment) -> None:
    _editable(attachment.message)
    stored = attachment.file.name
    attachment.delete()
    transaction.on_commit(lambda: attachment.file.storage.delete(stored))


@transaction.atomic
def discard_draft(*, outgoing: OutgoingMessage) -> None:
    locked = _editable(outgoing)
    names = list(locked.attachments.values_list("file", flat=True))
    locked.delete()
    storage = OutgoingAttachment._meta.get_field("file").storage

    def delete_files() -> None:
        for name in names:
            storage.delete(name)

    transaction.on_commit(delete_files)


# --- Sending -------------------------------------------------------------------------------------------


def _recipients(outgoing: OutgoingMessage) -> tuple[list[Recipient], list[Recipient], list[Recipient]]:
    errors: dict[str, str] = {}
    parsed: dict[str, list[Recipient]] = {}
    for field, text in (("to", outgoing.to_addresses), ("cc", outgoing.cc_addresses), ("bcc", outgoing.bcc_addresses)):
        try:
            parsed[field] = parse_recipients(text)
        except AddressError as exc:
            errors[field] = str(exc)
            parsed[field] = []
    if errors:
        raise ValidationError(errors)
    if not (parsed["to"] or parsed["cc"] or parsed["bcc"]):
        raise ValidationError({"to": "Add at least one recipient."})
    return parsed["to"], parsed["cc"], parsed["bcc"]


def _thread_root(source: EmailMessage | None) -> tuple[str, datetime | None]:
    if source is None:
        return "", None
    first = (
        EmailMessage.objects.filter(thread_id=source.thread_id)
        .exclude(message_id="")
        .order_by("date", "pk")
        .values_list("message_id", "date")
        .first()
    )
    return first if first else (source.message_id, source.date)


def build_draft(outgoing: OutgoingMessage) -> mime.Draft:
    """The pure description of the message that mime.build turns into bytes."""
    to, cc, _bcc = _recipients(outgoing)
    attachments, inline = [], []
    for attachment in outgoing.attachments.all():
        with attachment.file.open("rb") as handle:
            data = handle.read()
        part = mime.Part(attachment.filename, attachment.content_type, data, attachment.content_id)
        if attachment.is_inline and attachment.content_id:
            # An image the user removed from the text is not sent.
            if f"cid:{attachment.content_id}" in outgoing.body_html + outgoing.quoted_html:
                inline.append(part)
        else:
            attachments.append(part)
    source = outgoing.source_message
    draft = mime.Draft(
        from_address=outgoing.account.email_address,
        from_name=outgoing.account.display_name or outgoing.owner.get_full_name(),
        to=to,
        cc=cc,
        subject=outgoing.subject,
        html=outgoing.body_html,
        quoted_html=outgoing.quoted_html,
        quote_header=outgoing.quote_header,
        attachments=attachments,
        inline=inline,
    )
    if source is not None and outgoing.kind in (Kind.REPLY, Kind.REPLY_ALL) and source.message_id:
        draft.in_reply_to = source.message_id
        draft.references = mime.references_for(source.references, source.message_id)
        draft.thread_root_id, draft.thread_root_date = _thread_root(source)
    return draft


def _check_limits(outgoing: OutgoingMessage, recipient_count: int) -> None:
    preset = get_preset(outgoing.account.provider)
    if preset is not None and preset.max_recipients and recipient_count > preset.max_recipients:
        raise ValidationError(
            {
                "to": f"{preset.name} accepts at most {preset.max_recipients} recipients per message; this one "
                f"has {recipient_count}. Split them over several messages."
            }
        )
    _check_total_size(outgoing)


def _check_account(outgoing: OutgoingMessage) -> None:
    account = outgoing.account
    if account.user_id != outgoing.owner_id:
        raise ValidationError("You can only send from your own mail accounts.")
    if account.state == EmailAccount.State.REMOVED or not account.smtp_host:
        raise ValidationError("This account cannot send mail (it has no outgoing server, or it was removed).")


def record_of(outgoing: OutgoingMessage) -> models.Model | None:
    """The record the message is written from (its smart fields' deal, lead, project, person...)."""
    return outgoing.deal or outgoing.lead or outgoing.project or outgoing.person or outgoing.organization


def _fill_smart_fields(outgoing: OutgoingMessage, recipients: list[str]) -> None:
    """Fill the smart fields ({{person.first_name}} ...) for these recipients; one that stays empty with no
    fallback holds the send (W3), with a message that names it."""
    filled = smart_fields.fill_message(
        outgoing.owner,
        subject=outgoing.subject,
        body_html=outgoing.body_html,
        recipients=recipients,
        record=record_of(outgoing),
        account=outgoing.account,
    )
    if filled.missing:
        raise ValidationError(smart_fields.missing_fields_message(filled.missing))
    outgoing.subject = mime.clean_header_text(filled.subject)[:998]
    outgoing.body_html = mime.sanitize_body(filled.body_html)


def undo_seconds() -> int:
    return settings.MAILSYNC_UNDO_SEND_SECONDS


@transaction.atomic
def queue_message(
    *, outgoing: OutgoingMessage, send_at: datetime | None = None, sender_ip: str | None = None
) -> OutgoingMessage:
    """Check the draft (recipients, limits, account), fix its Message-ID and MIME bytes, and queue it
    for `send_at` (default: now plus the undo window). Bad input raises ValidationError; nothing is lost:
    the draft stays a draft. With tracking on, the links and the pixel are part of those bytes
    (tracking.apply_tracking); `sender_ip`: where the sender sent it from (their own opens from there)."""
    locked = _editable(outgoing)
    locked.sender_ip = sender_ip
    _check_account(locked)
    to, cc, bcc = _recipients(locked)
    _fill_smart_fields(locked, [recipient.address for recipient in [*to, *cc]])
    draft = build_draft(locked)
    _check_limits(locked, len(to) + len(cc) + len(bcc))
    now = timezone.now()
    if send_at is not None and send_at <= now:
        send_at = None
    locked.send_later = send_at is not None
    locked.send_at = send_at or now + timedelta(seconds=undo_seconds())
    locked.message_id = mime.new_message_id(locked.account.email_address)
    if locked.tracking:
        draft = tracking.apply_tracking(outgoing=locked, draft=draft)
    locked.mime = mime.build(draft, message_id=locked.message_id, now=now)
    locked.envelope_recipients = [recipient.address for recipient in [*to, *cc, *bcc]]
    locked.state = State.QUEUED
    locked.queued_at = now
    _clear_error(locked)
    locked.save()
    tasks.send_after_commit(locked.pk, locked.send_at)
    return locked


def _clear_error(outgoing: OutgoingMessage) -> None:
    outgoing.error_code = outgoing.error_message = outgoing.error_fix = outgoing.error_detail = ""


@transaction.atomic
def undo_send(*, outgoing: OutgoingMessage) -> OutgoingMessage:
    """Stop a queued message before its time (undo window, or a "send later"): it is a draft again."""
    locked = _lock(outgoing)
    if locked.state != State.QUEUED or (locked.send_at and locked.send_at <= timezone.now()):
        raise ValidationError("Too late to undo: the message is already on its way.")
    locked.state = State.DRAFT
    locked.send_at = locked.queued_at = None
    locked.send_later = False
    locked.message_id = ""
    locked.mime = None
    locked.envelope_recipients = []
    locked.save()
    return locked


@transaction.atomic
def retry(*, outgoing: OutgoingMessage) -> OutgoingMessage:
    """Send a failed message again, now: the same bytes and Message-ID (a recipient's client that got a
    first copy recognises the second as the same message)."""
    locked = _lock(outgoing)
    if locked.state != State.FAILED:
        raise ValidationError("Only a message that failed can be retried.")
    _check_account(locked)
    locked.state = State.QUEUED
    locked.send_at = timezone.now()
    _clear_error(locked)
    locked.refused_recipients = []
    locked.save()
    tasks.send_after_commit(locked.pk, locked.send_at)
    return locked


@transaction.atomic
def edit_failed(*, outgoing: OutgoingMessage) -> OutgoingMessage:
    """Turn a failed message back into a draft to change it (it gets a new Message-ID when sent)."""
    locked = _lock(outgoing)
    if locked.state != State.FAILED:
        raise ValidationError("Only a message that failed can be edited again.")
    locked.state = State.DRAFT
    locked.message_id = ""
    locked.mime = None
    locked.send_at = locked.queued_at = None
    locked.save()
    return locked
