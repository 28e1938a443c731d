"""The tracking endpoints (W5): the pixel and the links of tracked mail. No login; one SELECT, at most one
INSERT; a plain 404 for a tampered or unknown token (never a redirect: destinations are only on the server);
at most MAILSYNC_TRACKING_RATE_LIMIT recorded hits per address per window (more are answered alike but not
recorded). An outsider learns nothing: a valid URL answers a GIF or the link's destination, anything else 404.
"""

from __future__ import annotations

import base64

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse, HttpResponseNotFound, HttpResponseRedirect
from django.utils import timezone
from django.views.decorators.http import require_GET

from crm.ratelimit import count_in_window
from mailsync.models import OutgoingMessage, TrackedLink, TrackingEvent

from .tracking import Hit, MessageFacts, record_hit, token_is_valid

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


def _not_found() -> HttpResponse:
    return HttpResponseNotFound("Not found", content_type="text/plain; charset=utf-8")


def _no_store(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "no-store, private"
    response["Referrer-Policy"] = "no-referrer"
    return response


def client_ip(request: HttpRequest) -> str:
    """The requester's address; behind the TLS proxy (DJANGO_SECURE_PROXY_SSL_HEADER) the one it appended
    last to X-Forwarded-For, the only entry a client cannot forge."""
    if getattr(settings, "SECURE_PROXY_SSL_HEADER", None):
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        if forwarded:
            return forwarded.rsplit(",", 1)[-1].strip()
    return request.META.get("REMOTE_ADDR", "")


def _within_rate_limit(ip: str) -> bool:
    count = count_in_window(f"mailsync:tracking:{ip}", window=settings.MAILSYNC_TRACKING_RATE_WINDOW)
    return count <= settings.MAILSYNC_TRACKING_RATE_LIMIT


def _signed_in_as(request: HttpRequest, owner_id: int) -> tuple[bool, bool]:
    """(the sender, another CRM user) signed in on this browser."""
    if settings.SESSION_COOKIE_NAME not in request.COOKIES:
        return False, False  # no session lookup for recipients
    if not request.user.is_authenticated:
        return False, False
    return request.user.pk == owner_id, request.user.pk != owner_id


def _record(request: HttpRequest, *, kind: str, outgoing_pk: int, owner_id: int, facts: MessageFacts, link_id=None):
    ip = client_ip(request)
    if not _within_rate_limit(ip):
        return
    sender, colleague = _signed_in_as(request, owner_id)
    hit = Hit(
        kind=kind,
        ip=ip,
        user_agent=request.META.get("HTTP_USER_AGENT", ""),
        at=timezone.now(),
        signed_in_as_sender=sender,
        signed_in_as_colleague=colleague,
    )
    record_hit(outgoing_pk=outgoing_pk, facts=facts, hit=hit, link_id=link_id)


@login_not_required
@require_GET
def tracking_open(request: HttpRequest, pk: int, token: str) -> HttpResponse:
    if not token_is_valid(TrackingEvent.Kind.OPEN, pk, 0, token):
        return _not_found()
    row = (
        OutgoingMessage.objects.filter(pk=pk, tracking=True, state=OutgoingMessage.State.SENT)
        .values_list("owner_id", "delivered_at", "sender_ip")
        .first()
    )
    if row is None:
        return _not_found()
    owner_id, delivered_at, sender_ip = row
    facts = MessageFacts(delivered_at=delivered_at, sender_ip=sender_ip)
    _record(request, kind=TrackingEvent.Kind.OPEN, outgoing_pk=pk, owner_id=owner_id, facts=facts)
    return _no_store(HttpResponse(PIXEL, content_type="image/gif"))


@login_not_required
@require_GET
def tracking_click(request: HttpRequest, pk: int, index: int, token: str) -> HttpResponse:
    if not token_is_valid(TrackingEvent.Kind.CLICK, pk, index, token):
        return _not_found()
    row = (
        TrackedLink.objects.filter(outgoing_id=pk, index=index, outgoing__tracking=True)
        .values_list("pk", "url", "outgoing__owner_id", "outgoing__delivered_at", "outgoing__sender_ip")
        .first()
    )
    if row is None or not row[1].lower().startswith(("http://", "https://")):
        return _not_found()
    link_id, url, owner_id, delivered_at, sender_ip = row
    facts = MessageFacts(delivered_at=delivered_at, sender_ip=sender_ip)
    _record(request, kind=TrackingEvent.Kind.CLICK, outgoing_pk=pk, owner_id=owner_id, facts=facts, link_id=link_id)
    return _no_store(HttpResponseRedirect(url))
