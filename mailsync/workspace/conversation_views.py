"""Pages for one conversation (links, visibility, attachments), blocked addresses and the clean-up.

Thin views: access check through `access` (404 for what the user may not see, admins included for
private mail) -> service -> render. Writes are POST only. A non-boosted htmx request gets the
fragment it swaps in; everything else gets the full page or a redirect to it.
"""

from collections import defaultdict

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.cache import patch_cache_control, patch_vary_headers
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from contacts.models import Organization, Person
from crm.params import parse_id, parse_ids
from crm.records import PlainLabels, is_partial_request
from mailsync.linking import access
from mailsync.linking.rules import (
    LINKABLE_MODELS,
    RECORD_KINDS,
    RECORD_MODELS,
    TARGET_FIELDS,
    link_target,
    rule_label,
    target_field_for,
)
from mailsync.mailboxes.placement import refresh_mailboxes
from mailsync.models import BlockedAddress, EmailMessage, EmailThread, MessageParticipant, SmartBccDelivery, ThreadLink
from mailsync.models.filenames import display_filename
from mailsync.sending import selectors as sending_selectors
from mailsync.sync.threads import normalize_subject

from . import actions, conversation_services, display, inbox_views

# The link form offers at most this many open records of each kind (newest first).
LINK_CHOICES_LIMIT = 200


def _render(request: HttpRequest, *, template: str, partial: str, context: dict, status: int = 200) -> HttpResponse:
    response = render(request, partial if is_partial_request(request) else template, context, status=status)
    patch_vary_headers(response, ["HX-Request"])
    return response


def _error_text(error: ValidationError) -> str:
    return " ".join(error.messages)


# --- One conversation ------------------------------------------------------------------------------------


def _people_choices(user, thread: EmailThread, linked: set) -> list[tuple[str, str]]:
    """People the user may see: those who took part in the conversation first, then the others by name."""
    addresses = MessageParticipant.objects.filter(message__thread=thread).values("address")
    visible = Person.objects.visible_to(user).prefetch_related("emails")
    in_thread = list(visible.filter(emails__email__in=addresses).distinct()[:LINK_CHOICES_LIMIT])
    others = list(visible.exclude(pk__in=[person.pk for person in in_thread])[:LINK_CHOICES_LIMIT])
    return [
        (f"person:{person.pk}", f"{person.name} ({person.primary_email})" if person.primary_email else person.name)
        for person in in_thread + others
        if ("person", person.pk) not in linked
    ][:LINK_CHOICES_LIMIT]


def _link_choices(user, thread: EmailThread, thread_links: list[ThreadLink]) -> list[tuple[str, list[tuple[str, str]]]]:
    """People, organizations, and open deals, leads and projects the user may see and the thread is not
    linked to yet."""
    linked = {
        (name, getattr(link, f"{name}_id"))
        for link in thread_links
        if link.state == ThreadLink.State.LINKED
        for name in TARGET_FIELDS
        if getattr(link, f"{name}_id")
    }
    organizations = Organization.objects.visible_to(user).order_by("name", "pk")[:LINK_CHOICES_LIMIT]
    groups = [
        ("People", _people_choices(user, thread, linked)),
        (
            "Organizations",
            [(f"organization:{o.pk}", o.name) for o in organizations if ("organization", o.pk) not in linked],
        ),
    ]
    for kind in RECORD_KINDS:
        model = RECORD_MODELS[kind]
        records = model.objects.visible_to(user).filter(status="open").order_by("-created_at", "-pk")
        options = [
            (f"{kind}:{record.pk}", str(record))
            for record in records[:LINK_CHOICES_LIMIT]
            if (kind, record.pk) not in linked
        ]
        groups.append((model._meta.verbose_name_plural.capitalize(), options))
    return groups


