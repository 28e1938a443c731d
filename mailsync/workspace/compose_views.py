"""The composer (new mail, reply, reply all, forward), drafts and the state of mail on its way out.

Thin views over mailsync.sending: the selectors hold the access rule (an outgoing message and its files
are the owner's alone: anyone else, an admin included, gets 404), the services do the writes. Writes are
POST only. Inline images live in the editor as links to their file here and in the stored body as
cid: references (`_to_cid` / `_to_urls`), so the bytes that are sent never point at the CRM.
"""

from __future__ import annotations

import re
from datetime import datetime

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import patch_cache_control
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_GET, require_POST

from crm.params import parse_id
from mailsync.linking.rules import reference_of, visible_record
from mailsync.models import EmailMessage, OutgoingAttachment, OutgoingMessage
from mailsync.sending import mime, selectors, services, smart_fields, template_services, tracking_views
from mailsync.sending.addresses import AddressError, parse_recipients

from . import display

KINDS = {kind.value for kind in OutgoingMessage.Kind} - {OutgoingMessage.Kind.NEW}
MAX_UPLOAD_BYTES = 40 * 1024 * 1024  # above every provider's limit; the provider's own is checked by sending


def _outgoing(request: HttpRequest, pk: int) -> OutgoingMessage:
    try:
        return selectors.get_outgoing_for_user(request.user, pk)
    except OutgoingMessage.DoesNotExist:
        raise Http404("No such message.") from None


def _file_url(attachment: OutgoingAttachment) -> str:
    return reverse("mailsync:compose_file", args=[attachment.pk])


def _to_urls(outgoing: OutgoingMessage, html: str) -> str:
    """Stored body (cid: images) -> editor body (images from the CRM)."""
    for attachment in outgoing.attachments.all():
        if attachment.is_inline and attachment.content_id:
            html = html.replace(f'src="cid:{attachment.content_id}"', f'src="{_file_url(attachment)}"')
    return html


def _to_cid(outgoing: OutgoingMessage, html: str) -> str:
    """Editor body -> stored body: this draft's images become cid: references; any other CRM URL goes."""
    for attachment in outgoing.attachments.all():
        if attachment.is_inline and attachment.content_id:
            html = re.sub(
                rf'src="(?:https?://[^/"]+)?{re.escape(_file_url(attachment))}"',
                f'src="cid:{attachment.content_id}"',
                html,
            )
    return html


# --- Starting a message -----------------------------------------------------------------------------------


@require_GET
def compose_new(request: HttpRequest) -> HttpResponse:
    """A new draft (To from ?to=, or the person of ?record=kind:pk), then the composer. Reached from the
    Compose buttons, the "Email" action of record pages and address links (W6)."""
    record = visible_record(request.user, request.GET.get("record", ""))
    try:
        outgoing = services.create_draft(user=request.user, record=record, to=request.GET.get("to", "")[:1000])
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
        return redirect("mailsync:settings")
    return redirect("mailsync:compose", pk=outgoing.pk)


@require_POST
def compose_reply(request: HttpRequest, pk: int) -> HttpResponse:
    """Reply, reply all or forward (?kind=) a message the user may see."""
    kind = request.POST.get("kind", OutgoingMessage.Kind.REPLY)
    if kind not in KINDS:
        kind = OutgoingMessage.Kind.REPLY
    try:
        source = selectors.get_source_message(request.user, pk)
    except EmailMessage.DoesNotExist:
        raise Http404("No such message.") from None
    try:
        outgoing = services.create_draft(user=request.user, kind=kind, source=source)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
        return redirect("mailsync:thread_detail", pk=source.thread_id)
    return redirect("mailsync:compose", pk=outgoing.pk)


# --- The composer ---------------------------------------------------------------------------------------


def _composer_context(request: HttpRequest, outgoing: OutgoingMessage, *, errors: dict | None = None) -> dict:
    field_errors = {name: [] for name in ("general", "to", "cc", "bcc", "send_at")} | (errors or {})
    quote_document = display.frame_document(outgoing.quoted_html) if outgoing.quoted_html else ""
    limit = services.limit_bytes(outgoing.account)
    return {
        "outgoing": outgoing,
        "accounts": selectors.sendable_accounts(request.user),
        "editor_html": smart_fields.highlight(_to_urls(outgoing, outgoing.body_html)),
        "attachments": [a for a in outgoing.attachments.all() if not a.is_inline],
        "quote_document": quote_document,
        "frame_sandbox": display.FRAME_SANDBOX,
        "limit_bytes": limit,
        "undo_seconds": services.undo_seconds(),
        "min_send_at": timezone.localtime().strftime("%Y-%m-%dT%H:%M"),
        "field_errors": field_errors,
        "record_reference": reference_of(services.record_of(outgoing)),
        "catalogue": smart_fields.CATALOGUE,
        "copies_shown": bool(
            outgoing.cc_addresses or outgoing.bcc_addresses or field_errors["cc"] or field_errors["bcc"]
        ),
    }


def _no_store(response: HttpResponse) -> HttpResponse:
    patch_cache_control(response, private=True, no_store=True)
    return response


