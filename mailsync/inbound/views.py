"""Settings > Smart BCC (the personal address, accepted senders, "Not filed") and the confirmation page.

Thin views: access check (selectors) -> form -> service -> POST-redirect-GET with a message. Forms post
as ordinary requests (boosted by htmx from the page's body), so the page works without JavaScript; the
copy button is the one script (static/js/smart-bcc.js, no inline code: the pages run under a CSP).
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from mailsync.models import SmartBccDelivery

from . import selectors, services


class AlternateSenderForm(forms.Form):
    address = forms.CharField(
        label="Alternate address",
        max_length=320,
        widget=forms.EmailInput(attrs={"placeholder": "name@example.com", "autocomplete": "email"}),
    )


def _error_text(error: ValidationError) -> str:
    return " ".join(error.messages)


def _page_context(request: HttpRequest, *, form: AlternateSenderForm | None = None) -> dict:
    user = request.user
    domain = selectors.smart_bcc_domain()
    address = services.ensure_address(user=user) if domain else None
    senders = selectors.sender_addresses(user)
    not_filed = selectors.not_filed(user)
    for delivery in not_filed:
        delivery.can_add_sender = delivery.reason == SmartBccDelivery.Reason.UNKNOWN_SENDER and bool(
            delivery.from_address
        )
    return {
        "domain": domain,
        "smart_bcc_address": selectors.full_address(address) if address else "",
        "senders": senders,
        "account_addresses": sorted(senders.accounts - {senders.login}),
        "alternates": list(selectors.alternate_senders(user)),
        "form": form or AlternateSenderForm(),
        "not_filed": not_filed,
        "filed_count": selectors.filed_count(user),
        "confirm_hours": services.confirmation_max_age().total_seconds() // 3600,
        "max_alternates": services.MAX_ALTERNATES,
    }


@require_GET
def smart_bcc_page(request: HttpRequest) -> HttpResponse:
    return render(request, "mailsync/smart_bcc/settings.html", _page_context(request))


def _back() -> HttpResponse:
    return redirect("mailsync:smart_bcc")


@require_POST
def new_address(request: HttpRequest) -> HttpResponse:
    if not selectors.smart_bcc_domain():
        messages.error(request, "Smart BCC is not set up on this server.")
        return _back()
    address = services.replace_address(user=request.user)
    messages.success(
        request,
        f"Your new Smart BCC address is {selectors.full_address(address)}. Mail to the old one is refused from now on.",
    )
    return _back()


def _confirm_url(request: HttpRequest, sender) -> str:
    return request.build_absolute_uri(reverse("mailsync:smart_bcc_confirm", args=[services.confirmation_token(sender)]))


def _send(request: HttpRequest, sender) -> bool:
    try:
        services.send_confirmation(sender=sender, confirm_url=_confirm_url(request, sender))
    except ValidationError as error:
        messages.error(request, _error_text(error))
        return False
    return True


@require_POST
def add_sender(request: HttpRequest) -> HttpResponse:
    form = AlternateSenderForm(request.POST)
    if form.is_valid():
        try:
            sender = services.add_alternate_sender(user=request.user, address=form.cleaned_data["address"])
        except ValidationError as error:
            form.add_error("address", error)
        else:
            if sender.confirmed_at:
                messages.info(request, f"{sender.address} is already confirmed.")
            elif _send(request, sender):
                messages.success(
                    request,
                    f"We sent a confirmation link to {sender.address}. Mail from it is filed once you open the link.",
                )
            return _back()
    return render(request, "mailsync/smart_bcc/settings.html", _page_context(request, form=form), status=400)


@require_POST
def resend_confirmation(request: HttpRequest, pk: int) -> HttpResponse:
    sender = selectors.get_alternate_sender_for_user(request.user, pk)
    if sender.confirmed_at:
        messages.info(request, f"{sender.address} is already confirmed.")
    elif _send(request, sender):
        messages.success(request, f"A new confirmation link is on its way to {sender.address}.")
    return _back()


@require_POST
def remove_sender(request: HttpRequest, pk: int) -> HttpResponse:
    sender = selectors.get_alternate_sender_for_user(request.user, pk)
    services.remove_alternate_sender(user=request.user, sender=sender)
    messages.success(request, f"Mail from {sender.address} is no longer filed. Mail already filed stays.")
    return _back()


@require_POST
def clear_not_filed(request: HttpRequest) -> HttpResponse:
    count = services.clear_not_filed(user=request.user)
    messages.success(request, f"{count} entr{'y' if count == 1 else 'ies'} removed from the list.")
    return _back()


@login_not_required
@require_http_methods(["GET", "POST"])
def confirm_sender(request: HttpRequest, token: str) -> HttpResponse:
    """The link in the confirmation email. GET only shows what would be confirmed; the button POSTs."""
    context: dict = {"token": token}
    try:
        if request.method == "POST":
            context["sender"] = services.confirm_sender(token=token)
            context["confirmed"] = True
        else:
            context["sender"] = services.sender_for_token(token)
            context["confirmed"] = bool(context["sender"].confirmed_at)
    except services.ConfirmationError as error:
        context["error"] = _error_text(error)
        return render(request, "mailsync/smart_bcc/confirm.html", context, status=400)
    return render(request, "mailsync/smart_bcc/confirm.html", context)