def _links_context(user, thread: EmailThread) -> dict:
    links = access.thread_links_for_user(user, thread)
    for link in links:
        link.record = link_target(link)
        link.kind = target_field_for(link.record)
        link.target_value = f"{link.kind}:{link.record.pk}"
        link.rule_label = rule_label(link.rule)
    return {
        "thread": thread,
        "linked": [link for link in links if link.state == ThreadLink.State.LINKED],
        "suggested": [link for link in links if link.state == ThreadLink.State.SUGGESTED],
        "unlinked": [link for link in links if link.state == ThreadLink.State.UNLINKED],
        "link_choices": _link_choices(user, thread, links),
        "unknown_senders": conversation_services.unknown_senders(user, thread),
        "can_change_visibility": access.can_change_visibility(user, thread),
        "can_change_links": access.can_change_links(user, thread),
        "visibility_choices": EmailThread.Visibility.choices,
    }


def _images_shown(request: HttpRequest) -> set[int] | None:
    """Messages whose remote images the viewer asked to see on this page load: ?images=<pk> (repeatable)
    or ?images=all (None means all)."""
    wanted = request.GET.getlist("images")
    if "all" in wanted:
        return None
    return parse_ids(wanted)


def _thread_context(user, thread: EmailThread, *, images_shown: set[int] | None = frozenset()) -> dict:
    thread_messages = list(access.thread_messages(thread))
    thread_subject = normalize_subject(thread.subject)
    via_smart_bcc = set(
        SmartBccDelivery.objects.filter(
            message__in=[message.pk for message in thread_messages], status=SmartBccDelivery.Status.FILED
        ).values_list("message_id", flat=True)
    )
    failures = sending_selectors.delivery_failures_of([message.pk for message in thread_messages])
    tracked = sending_selectors.tracking_of([message.pk for message in thread_messages])
    for message in thread_messages:
        message.via_smart_bcc = message.pk in via_smart_bcc
        message.delivery_failures = failures.get(message.pk, [])
        message.tracking_summary = tracked.get(message.pk)
        # A reply's own subject is worth a line only when it says something new (not just "Re: ...").
        message.subject_differs = bool(message.subject) and normalize_subject(message.subject) != thread_subject
        by_role = defaultdict(list)
        for participant in message.participants.all():
            by_role[participant.role].append(participant)
        message.recipients = [
            (label, by_role[role])
            for role, label in (
                (MessageParticipant.Role.TO, "To"),
                (MessageParticipant.Role.CC, "Cc"),
                (MessageParticipant.Role.BCC, "Bcc"),
            )
            if by_role[role]
        ]
        show_images = images_shown is None or message.pk in images_shown
        message.remote_images_shown = message.has_remote_images and show_images
        message.remote_images_blocked = message.has_remote_images and not show_images
        body = display.body_for_viewer(message, show_remote_images=show_images)
        message.frame_document = display.frame_document(body) if body else ""
        # Inline images show in the body; everything else (and inline images of a text-only view) is listed.
        message.listed_attachments = [
            attachment for attachment in message.attachments.all() if not (attachment.is_inline and body)
        ]
    return {
        "thread_messages": thread_messages,
        "frame_sandbox": display.FRAME_SANDBOX,
        "remote_images_shown": any(message.remote_images_shown for message in thread_messages),
        "messages_with_hidden_images": sum(message.remote_images_blocked for message in thread_messages),
        **_links_context(user, thread),
    }


def _mark_read(user, thread: EmailThread, thread_messages: list[EmailMessage]) -> None:
    """The owner opened the thread: its unread messages become read, in the lists and, through the bulk
    action, in the mail account too (read state is two-way). Others reading a shared thread change
    nothing of the owner's mailbox."""
    if thread.owner_id != user.pk:
        return
    unread = [message for message in thread_messages if not message.is_read]
    in_lists = {message.mailbox for message in unread if actions.READ in actions.allowed_actions(message.mailbox)}
    for mailbox in sorted(in_lists):
        actions.apply_bulk_action(user=user, mailbox=mailbox, action=actions.READ, thread_ids=[thread.pk])
    # Messages in no list (Junk / Drafts only, or not placed yet): read in the CRM only.
    elsewhere = [message.pk for message in unread if message.mailbox not in in_lists]
    if elsewhere:
        EmailMessage.objects.filter(pk__in=elsewhere, is_read=False).update(is_read=True)
        refresh_mailboxes(elsewhere)


