"""Smart fields (W3): `{{person.first_name}}` or `{{person.first_name|there}}` in a template, a signature or
a message, filled from the recipient, the record the message is written from and the sender.

Safe by construction: user-written text is never given to Django's or Jinja's template engine. One regular
expression finds `{{group.field}}` or `{{group.field|fallback}}` with exactly two names; a name is looked up
in the fixed catalogue below (a table of functions, never getattr with the user's words), and its value is
HTML-escaped into HTML. Everything else, `{{ settings.SECRET_KEY }}`, `{% load %}`, `{{ a.b.c }}`,
`{{ person.__class__ }}`, stays as the text the user wrote. A field with no value and no fallback is
"missing": the composer highlights it and sending is held until it is filled, given a fallback or removed.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from django.db.models import Model

from contacts.models import Organization, Person, PersonEmail
from crm.addresses import normalize_email
from crm.models import User
from deals.models import Deal
from leads.models import Lead
from mailsync.models import EmailAccount, MailSettings, Signature
from projects.models import Project

from .template_selectors import default_signature

# {{ group.field }} or {{ group.field | fallback }}; a fallback holds no braces and no bar.
FIELD_RE = re.compile(r"\{\{\s*([A-Za-z_]{1,30})\.([A-Za-z_]{1,40})\s*(?:\|([^{}|]{0,200}))?\}\}")
_TAG_RE = re.compile(r"<[^>]*>")
# As a field, a signature is its text: its images are sent as inline parts only when the signature itself
# is inserted (template_services.signature_block), never as links to this server.
_SIGNATURE_IMAGE = re.compile(r'<img\b[^>]*src="(?:https?://[^/"]+)?/mail/signature-images/\d+/"[^>]*>', re.IGNORECASE)
MISSING_CLASS = "smart-field-missing"


class HtmlValue(str):
    """A value that is already sanitised HTML (a signature): put into HTML as it is, into text stripped."""


@dataclass(frozen=True)
class Sources:
    """Where the values come from; every record here was checked visible to the sender."""

    sender: User
    person: Person | None = None
    organization: Organization | None = None
    deal: Deal | None = None
    lead: Lead | None = None
    project: Project | None = None
    account: EmailAccount | None = None
    signature: Signature | None = None
    sender_settings: MailSettings | None = None  # the sender's job title and phone


def _money(value: Decimal | None, currency: str) -> str:
    if value is None:
        return ""
    amount = f"{value:,.2f}".removesuffix(".00")
    return f"{amount} {currency}".strip()


def _full_name(person: Person | None) -> str:
    return f"{person.first_name} {person.last_name}".strip() if person else ""


def _date(value) -> str:
    return value.strftime("%-d %B %Y") if value else ""


def _organization_domain(organization: Organization | None) -> str:
    if organization is None:
        return ""
    domain = organization.domains.order_by("pk").first()
    return domain.domain if domain else ""


@dataclass(frozen=True)
class Field:
    key: str  # "person.first_name"
    label: str  # "First name"
    value: Callable[[Sources], str]


@dataclass(frozen=True)
class Group:
    name: str
    label: str
    fields: tuple[Field, ...]


def _f(group: str, name: str, label: str, value: Callable[[Sources], str]) -> Field:
    return Field(f"{group}.{name}", label, value)


CATALOGUE: tuple[Group, ...] = (
    Group(
        "person",
        "Person",
        (
            _f("person", "first_name", "First name", lambda s: s.person.first_name if s.person else ""),
            _f("person", "last_name", "Last name", lambda s: s.person.last_name if s.person else ""),
            _f(
                "person",
                "full_name",
                "Full name",
                lambda s: _full_name(s.person),
            ),
            _f("person", "email", "Email address", lambda s: s.person.primary_email if s.person else ""),
            _f("person", "job_title", "Job title", lambda s: s.person.job_title if s.person else ""),
            _f("person", "phone", "Phone", lambda s: s.person.phone if s.person else ""),
        ),
    ),
    Group(
        "organization",
        "Organization",
        (
            _f("organization", "name", "Name", lambda s: s.organization.name if s.organization else ""),
            _f("organization", "website", "Website", lambda s: s.organization.website if s.organization else ""),
            _f("organization", "domain", "Email domain", lambda s: _organization_domain(s.organization)),
            _f("organization", "address", "Address", lambda s: s.organization.address if s.organization else ""),
        ),
    ),
    Group(
        "deal",
        "Deal",
        (
            _f("deal", "title", "Title", lambda s: s.deal.title if s.deal else ""),
            _f("deal", "value", "Value", lambda s: _money(s.deal.value, s.deal.currency) if s.deal else ""),
            _f("deal", "stage", "Stage", lambda s: s.deal.stage.name if s.deal else ""),
            _f(
                "deal",
                "expected_close_date",
                "Expected close date",
                lambda s: _date(s.deal and s.deal.expected_close_date),
            ),
        ),
    ),
    Group(
        "lead",
        "Lead",
        (
            _f("lead", "title", "Title", lambda s: s.lead.title if s.lead else ""),
            _f("lead", "value", "Value", lambda s: _money(s.lead.value, s.lead.currency) if s.lead else ""),
            _f("lead", "source", "Source", lambda s: s.lead.source if s.lead else ""),
        ),
    ),
    Group(
        "project",
        "Project",
        (
            _f("project", "title", "Title", lambda s: s.project.title if s.project else ""),
            _f("project", "start_date", "Start date", lambda s: _date(s.project.start_date) if s.project else ""),
            _f("project", "due_date", "Due date", lambda s: _date(s.project.due_date) if s.project else ""),
        ),
    ),
    Group(
        "sender",
        "You (the sender)",
        (
            _f("sender", "first_name", "First name", lambda s: s.sender.first_name),
            _f("sender", "last_name", "Last name", lambda s: s.sender.last_name),
            _f("sender", "full_name", "Full name", lambda s: s.sender.get_full_name()),
            _f(
                "sender",
                "email",
                "Email address",
                lambda s: s.account.email_address if s.account else s.sender.email,
            ),
            _f("sender", "job_title", "Job title", lambda s: getattr(s.sender_settings, "sender_job_title", "")),
            _f("sender", "phone", "Phone", lambda s: getattr(s.sender_settings, "sender_phone", "")),
            _f(
                "sender",
                "signature",
                "Signature",
                lambda s: HtmlValue(_SIGNATURE_IMAGE.sub("", s.signature.body_html)) if s.signature else "",
            ),
        ),
    ),
)
FIELDS: dict[str, Field] = {field.key: field for group in CATALOGUE for field in group.fields}


def values_for(sources: Sources) -> dict[str, str]:
    """Every field's value (empty when there is none); computed once per rendering."""
    return {key: (field.value(sources) or "") for key, field in FIELDS.items()}


