"""django-anymail inbound webhooks for Smart BCC: Mailgun, Postmark, SendGrid and Amazon SES.

anymail checks each provider's proof (Mailgun: HMAC signature with MAILGUN_WEBHOOK_SIGNING_KEY;
SendGrid: ECDSA signature with the inbound parse verification key, or basic auth; Postmark and Amazon
SES: HTTP basic auth with ANYMAIL_WEBHOOK_SECRET, since they sign nothing we can check) and normalises
the payload into an AnymailInboundMessage with `envelope_recipient`. A view of a provider that is not
configured answers 403 (Postmark, for one, stops retrying on 403) instead of running unauthenticated.

Each parsed event is handed straight to `filing.file_message` (our views replace anymail's `inbound`
signal with a direct call: no global receiver). Per provider we take the original MIME bytes when the
provider sends them (Mailgun ".../mime" routes, Postmark RawEmail, SendGrid "send raw", SES), so the
filed copy is the message as sent, and the SPF / DKIM results the provider reports.
"""

from __future__ import annotations

import base64
import json
import logging
import warnings
from collections.abc import Callable

from anymail.exceptions import AnymailNotSupportedWarning
from anymail.webhooks.amazon_ses import AmazonSESInboundWebhookView
from anymail.webhooks.mailgun import MailgunInboundWebhookView
from anymail.webhooks.postmark import PostmarkInboundWebhookView
from anymail.webhooks.sendgrid import SendGridBaseWebhookView, SendGridInboundWebhookView
from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from crm.addresses import domain_of

from .authentication import AuthResults, dkim_verdict, signature_domains, spf_verdict
from .filing import InboundMail, file_message

logger = logging.getLogger(__name__)
# anymail warns on every SendGrid view it builds that it no longer tests SendGrid itself; our tests do.
warnings.filterwarnings("ignore", category=AnymailNotSupportedWarning)


class _FileEvents:
    """Stands in for anymail's `inbound` signal on our views: `send` files each event at once."""

    def __init__(self, channel: str, extract: Callable):
        self.channel = channel
        self.extract = extract

    def send(self, sender, event, esp_name) -> None:
        raw, recipients, envelope_sender, auth = self.extract(event)
        for recipient in recipients:
            file_message(
                InboundMail(
                    raw=raw,
                    recipient=recipient,
                    channel=self.channel,
                    envelope_sender=envelope_sender or "",
                    event_id=str(event.event_id or ""),
                    auth=auth,
                )
            )


def _as_bytes(text_or_bytes) -> bytes:
    if isinstance(text_or_bytes, bytes):
        return text_or_bytes
    return str(text_or_bytes).encode("utf-8", "surrogateescape")


def _from_domain(message) -> str:
    return domain_of(str(message.get("From", "") or ""))


def _signature_results(message, verdict: str | None) -> list[tuple[str | None, str]] | None:
    """One verdict for the whole message (Mailgun, SES) spread over the signatures it carries."""
    if verdict is None:
        return None
    return [(domain, verdict) for domain in signature_domains(message.get_all("DKIM-Signature") or [])]


# --- Mailgun -------------------------------------------------------------------------------------------


def _mailgun(event):
    request, message = event.esp_event, event.message
    raw = _as_bytes(request.POST["body-mime"]) if "body-mime" in request.POST else message.as_bytes()
    from_domain = _from_domain(message)
    envelope_sender = message.envelope_sender or ""
    spf = spf_verdict(message.get("X-Mailgun-Spf"), domain_of(envelope_sender) or None, from_domain)
    dkim = dkim_verdict(_signature_results(message, message.get("X-Mailgun-Dkim-Check-Result")), from_domain)
    return raw, [message.envelope_recipient or ""], envelope_sender, AuthResults(spf=spf, dkim=dkim)


class MailgunView(MailgunInboundWebhookView):
    signal = _FileEvents("mailgun", _mailgun)


# --- Postmark ------------------------------------------------------------------------------------------


def _postmark_header(payload: dict, name: str) -> str | None:
    for header in payload.get("Headers") or []:
        if str(header.get("Name", "")).lower() == name.lower():
            return str(header.get("Value", ""))
    return None


def _postmark(event):
    payload, message = event.esp_event, event.message
    raw = _as_bytes(payload["RawEmail"]) if payload.get("RawEmail") else message.as_bytes()
    from_domain = _from_domain(message)
    envelope_sender = message.envelope_sender or ""
    spf = spf_verdict(_postmark_header(payload, "Received-SPF"), domain_of(envelope_sender) or None, from_domain)
    # Postmark runs SpamAssassin and lists its tests: DKIM_VALID_AU is "valid, from the author's domain".
    tests = _postmark_header(payload, "X-Spam-Tests")
    if tests is None:
        dkim_results = None
    else:
        names = {name.strip().upper() for name in tests.split(",")}
        if "DKIM_VALID_AU" in names:
            dkim_results = [(from_domain, "pass")]
        else:
            dkim_results = [(domain, "fail") for domain in signature_domains(message.get_all("DKIM-Signature") or [])]
    auth = AuthResults(spf=spf, dkim=dkim_verdict(dkim_results, from_domain))
    return raw, [message.envelope_recipient or ""], envelope_sender, auth