def _back_url(request: HttpRequest) -> str:
    """Where "Back" leads when the thread was opened from a record page (?back=/deals/3/): a path on
    this site only."""
    candidate = request.GET.get("back", "")
    if candidate.startswith("/") and url_has_allowed_host_and_scheme(candidate, allowed_hosts={request.get_host()}):
        return candidate
    return ""


@require_GET
def thread_detail(request: HttpRequest, pk: int) -> HttpResponse:
    thread = access.get_thread_for_user(request.user, pk)
    htmx = getattr(request, "htmx", None)
    if htmx and htmx.boosted:
        # Untrusted mail renders on this page: load it as a document of its own, so that the browser
        # applies its Content-Security-Policy (a boosted swap would keep the previous page's policy).
        response = HttpResponse(status=200)
        response["HX-Redirect"] = request.get_full_path()
        return response
    context = _thread_context(request.user, thread, images_shown=_images_shown(request))
    _mark_read(request.user, thread, context["thread_messages"])
    context["can_send"] = sending_selectors.sendable_accounts(request.user).exists()
    sent_here = sending_selectors.state_of_sent_messages(request.user, [m.pk for m in context["thread_messages"]])
    for message in context["thread_messages"]:
        message.outgoing = sent_here.get(message.pk)
    # After marking read, so that the list beside the thread shows it read.
    context.update(inbox_views.reading_context(request, thread))
    context["back_url"] = _back_url(request)
    response = _render(
        request,
        template="mailsync/conversations/thread_detail.html",
        partial="mailsync/conversations/_thread.html",
        context=context,
    )
    response["Content-Security-Policy"] = display.content_security_policy(remote_images=context["remote_images_shown"])
    # No Referer to other sites (remote images once allowed, links in the mail). Not "no-referrer": with it
    # the browser sends "Origin: null" with the page's own form posts (Archive, Delete...), which Django's
    # CSRF check refuses.
    response["Referrer-Policy"] = "same-origin"
    patch_cache_control(response, private=True, no_store=True)
    return response


@require_GET
def thread_preview(request: HttpRequest, pk: int) -> HttpResponse:
    """A conversation expanded in place on a record's timeline (htmx): its messages as plain text, so
    that no mail markup runs on the record page. Nothing is marked read: the thread page does that."""
    thread = access.get_thread_for_user(request.user, pk)
    if not is_partial_request(request):
        return redirect("mailsync:thread_detail", pk=thread.pk)
    response = render(
        request,
        "mailsync/conversations/_preview.html",
        {"thread": thread, "thread_messages": access.thread_messages(thread), "back_url": _back_url(request)},
    )
    patch_vary_headers(response, ["HX-Request"])
    patch_cache_control(response, private=True, no_store=True)
    return response


def _offset(request: HttpRequest) -> int:
    raw = request.GET.get("offset", "0")
    return int(raw) if raw.isdigit() and len(raw) < 7 else 0


@require_GET
def record_timeline(request: HttpRequest, kind: str, pk: int) -> HttpResponse:
    """The older conversations of a record's timeline: the next items for htmx ("Older"), a page of
    its own otherwise. 404 for a record the user may not see."""
    model = LINKABLE_MODELS.get(kind)
    if model is None:
        raise Http404("No such kind of record")
    record = get_object_or_404(model.objects.visible_to(request.user), pk=pk)
    threads = access.timeline_for(request.user, **{kind: record}, offset=_offset(request))
    response = _render(
        request,
        template="mailsync/conversations/timeline.html",
        partial="partials/_timeline_items.html",
        context={"record": record, "timeline_threads": threads},
    )
    patch_cache_control(response, private=True, no_store=True)
    return response


def _record_from_post(request: HttpRequest):
    """The record named by POST "target" ("deal:12") if the user may see it (404 if not); None if malformed."""
    kind, _, raw_pk = request.POST.get("target", "").partition(":")
    model = LINKABLE_MODELS.get(kind)
    record_pk = parse_id(raw_pk)
    if model is None or record_pk is None:
        return None
    return get_object_or_404(model.objects.visible_to(request.user), pk=record_pk)


