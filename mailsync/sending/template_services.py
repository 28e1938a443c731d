"""Writes for email templates, signatures and the sender's own smart fields (W3).

Who may change what: a template only by its author (teammates and the company may use and duplicate a
shared one); a signature only by the owner of its sending account. Bodies are sanitised HTML on the way
in, so what is stored is what the composer may insert.
"""

from __future__ import annotations

import re

from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction

from crm.models import User, Visibility
from mailsync.models import (
    EmailAccount,
    EmailTemplate,
    MailSettings,
    OutgoingAttachment,
    OutgoingMessage,
    Signature,
    SignatureImage,
)

from . import template_selectors
from .mime import new_content_id, sanitize_body

MAX_TEMPLATES_PER_USER = 500
MAX_SIGNATURES_PER_ACCOUNT = 20
MAX_SIGNATURE_IMAGE_BYTES = 512 * 1024
SIGNATURE_IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp"}


def _clean_line(value: str, *, limit: int) -> str:
    # A subject is a header: no line breaks (they would be a header injection), trimmed.
    return " ".join((value or "").replace("\r", " ").replace("\n", " ").split())[:limit]


def _require_author(user: User, template: EmailTemplate) -> None:
    if template.owner_id != user.pk:
        raise PermissionDenied("Only the author of a template may change or delete it.")


@transaction.atomic
def create_template(*, user: User, name: str, subject: str, body_html: str, visibility: str) -> EmailTemplate:
    if visibility not in Visibility.values:
        raise ValidationError("Choose who may use this template.")
    if EmailTemplate.objects.filter(owner=user).count() >= MAX_TEMPLATES_PER_USER:
        raise ValidationError(f"You have {MAX_TEMPLATES_PER_USER} templates already: delete some first.")
    name = _clean_line(name, limit=200)
    if not name:
        raise ValidationError("Give the template a name.")
    return EmailTemplate.objects.create(
        owner=user,
        name=name,
        subject=_clean_line(subject, limit=500),
        body_html=sanitize_body(body_html),
        visibility=visibility,
    )


@transaction.atomic
def update_template(
    *, user: User, template: EmailTemplate, name: str, subject: str, body_html: str, visibility: str
) -> EmailTemplate:
    _require_author(user, template)
    if visibility not in Visibility.values:
        raise ValidationError("Choose who may use this template.")
    name = _clean_line(name, limit=200)
    if not name:
        raise ValidationError("Give the template a name.")
    template.name = name
    template.subject = _clean_line(subject, limit=500)
    template.body_html = sanitize_body(body_html)
    template.visibility = visibility
    template.save(update_fields=["name", "subject", "body_html", "visibility", "updated_at"])
    return template


@transaction.atomic
def duplicate_template(*, user: User, template: EmailTemplate) -> EmailTemplate:
    """A private copy for `user` (who may be a teammate using a shared template)."""
    return create_template(
        user=user,
        name=f"Copy of {template.name}"[:200],
        subject=template.subject,
        body_html=template.body_html,
        visibility=Visibility.OWNER,
    )


@transaction.atomic
def delete_template(*, user: User, template: EmailTemplate) -> None:
    _require_author(user, template)
    template.delete()


# -- signatures


def _require_account_owner(user: User, account: EmailAccount) -> None:
    if account.user_id != user.pk:
        raise PermissionDenied("Only the owner of a mail account may change its signatures.")


def _set_defaults(signature: Signature, *, for_new: bool, for_replies: bool) -> None:
    others = Signature.objects.filter(account_id=signature.account_id).exclude(pk=signature.pk)
    if for_new:
        others.filter(is_default_for_new=True).update(is_default_for_new=False)
    if for_replies:
        others.filter(is_default_for_replies=True).update(is_default_for_replies=False)
    signature.is_default_for_new = for_new
    signature.is_default_for_replies = for_replies


@transaction.atomic
def save_signature(
    *,
    user: User,
    account: EmailAccount,
    signature: Signature | None = None,
    name: str,
    body_html: str,
    default_for_new: bool,
    default_for_replies: bool,
) -> Signature:
    """Create (signature=None) or change a signature; being a default takes it from the account's other ones."""
    _require_account_owner(user, account)
    # Lock the account's row: two saves marking different defaults must not both win.
    EmailAccount.objects.select_for_update().filter(pk=account.pk).first()
    if signature is None:
        if Signature.objects.filter(account=account).count() >= MAX_SIGNATURES_PER_ACCOUNT:
            raise ValidationError(f"An account has at most {MAX_SIGNATURES_PER_ACCOUNT} signatures.")
        signature = Signature(account=account)
    elif signature.account_id != account.pk:
        raise PermissionDenied("This signature belongs to another account.")
    name = _clean_line(name, limit=100)
    if not name:
        raise ValidationError("Give the signature a name.")
    signature.name = name
    signature.body_html = sanitize_body(body_html)
    _set_defaults(signature, for_new=default_for_new, for_replies=default_for_replies)
    signature.save()
    return signature