class PostmarkView(PostmarkInboundWebhookView):
    signal = _FileEvents("postmark", _postmark)


# --- SendGrid ------------------------------------------------------------------------------------------


def _sendgrid_dkim(field: str | None) -> list[tuple[str | None, str]] | None:
    """SendGrid's `dkim` field: "{@example.com : pass}", several comma-separated, "none" when unsigned."""
    if field is None:
        return None
    text = field.strip().strip("{}").strip()
    if not text or text.lower() == "none":
        return []
    results = []
    for item in text.split(","):
        domain, _, result = item.partition(":")
        results.append((domain.strip().lstrip("@") or None, result.strip()))
    return results


def _sendgrid(event):
    request, message = event.esp_event, event.message
    raw = _as_bytes(request.POST["email"]) if "email" in request.POST else message.as_bytes()
    try:
        envelope = json.loads(request.POST.get("envelope", "{}"))
    except ValueError:
        envelope = {}
    recipients = [str(address) for address in envelope.get("to") or []] or [message.envelope_recipient or ""]
    envelope_sender = str(envelope.get("from") or message.envelope_sender or "")
    from_domain = _from_domain(message)
    spf = spf_verdict(request.POST.get("SPF"), domain_of(envelope_sender) or None, from_domain)
    dkim = dkim_verdict(_sendgrid_dkim(request.POST.get("dkim")), from_domain)
    return raw, recipients, envelope_sender, AuthResults(spf=spf, dkim=dkim)


class SendGridView(SendGridBaseWebhookView, SendGridInboundWebhookView):
    """anymail's inbound view, plus the ECDSA signature check of its event view (SendGrid's Inbound Parse
    security policy signs the same way) with SENDGRID_INBOUND_WEBHOOK_VERIFICATION_KEY."""

    key_setting_name = "inbound_webhook_verification_key"
    signal = _FileEvents("sendgrid", _sendgrid)


# --- Amazon SES ----------------------------------------------------------------------------------------


def _amazon_ses(event):
    notification, message = event.esp_event, event.message
    action = notification.get("receipt", {}).get("action", {})
    content = notification.get("content")
    if action.get("type") == "SNS" and content:
        raw = base64.b64decode(content) if action.get("encoding") == "BASE64" else _as_bytes(content)
    else:
        raw = message.as_bytes()  # S3 action: anymail fetched and parsed the object
    receipt = notification.get("receipt", {})
    recipients = [str(address) for address in receipt.get("recipients") or []] or [message.envelope_recipient or ""]
    envelope_sender = str(notification.get("mail", {}).get("source") or "")
    from_domain = _from_domain(message)
    spf = spf_verdict(receipt.get("spfVerdict", {}).get("status"), domain_of(envelope_sender) or None, from_domain)
    dkim_status = receipt.get("dkimVerdict", {}).get("status")
    dkim = dkim_verdict(_signature_results(message, dkim_status), from_domain)
    return raw, recipients, envelope_sender, AuthResults(spf=spf, dkim=dkim)


class AmazonSESView(AmazonSESInboundWebhookView):
    signal = _FileEvents("amazon_ses", _amazon_ses)


# --- the views, refused unless configured ---------------------------------------------------------------


def _anymail(name: str):
    return (getattr(settings, "ANYMAIL", {}) or {}).get(name)


def missing_configuration(provider: str) -> str:
    """Why a provider's webhook must not run now ("" when it may)."""
    if not settings.MAILSYNC_SMART_BCC_DOMAIN:
        return "MAILSYNC_SMART_BCC_DOMAIN is not set"
    if provider == "mailgun":
        return "" if _anymail("MAILGUN_WEBHOOK_SIGNING_KEY") else "MAILGUN_WEBHOOK_SIGNING_KEY is not set"
    if provider == "sendgrid" and _anymail("SENDGRID_INBOUND_WEBHOOK_VERIFICATION_KEY"):
        return ""
    return "" if _anymail("WEBHOOK_SECRET") else "ANYMAIL_WEBHOOK_SECRET (basic auth) is not set"


PROVIDER_VIEWS = {
    "mailgun": MailgunView,
    "postmark": PostmarkView,
    "sendgrid": SendGridView,
    "amazon_ses": AmazonSESView,
}


def webhook_view(provider: str):
    view_class = PROVIDER_VIEWS[provider]
    anymail_view = view_class.as_view()

    @csrf_exempt
    @login_not_required
    def view(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        problem = missing_configuration(provider)
        if problem:
            logger.warning("Smart BCC %s webhook refused: %s", provider, problem)
            return HttpResponse(f"Smart BCC is not configured for {provider}.", status=403, content_type="text/plain")
        return anymail_view(request, *args, **kwargs)

    view.__name__ = f"{provider}_inbound"
    return view