def _after_link_change(request: HttpRequest, thread: EmailThread, *, error: str = "", status: int = 200):
    if is_partial_request(request):
        context = _links_context(request.user, thread)
        context["error"] = error
        return render(request, "mailsync/conversations/_links.html", context, status=status)
    if error:
        messages.error(request, error)
    return redirect("mailsync:thread_detail", pk=thread.pk)


def _change_link(request: HttpRequest, thread: EmailThread, service, done: str) -> HttpResponse:
    record = _record_from_post(request)
    if record is None:
        return _after_link_change(
            request, thread, error="Choose a person, organization, deal, lead or project.", status=400
        )
    try:
        service(user=request.user, thread=thread, record=record)
    except ValidationError as error:
        return _after_link_change(request, thread, error=_error_text(error), status=400)
    if not is_partial_request(request):
        messages.success(request, done.format(record=record))
    return _after_link_change(request, thread)


@require_POST
def thread_link(request: HttpRequest, pk: int) -> HttpResponse:
    """The owner links; anyone else who sees the thread suggests the record to the owner instead."""
    thread = access.get_thread_for_user(request.user, pk)
    if access.can_change_links(request.user, thread):
        return _change_link(request, thread, conversation_services.link_thread, "Linked to {record}.")
    return _change_link(
        request,
        thread,
        conversation_services.suggest_link,
        "{record} is suggested to " + str(thread.owner) + ", who decides what this conversation is linked to.",
    )


def _require_link_owner(request: HttpRequest, thread: EmailThread) -> None:
    if not access.can_change_links(request.user, thread):
        raise PermissionDenied("Only the owner of this conversation links and unlinks it.")


@require_POST
def thread_unlink(request: HttpRequest, pk: int) -> HttpResponse:
    thread = access.get_thread_for_user(request.user, pk)
    _require_link_owner(request, thread)
    return _change_link(
        request,
        thread,
        conversation_services.unlink_thread,
        "Unlinked from {record}. It stays unlinked for later replies.",
    )


@require_POST
def thread_accept_suggestion(request: HttpRequest, pk: int, link_pk: int) -> HttpResponse:
    thread = access.get_thread_for_user(request.user, pk)
    _require_link_owner(request, thread)
    link = next((link for link in access.thread_links_for_user(request.user, thread) if link.pk == link_pk), None)
    if link is None:
        raise Http404("No such suggestion")
    try:
        conversation_services.accept_suggestion(user=request.user, link=link)
    except ValidationError as error:
        return _after_link_change(request, thread, error=_error_text(error), status=400)
    return _after_link_change(request, thread)


@require_POST
def thread_create_person(request: HttpRequest, pk: int) -> HttpResponse:
    """A person from an unknown sender of the conversation (in the organization of their domain)."""
    thread = access.get_thread_for_user(request.user, pk)
    try:
        person = conversation_services.create_person_from_sender(
            user=request.user, thread=thread, address=request.POST.get("address", "")
        )
    except ValidationError as error:
        return _after_link_change(request, thread, error=_error_text(error), status=400)
    if not is_partial_request(request):
        messages.success(request, f"{person} is now a person of the CRM.")
    return _after_link_change(request, thread)


@require_POST
def thread_visibility(request: HttpRequest, pk: int) -> HttpResponse:
    thread = access.get_thread_for_user(request.user, pk)
    if not access.can_change_visibility(request.user, thread):
        raise PermissionDenied("Only the owner of this conversation can change who sees it.")
    try:
        conversation_services.set_thread_visibility(
            user=request.user, thread=thread, visibility=request.POST.get("visibility", "")
        )
    except ValidationError as error:
        return _after_link_change(request, thread, error=_error_text(error), status=400)
    if not is_partial_request(request):
        messages.success(request, f"This conversation is now {thread.get_visibility_display().lower()}.")
    return _after_link_change(request, thread)


def _download_name(filename: str) -> str:
    """A filename safe for Content-Disposition and the user's disk: no path, no control or bidi characters."""
    name = display_filename(filename, fallback="").replace("/", "_").replace("\\", "_").strip(" .")
    return name[:200] or "attachment"


