"""Writes for email templates, signatures and the sender's own smart fields (W3).

Who may change what: a template only by its author (teammates and the company may use and duplicate a
shared one); a signature only by the owner of its sending account. Bodies are sanitised HTML on the way
in, so what is stored is what the composer may insert.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction

from crm.models import User, Visibility
from mailsync.models import EmailAccount, EmailTemplate, MailSettings, Signature, SignatureImage

from .authoring import sanitize_body

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
