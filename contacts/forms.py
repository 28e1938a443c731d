import re

from django import forms
from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from crm.addresses import is_free_mail_domain, normalize_domain, normalize_email
from crm.records import OwnedRecordForm

from . import selectors
from .models import Organization, Person

# People paste lists in every shape: one per line, comma- or semicolon-separated.
SEPARATORS_RE = re.compile(r"[\s,;]+")
DOMAIN_RE = re.compile(r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])$")


def split_entries(text: str) -> list[str]:
    return [entry for entry in SEPARATORS_RE.split(text or "") if entry]


def join_lines(values) -> str:
    return "\n".join(str(value) for value in values)


def parse_emails(text: str) -> tuple[list[str], list[str]]:
    """(normalised, de-duplicated addresses in the order given; the entries that are not addresses)."""
    addresses, invalid = [], []
    for entry in split_entries(text):
        address = normalize_email(entry)
        try:
            validate_email(address)
        except ValidationError:
            invalid.append(entry)
            continue
        if address not in addresses:
            addresses.append(address)
    return addresses, invalid


def parse_domains(text: str) -> tuple[list[str], list[str]]:
    """Accepts "acme.com", "@acme.com" or an address at the domain: (normalised domains; invalid entries)."""
    domains, invalid = [], []
    for entry in split_entries(text):
        domain = normalize_domain(entry.rsplit("@", 1)[-1])
        if not DOMAIN_RE.match(domain):
            invalid.append(entry)
            continue
        if domain not in domains:
            domains.append(domain)
    return domains, invalid


class PersonForm(OwnedRecordForm):
    emails = forms.CharField(
        label="Email addresses",
        required=False,
        max_length=5000,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "ann@example.com"}),
        help_text="One address per line. The first one is the primary address.",
    )

    class Meta:
        model = Person
        fields = [
            "first_name",
            "last_name",
            "emails",
            "organization",
            "job_title",
            "phone",
            "owner",
            "visibility",
            "notes",
        ]
        widgets = {"notes": forms.Textarea(attrs={"rows": 4})}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.limit_to_visible("organization", selectors.visible_organizations(self.user))
        if self.instance.pk and not self.is_bound:
            self.initial["emails"] = join_lines(item.email for item in self.instance.emails.all())

    def clean_emails(self) -> list[str]:
        addresses, invalid = parse_emails(self.cleaned_data.get("emails", ""))
        errors = [f"“{entry}” is not a valid email address." for entry in invalid]
        taken = selectors.email_owners(addresses, exclude_person=self.instance)
        if taken:
            # Name the other person only to someone who may see them.
            visible_ids = set(
                selectors.visible_people(self.user)
                .filter(pk__in=[person.pk for person in taken.values()])
                .values_list("pk", flat=True)
            )
            errors += [
                f"{address} already belongs to {person.name}."
                if person.pk in visible_ids
                else f"{address} already belongs to another person (not shared with you)."
                for address, person in taken.items()
            ]
        if errors:
            raise ValidationError(errors)
        return addresses

    def clean(self):
        cleaned = super().clean()
        has_name = cleaned.get("first_name") or cleaned.get("last_name")
        if not has_name and not cleaned.get("emails") and "emails" not in self.errors:
            raise ValidationError("Give the person a name or at least one email address.")
        return cleaned


class OrganizationForm(OwnedRecordForm):
    website = forms.URLField(required=False, assume_scheme="https")
    domains = forms.CharField(
        label="Email domains",
        required=False,
        max_length=5000,
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": "acme.com"}),
        help_text="One per line. Mail from these domains is linked to this organization.",
    )

    class Meta:
        model = Organization
        fields = ["name", "domains", "website", "address", "owner", "visibility", "notes"]
        widgets = {"address": forms.Textarea(attrs={"rows": 3}), "notes": forms.Textarea(attrs={"rows": 4})}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk and not self.is_bound:
            self.initial["domains"] = join_lines(item.domain for item in self.instance.domains.all())

    def clean_domains(self) -> list[str]:
        domains, invalid = parse_domains(self.cleaned_data.get("domains", ""))
        errors = [f"“{entry}” is not a valid email domain." for entry in invalid]
        errors += [
            f"{domain} is a free email provider: people from many organizations use it, so it cannot identify this one."
            for domain in domains
            if is_free_mail_domain(domain)
        ]
        taken = selectors.domain_owners(domains, exclude_organization=self.instance)
        if taken:
            visible_ids = set(
                selectors.visible_organizations(self.user)
                .filter(pk__in=[organization.pk for organization in taken.values()])
                .values_list("pk", flat=True)
            )
            errors += [
                f"{domain} is already used by {organization.name}."
                if organization.pk in visible_ids
                else f"{domain} is already used by another organization (not shared with you)."
                for domain, organization in taken.items()
            ]
        if errors:
            raise ValidationError(errors)
        return domains