@require_GET
def attachment_download(request: HttpRequest, pk: int) -> FileResponse:
    attachment = access.get_attachment_for_user(request.user, pk)
    try:
        handle = attachment.file.open("rb")
    except (FileNotFoundError, ValueError):
        raise Http404("The file of this attachment is missing.") from None
    # Always a download, never rendered inline: an HTML or SVG attachment must not run on our origin.
    # (An <img> of the thread page still shows inline images: image loads ignore the disposition.)
    response = FileResponse(
        handle,
        as_attachment=True,
        filename=_download_name(attachment.filename),
        content_type=attachment.content_type or "application/octet-stream",
    )
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    patch_cache_control(response, private=True, no_store=True)
    return response


# --- Blocked addresses ---------------------------------------------------------------------------------


class BlockForm(PlainLabels, forms.Form):
    pattern = forms.CharField(
        label="Address or domain",
        max_length=320,
        widget=forms.TextInput(attrs={"placeholder": "ann@example.com or @example.com"}),
    )


def _blocked_context(request: HttpRequest, **extra) -> dict:
    return {"blocked_addresses": BlockedAddress.objects.filter(user=request.user), **extra}


def _render_blocked(request: HttpRequest, status: int = 200, **extra) -> HttpResponse:
    return _render(
        request,
        template="mailsync/conversations/blocked.html",
        partial="mailsync/conversations/_blocked.html",
        context=_blocked_context(request, **extra),
        status=status,
    )


@require_http_methods(["GET", "POST"])
def blocked_list(request: HttpRequest) -> HttpResponse:
    """GET: the list. POST: first a preview ("this would hide N messages"), then with confirm=yes, add."""
    if request.method == "GET":
        return _render_blocked(request, form=BlockForm())
    form = BlockForm(request.POST)
    if not form.is_valid():
        return _render_blocked(request, form=form)
    pattern = form.cleaned_data["pattern"]
    try:
        if request.POST.get("confirm") != "yes":
            normalized, count = conversation_services.preview_blocked_address(user=request.user, pattern=pattern)
            return _render_blocked(request, form=form, preview_pattern=normalized, preview_count=count)
        blocked = conversation_services.add_blocked_address(user=request.user, pattern=pattern)
    except ValidationError as error:
        form.add_error("pattern", _error_text(error))
        return _render_blocked(request, form=form)
    notice = f"{blocked.pattern} is blocked: its mail no longer appears."
    if is_partial_request(request):
        return _render_blocked(request, form=BlockForm(), notice=notice)
    messages.success(request, notice)
    return redirect("mailsync:blocked_list")


@require_POST
def blocked_remove(request: HttpRequest, pk: int) -> HttpResponse:
    blocked = get_object_or_404(BlockedAddress, pk=pk, user=request.user)
    conversation_services.remove_blocked_address(user=request.user, blocked=blocked)
    notice = f"{blocked.pattern} is no longer blocked: its mail appears again."
    if is_partial_request(request):
        return _render_blocked(request, form=BlockForm(), notice=notice)
    messages.success(request, notice)
    return redirect("mailsync:blocked_list")


# --- Remove emails not related to contacts -------------------------------------------------------------


@require_http_methods(["GET", "POST"])
def cleanup(request: HttpRequest) -> HttpResponse:
    """GET: how many messages would go. POST with confirm=yes: remove them (soft delete)."""
    notice = error = ""
    if request.method == "POST":
        if request.POST.get("confirm") == "yes":
            removed = conversation_services.remove_non_contact_mail(request.user)
            notice = f"{removed} email{'' if removed == 1 else 's'} not related to contacts removed."
            if not is_partial_request(request):
                messages.success(request, notice)
                return redirect("mailsync:cleanup")
        else:
            error = "Confirm to remove these emails."
    return _render(
        request,
        template="mailsync/conversations/cleanup.html",
        partial="mailsync/conversations/_cleanup.html",
        context={
            "preview_count": conversation_services.preview_remove_non_contact_mail(request.user),
            "notice": notice,
            "error": error,
        },
        status=400 if error else 200,
    )