@require_GET
def compose(request: HttpRequest, pk: int) -> HttpResponse:
    outgoing = _outgoing(request, pk)
    if outgoing.state != OutgoingMessage.State.DRAFT:
        return redirect("mailsync:outgoing_detail", pk=outgoing.pk)
    return _no_store(render(request, "mailsync/compose/compose.html", _composer_context(request, outgoing)))


def _save(request: HttpRequest, outgoing: OutgoingMessage) -> OutgoingMessage:
    account = None
    account_id = parse_id(request.POST.get("account", ""))
    if account_id is not None:
        account = selectors.sendable_accounts(request.user).filter(pk=account_id).first()
        if account is None:
            raise ValidationError("You can only send from your own mail accounts.")
    return services.save_draft(
        outgoing=outgoing,
        account=account,
        to=request.POST.get("to", ""),
        cc=request.POST.get("cc", ""),
        bcc=request.POST.get("bcc", ""),
        subject=request.POST.get("subject", ""),
        body_html=_to_cid(outgoing, request.POST.get("body_html", "")),
        tracking=request.POST.get("tracking") == "1",
    )


@require_POST
def compose_save(request: HttpRequest, pk: int) -> HttpResponse:
    """Autosave (every few seconds while typing, and when the page is left)."""
    outgoing = _outgoing(request, pk)
    try:
        _save(request, outgoing)
    except ValidationError as error:
        return HttpResponse(" ".join(error.messages), status=409, content_type="text/plain; charset=utf-8")
    now = timezone.localtime()
    return HttpResponse(f"Draft saved at {now:%H:%M:%S}", content_type="text/plain; charset=utf-8")


def _send_at(request: HttpRequest) -> datetime | None:
    if request.POST.get("when") != "later":
        return None
    value = parse_datetime(request.POST.get("send_at", ""))
    if value is None:
        raise ValidationError({"send_at": "Choose the date and time to send at."})
    if timezone.is_naive(value):
        value = timezone.make_aware(value)
    if value <= timezone.now():
        raise ValidationError({"send_at": "Choose a time in the future."})
    return value


@require_POST
def compose_send(request: HttpRequest, pk: int) -> HttpResponse:
    outgoing = _outgoing(request, pk)
    try:
        outgoing = _save(request, outgoing)
        outgoing = services.queue_message(
            outgoing=outgoing, send_at=_send_at(request), sender_ip=tracking_views.client_ip(request) or None
        )
    except ValidationError as error:
        errors = error.message_dict if hasattr(error, "error_dict") else {"general": error.messages}
        outgoing.refresh_from_db()
        context = _composer_context(request, outgoing, errors=errors)
        return _no_store(render(request, "mailsync/compose/compose.html", context, status=422))
    return redirect("mailsync:outgoing_detail", pk=outgoing.pk)


@require_POST
def compose_signature(request: HttpRequest, pk: int) -> HttpResponse:
    """The From account changed: the draft's signature becomes that account's default. Answers the new
    signature block for the editor (images as links to this draft's files)."""
    outgoing = _outgoing(request, pk)
    account_id = parse_id(request.POST.get("account", ""))
    account = selectors.sendable_accounts(request.user).filter(pk=account_id).first() if account_id else None
    if account is None or outgoing.state != OutgoingMessage.State.DRAFT:
        raise Http404("No such account.")
    block = template_services.switch_signature(outgoing=outgoing, account=account)
    return _no_store(HttpResponse(_to_urls(outgoing, block), content_type="text/html; charset=utf-8"))


@require_POST
def compose_preview(request: HttpRequest, pk: int) -> HttpResponse:
    """The message as the recipient will get it: the draft is saved, its smart fields filled for its
    recipients and record; the fields that would hold the send are listed."""
    outgoing = _outgoing(request, pk)
    try:
        outgoing = _save(request, outgoing)
    except ValidationError as error:
        return JsonResponse({"error": " ".join(error.messages)}, status=409)
    try:
        recipients = [
            r.address for r in parse_recipients(outgoing.to_addresses) + parse_recipients(outgoing.cc_addresses)
        ]
    except AddressError:
        recipients = []
    filled = smart_fields.fill_message(
        request.user,
        subject=outgoing.subject,
        body_html=outgoing.body_html,
        recipients=recipients,
        record=services.record_of(outgoing),
        account=outgoing.account,
    )
    # Only the text and the quote: the files are not read for a preview.
    body = mime.body_with_quote(
        _to_urls(outgoing, filled.body_html), quoted_html=outgoing.quoted_html, quote_header=outgoing.quote_header
    )
    document = display.frame_document(body)
    return _no_store(
        JsonResponse(
            {
                "subject": filled.subject,
                "document": document,
                "missing": [smart_fields.label_of(key) for key in filled.missing],
            }
        )
    )


@require_POST
def compose_discard(request: HttpRequest, pk: int) -> HttpResponse:
    outgoing = _outgoing(request, pk)
    try:
        services.discard_draft(outgoing=outgoing)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
        return redirect("mailsync:outgoing_detail", pk=outgoing.pk)
    messages.success(request, "Draft discarded.")
    return redirect("mailsync:drafts")