@dataclass(frozen=True)
class Rendered:
    text: str
    missing: tuple[str, ...]  # known fields without a value or a fallback (left as written)
    unknown: tuple[str, ...]  # {{a.b}} that is no field (left as written)


def _fallback_text(raw: str, *, in_html: bool) -> str:
    text = raw.strip()
    if in_html:
        # The fallback was typed into HTML: take its text only, whatever tags an editor put around it.
        text = html.unescape(_TAG_RE.sub("", text))
    return text


def _as_text(value: str) -> str:
    if isinstance(value, HtmlValue):
        return " ".join(html.unescape(_TAG_RE.sub(" ", value)).split())
    return value


def render(source: str, values: Mapping[str, str], *, in_html: bool, mark_missing: bool = False) -> Rendered:
    """Fill the smart fields of `source`. `in_html`: the source is HTML (values escaped, an HtmlValue kept
    as HTML); otherwise it is plain text such as a subject (no escaping; line breaks become spaces).
    `mark_missing` wraps a missing field in <mark class="smart-field-missing"> for the editor."""
    missing: list[str] = []
    unknown: list[str] = []

    def fill(match: re.Match) -> str:
        key = f"{match.group(1).lower()}.{match.group(2).lower()}"
        if key not in FIELDS:
            if match.group(0) not in unknown:
                unknown.append(match.group(0))
            return match.group(0)
        value = values.get(key, "")
        if value:
            if not in_html:
                return " ".join(_as_text(value).split())
            return value if isinstance(value, HtmlValue) else html.escape(value)
        if match.group(3) is not None and match.group(3).strip():
            fallback = _fallback_text(match.group(3), in_html=in_html)
            return html.escape(fallback) if in_html else " ".join(fallback.split())
        if key not in missing:
            missing.append(key)
        if in_html and mark_missing:
            return f'<mark class="{MISSING_CLASS}" data-field="{key}">{match.group(0)}</mark>'
        return match.group(0)

    text = FIELD_RE.sub(fill, source)
    if not in_html:
        text = " ".join(text.replace("\r", " ").replace("\n", " ").split()) if ("\n" in text or "\r" in text) else text
    return Rendered(text=text, missing=tuple(missing), unknown=tuple(unknown))


def highlight(html_text: str) -> str:
    """The HTML with every known field that has no fallback marked for the editor (nothing filled): what
    the composer shows when a draft is opened again. The marks are for the screen only: saving drops them."""

    def mark(match: re.Match) -> str:
        key = f"{match.group(1).lower()}.{match.group(2).lower()}"
        if key not in FIELDS or (match.group(3) or "").strip():
            return match.group(0)
        return f'<mark class="{MISSING_CLASS}" data-field="{key}">{match.group(0)}</mark>'

    return FIELD_RE.sub(mark, html_text)


