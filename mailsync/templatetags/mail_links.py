"""`{% email_link address [label] %}`: an email address as a link that follows the user's preference (W6).

"mailto": the computer's mail program. "crm": the CRM's composer, To filled in (mailsync.workspace, a new
draft from the user's own account). Load with `{% load mail_links %}`. `{% compose_url record %}`: the
composer for a record page's "Email" action (To: the record's person; the conversation linked to it).
"""

from urllib.parse import quote, urlencode

from django import template
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html

from mailsync.models import MailSettings

register = template.Library()

_CACHE_ATTRIBUTE = "_mail_link_preference"


def link_preference(request) -> str:
    """The viewer's preference, read once per request (a page may show dozens of addresses)."""
    if request is None:
        return MailSettings.LinkPreference.MAILTO
    cached = getattr(request, _CACHE_ATTRIBUTE, None)
    if cached is None:
        user = getattr(request, "user", None)
        cached = MailSettings.LinkPreference.MAILTO
        if user is not None and user.is_authenticated:
            stored = MailSettings.objects.filter(user=user).values_list("email_link_preference", flat=True).first()
            cached = stored or MailSettings._meta.get_field("email_link_preference").default
        setattr(request, _CACHE_ATTRIBUTE, cached)
    return cached


def _crm_url(address: str) -> str | None:
    try:
        compose = reverse("mailsync:compose_new")
    except NoReverseMatch:  # the mail workspace is not installed: fall back to mailto:
        return None
    return f"{compose}?{urlencode({'to': address})}"


def email_href(address: str, preference: str) -> str:
    if preference == MailSettings.LinkPreference.CRM:
        url = _crm_url(address)
        if url is not None:
            return url
    return "mailto:" + quote(address, safe="@+")


@register.simple_tag(takes_context=True)
def email_link(context, address: str, label: str = "") -> str:
    address = (address or "").strip()
    if not address:
        return label or ""
    preference = link_preference(context.get("request"))
    href = email_href(address, preference)
    kind = "mailto" if href.startswith("mailto:") else "crm"
    # bdi: an address next to right-to-left text keeps its own direction (S9).
    return format_html(
        '<a href="{}" class="email-link" data-link-kind="{}"><bdi>{}</bdi></a>', href, kind, label or address
    )


@register.simple_tag
def compose_url(record) -> str:
    """The composer for a new conversation from this record (person, organization, deal, lead, project)."""
    kind = record._meta.model_name
    return f"{reverse('mailsync:compose_new')}?{urlencode({'record': f'{kind}:{record.pk}'})}"