@require_POST
def compose_check(request: HttpRequest) -> HttpResponse:
    """An address field checked as it is typed (W4): "" when fine, else the reason."""
    try:
        parse_recipients(request.POST.get("value", "")[:10000])
    except AddressError as error:
        return HttpResponse(str(error), content_type="text/plain; charset=utf-8")
    return HttpResponse("", content_type="text/plain; charset=utf-8")


@require_GET
def compose_suggest(request: HttpRequest) -> HttpResponse:
    suggestions = selectors.address_suggestions(request.user, request.GET.get("q", "")[:100])
    return _no_store(
        JsonResponse({"suggestions": [{"name": name, "address": address} for name, address in suggestions]})
    )


# --- Files ------------------------------------------------------------------------------------------------


@require_POST
def compose_upload(request: HttpRequest, pk: int) -> HttpResponse:
    outgoing = _outgoing(request, pk)
    upload = request.FILES.get("file")
    if upload is None:
        return JsonResponse({"error": "Choose a file to attach."}, status=400)
    if upload.size > MAX_UPLOAD_BYTES:
        return JsonResponse({"error": "This file is larger than any mail provider accepts."}, status=400)
    try:
        attachment = services.add_attachment(outgoing=outgoing, upload=upload, inline=request.POST.get("inline") == "1")
    except ValidationError as error:
        return JsonResponse({"error": " ".join(error.messages)}, status=400)
    return JsonResponse(
        {
            "id": attachment.pk,
            "name": attachment.display_name,
            "size": attachment.size,
            "url": _file_url(attachment),
            "remove_url": reverse("mailsync:compose_file_remove", args=[attachment.pk]),
            "inline": attachment.is_inline,
        }
    )


@require_GET
def compose_file(request: HttpRequest, pk: int) -> FileResponse:
    try:
        attachment = selectors.get_outgoing_attachment_for_user(request.user, pk)
    except OutgoingAttachment.DoesNotExist:
        raise Http404("No such file.") from None
    inline = attachment.is_inline and attachment.content_type in services.INLINE_TYPES
    response = FileResponse(
        attachment.file.open("rb"),
        as_attachment=not inline,
        filename=attachment.display_name,
        content_type=attachment.content_type if inline else "application/octet-stream",
    )
    response["X-Content-Type-Options"] = "nosniff"
    patch_cache_control(response, private=True)
    return response


@require_POST
def compose_file_remove(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        attachment = selectors.get_outgoing_attachment_for_user(request.user, pk)
        services.remove_attachment(attachment=attachment)
    except OutgoingAttachment.DoesNotExist:
        raise Http404("No such file.") from None
    except ValidationError as error:
        return JsonResponse({"error": " ".join(error.messages)}, status=409)
    return JsonResponse({"removed": pk})


# --- After Send -------------------------------------------------------------------------------------------


@require_GET
def outgoing_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """The state of a message on its way out (queued with Undo, sending, sent, failed with Retry); the
    status block refreshes itself while the message is on its way."""
    outgoing = _outgoing(request, pk)
    if outgoing.state == OutgoingMessage.State.DRAFT:
        return redirect("mailsync:compose", pk=outgoing.pk)
    failures = selectors.delivery_failures_of([outgoing.sent_message_id]) if outgoing.sent_message_id else {}
    context = {
        "outgoing": outgoing,
        "now": timezone.now(),
        "delivery_failures": failures.get(outgoing.sent_message_id, []),
    }
    template = "mailsync/compose/_status.html" if request.GET.get("fragment") else "mailsync/compose/outgoing.html"
    return _no_store(render(request, template, context))


def _outgoing_action(request: HttpRequest, pk: int, service, done: str) -> HttpResponse:
    outgoing = _outgoing(request, pk)
    try:
        outgoing = service(outgoing=outgoing)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
        return redirect("mailsync:outgoing_detail", pk=outgoing.pk)
    if done:
        messages.success(request, done)
    if outgoing.state == OutgoingMessage.State.DRAFT:
        return redirect("mailsync:compose", pk=outgoing.pk)
    return redirect("mailsync:outgoing_detail", pk=outgoing.pk)


@require_POST
def outgoing_undo(request: HttpRequest, pk: int) -> HttpResponse:
    return _outgoing_action(request, pk, services.undo_send, "Sending undone: the message is a draft again.")


@require_POST
def outgoing_retry(request: HttpRequest, pk: int) -> HttpResponse:
    return _outgoing_action(request, pk, services.retry, "Sending again.")


@require_POST
def outgoing_edit(request: HttpRequest, pk: int) -> HttpResponse:
    return _outgoing_action(request, pk, services.edit_failed, "")


@require_GET
def drafts(request: HttpRequest) -> HttpResponse:
    """Drafts, and below them what is on its way out or failed."""
    context = {
        "drafts": selectors.drafts_for(request.user).select_related("account")[:200],
        "outbox": selectors.outbox_for(request.user).select_related("account").order_by("-updated_at")[:200],
        "has_account": selectors.sendable_accounts(request.user).exists(),
    }
    return _no_store(render(request, "mailsync/compose/drafts.html", context))