def fields_in(*texts: str) -> list[str]:
    """The known fields still written in these texts, in order (what holds a send)."""
    found: list[str] = []
    for text in texts:
        for match in FIELD_RE.finditer(text or ""):
            key = f"{match.group(1).lower()}.{match.group(2).lower()}"
            if key in FIELDS and key not in found:
                found.append(key)
    return found


def label_of(key: str) -> str:
    group_name, _dot, _name = key.partition(".")
    for group in CATALOGUE:
        if group.name == group_name:
            return f"{group.label}: {FIELDS[key].label}" if key in FIELDS else key
    return key


# -- where the values come from ---------------------------------------------------------------------


def _visible(model: type[Model], user: User, obj: Model | None) -> Model | None:
    if obj is None:
        return None
    return model.objects.visible_to(user).filter(pk=obj.pk).first()


def person_for_addresses(user: User, addresses: Iterable[str]) -> Person | None:
    """The first address (in the order given) that belongs to a person the user may see."""
    normalized = [normalize_email(address) for address in addresses if address]
    if not normalized:
        return None
    owners = dict(
        PersonEmail.objects.filter(email__in=normalized, person__in=Person.objects.visible_to(user)).values_list(
            "email", "person_id"
        )
    )
    for address in normalized:
        if address in owners:
            return Person.objects.select_related("organization").get(pk=owners[address])
    return None


def _single_open(queryset) -> Model | None:
    found = list(queryset[:2])
    return found[0] if len(found) == 1 else None


def sources_for(
    user: User,
    *,
    recipients: Sequence[str] = (),
    record: Model | None = None,
    account: EmailAccount | None = None,
    signature: Signature | None = None,
) -> Sources:
    """The person is the first recipient the user knows, else the record's person; the organization, deal,
    lead and project come from the record (a deal's person and organization included), else from the
    person (their organization; their only open deal or lead). Nothing the user may not see is used."""
    record_person = record_org = deal = lead = project = None
    if isinstance(record, Person):
        record_person = record
    elif isinstance(record, Organization):
        record_org = record
    elif isinstance(record, Deal):
        deal = record
    elif isinstance(record, Lead):
        lead = record
    elif isinstance(record, Project):
        project = record
    deal = _visible(Deal, user, deal)
    lead = _visible(Lead, user, lead)
    project = _visible(Project, user, project)
    if project is not None and deal is None:
        deal = _visible(Deal, user, project.deal)
    for holder in (deal, lead, project):
        if holder is not None:
            record_person = record_person or holder.person
            record_org = record_org or holder.organization
    record_person = _visible(Person, user, record_person)
    person = person_for_addresses(user, recipients) or record_person
    organization = _visible(Organization, user, record_org) or _visible(
        Organization, user, person.organization if person else None
    )
    if person is not None and deal is None and record is None:
        deal = _single_open(Deal.objects.visible_to(user).filter(person=person, status=Deal.Status.OPEN))
    if person is not None and lead is None and record is None:
        lead = _single_open(Lead.objects.visible_to(user).filter(person=person, status=Lead.Status.OPEN))
    if account is not None and account.user_id != user.pk:
        account = None
    if signature is not None and (account is None or signature.account_id != account.pk):
        signature = None
    if signature is None and account is not None:
        signature = default_signature(account, reply=False)
    return Sources(
        sender=user,
        person=person,
        organization=organization,
        deal=deal,
        lead=lead,
        project=project,
        account=account,
        signature=signature,
        sender_settings=MailSettings.objects.filter(user=user).first(),
    )


@dataclass(frozen=True)
class Filled:
    subject: str
    body_html: str
    missing: tuple[str, ...]


def fill_message(
    user: User,
    *,
    subject: str,
    body_html: str,
    recipients: Sequence[str] = (),
    record: Model | None = None,
    account: EmailAccount | None = None,
) -> Filled:
    """Fill what can be filled in a message about to be sent (the recipients may have changed since a
    template was inserted); `missing` lists what still holds the send, by label."""
    values = values_for(sources_for(user, recipients=recipients, record=record, account=account))
    filled_subject = render(subject, values, in_html=False)
    filled_body = render(body_html, values, in_html=True)
    missing = tuple(dict.fromkeys(filled_subject.missing + filled_body.missing))
    return Filled(subject=filled_subject.text, body_html=filled_body.text, missing=missing)


def missing_fields_message(missing: Iterable[str]) -> str:
    """What the composer says when a send is held."""
    labels = ", ".join(label_of(key) for key in missing)
    return (
        f"Some smart fields have no value: {labels}. Fill them in, give them a fallback such as "
        "{{person.first_name|there}}, or delete them."
    )