@transaction.atomic
def delete_signature(*, user: User, signature: Signature) -> None:
    _require_account_owner(user, signature.account)
    for image in signature.images.all():
        image.file.delete(save=False)
    signature.delete()


def _sniff_image(head: bytes) -> str:
    """The image type from the file's first bytes: the browser's word (and the file name) can lie."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return ""


@transaction.atomic
def add_signature_image(*, user: User, signature: Signature, upload: UploadedFile) -> SignatureImage:
    """Store an image (a logo) for a signature; refused: anything but PNG, JPEG, GIF or WebP, over 512 KB."""
    _require_account_owner(user, signature.account)
    if upload.size > MAX_SIGNATURE_IMAGE_BYTES:
        raise ValidationError(f"The image is larger than {MAX_SIGNATURE_IMAGE_BYTES // 1024} KB: use a smaller one.")
    head = upload.read(16)
    upload.seek(0)
    content_type = _sniff_image(head)
    if content_type not in SIGNATURE_IMAGE_TYPES:
        raise ValidationError("Only PNG, JPEG, GIF or WebP images can go into a signature.")
    extension = content_type.split("/")[1].replace("jpeg", "jpg")
    image = SignatureImage(signature=signature, content_type=content_type, size=upload.size)
    image.file.save(f"signature-{signature.pk}.{extension}", upload, save=False)
    image.save()
    return image


@transaction.atomic
def update_sender_details(*, user: User, job_title: str, phone: str) -> MailSettings:
    """The sender's own smart fields (`{{sender.job_title}}`, `{{sender.phone}}`)."""
    settings_row, _created = MailSettings.objects.get_or_create(user=user)
    settings_row.sender_job_title = _clean_line(job_title, limit=150)
    settings_row.sender_phone = _clean_line(phone, limit=50)
    settings_row.save(update_fields=["sender_job_title", "sender_phone"])
    return settings_row


# -- signatures in a message


SIGNATURE_IMAGE_SRC = re.compile(r'src="(?:https?://[^/"]+)?/mail/signature-images/(\d+)/"')


def signature_block(*, outgoing: OutgoingMessage, signature: Signature | None) -> str:
    """The signature as it goes into `outgoing`'s stored body: a <div data-signature> whose images are
    copied into the message as inline parts (cid:), so the mail never points at this server. Empty block
    when there is no signature (switching to an account without one removes the old one)."""
    if signature is None or signature.account.user_id != outgoing.owner_id:
        return '<div data-signature=""></div>'
    images = {image.pk: image for image in signature.images.all()}

    def inline(match: re.Match) -> str:
        image = images.get(int(match.group(1)))
        if image is None:
            return 'src=""'
        with image.file.open("rb") as handle:
            data = handle.read()
        extension = image.content_type.split("/")[1].replace("jpeg", "jpg")
        part = OutgoingAttachment.objects.create(
            message=outgoing,
            filename=f"signature.{extension}",
            content_type=image.content_type,
            size=len(data),
            is_inline=True,
            content_id=new_content_id(),
            file=ContentFile(data, name=f"signature.{extension}"),
        )
        return f'src="cid:{part.content_id}"'

    body = SIGNATURE_IMAGE_SRC.sub(inline, signature.body_html)
    return sanitize_body(f'<div data-signature="">{body}</div>')


_SIGNATURE_DIV = re.compile(r'<div\b[^>]*\sdata-signature(?:="")?(?=[\s>])[^>]*>', re.IGNORECASE)


def with_signature(body_html: str, block: str) -> str:
    """`body_html` with its signature block replaced by `block` (or `block` added at the end)."""
    match = _SIGNATURE_DIV.search(body_html)
    if match is None:
        return f"{body_html}{block}"
    # The block ends at its matching </div>: count nested divs from its start.
    depth, position = 0, match.start()
    for tag in re.finditer(r"<(/?)div\b[^>]*>", body_html[match.start() :], re.IGNORECASE):
        depth += -1 if tag.group(1) else 1
        if depth == 0:
            end = match.start() + tag.end()
            return body_html[:position] + block + body_html[end:]
    return body_html[:position] + block


@transaction.atomic
def switch_signature(*, outgoing: OutgoingMessage, account: EmailAccount) -> str:
    """The From account of a draft changed: its signature becomes that account's default (for new mail or
    for replies, as the draft is). Returns the new block (stored form, cid: images); the draft's stored
    body is updated too, so a reload shows what the editor shows."""
    locked = OutgoingMessage.objects.select_for_update().get(pk=outgoing.pk)
    if locked.state != OutgoingMessage.State.DRAFT or account.user_id != locked.owner_id:
        raise PermissionDenied("Only the author's own drafts and accounts.")
    reply = locked.kind != OutgoingMessage.Kind.NEW
    block = signature_block(outgoing=locked, signature=template_selectors.default_signature(account, reply=reply))
    locked.body_html = with_signature(locked.body_html, block)
    locked.save(update_fields=["body_html", "updated_at"])
    return block
