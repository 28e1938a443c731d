"""Reads for templates and signatures, with their access checks (see template_services for who may write)."""

from __future__ import annotations

from django.db.models import Q, QuerySet
from django.http import Http404

from crm.models import User
from mailsync.models import EmailAccount, EmailTemplate, MailSettings, Signature, SignatureImage

MAX_SEARCH_TERMS = 6


def templates_for(user: User, query: str = "") -> QuerySet[EmailTemplate]:
    """Templates the user may insert, searched by name and subject (every word must match)."""
    templates = EmailTemplate.objects.usable_by(user).select_related("owner")
    for term in query.split()[:MAX_SEARCH_TERMS]:
        templates = templates.filter(Q(name__icontains=term) | Q(subject__icontains=term))
    return templates


def get_template_for_user(user: User, pk: int) -> EmailTemplate:
    """A template the user may use (404 otherwise: the page does not say that it exists)."""
    template = templates_for(user).filter(pk=pk).first()
    if template is None:
        raise Http404("No such template")
    return template


def get_own_template(user: User, pk: int) -> EmailTemplate:
    template = EmailTemplate.objects.filter(owner=user, pk=pk).first()
    if template is None:
        raise Http404("No such template")
    return template


def signature_accounts(user: User) -> list[EmailAccount]:
    """The user's accounts (not removed), each with its signatures."""
    return list(
        EmailAccount.objects.filter(user=user)
        .exclude(state=EmailAccount.State.REMOVED)
        .prefetch_related("signatures")
        .order_by("email_address")
    )


def get_own_account(user: User, pk: int) -> EmailAccount:
    account = own_account_or_none(user, pk)
    if account is None:
        raise Http404("No such account")
    return account


def own_account_or_none(user: User, pk: int | None) -> EmailAccount | None:
    if pk is None:
        return None
    return EmailAccount.objects.filter(user=user, pk=pk).exclude(state=EmailAccount.State.REMOVED).first()


def get_own_signature(user: User, pk: int) -> Signature:
    signature = Signature.objects.select_related("account").filter(account__user=user, pk=pk).first()
    if signature is None:
        raise Http404("No such signature")
    return signature


def get_own_signature_image(user: User, pk: int) -> SignatureImage:
    image = SignatureImage.objects.filter(signature__account__user=user, pk=pk).first()
    if image is None:
        raise Http404("No such image")
    return image


def default_signature(account: EmailAccount, *, reply: bool) -> Signature | None:
    """The account's default signature for new mail or for replies and forwards."""
    field = "is_default_for_replies" if reply else "is_default_for_new"
    return Signature.objects.filter(account=account, **{field: True}).first()


def sender_details(user: User) -> MailSettings:
    return MailSettings.objects.filter(user=user).first() or MailSettings(user=user)
