"""Writes for leads."""

from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db import transaction

from contacts.models import Organization, Person
from crm.models import User, Visibility
from crm.records import require_can_delete
from mailsync.linking.tasks import relink_after_commit, relink_threads_after_commit, threads_linked_to

from .models import Lead


def _check_value(value: Decimal) -> None:
    if value < 0:
        raise ValidationError({"value": "The value cannot be negative."})


@transaction.atomic
def create_lead(
    *,
    owner: User,
    title: str,
    status: str = Lead.Status.OPEN,
    source: str = "",
    value: Decimal = Decimal("0"),
    currency: str = "EUR",
    person: Person | None = None,
    organization: Organization | None = None,
    notes: str = "",
    visibility: str = Visibility.COMPANY,
) -> Lead:
    _check_value(value)
    lead = Lead.objects.create(
        owner=owner,
        title=title,
        status=status,
        source=source,
        value=value,
        currency=currency.upper(),
        person=person,
        organization=organization,
        notes=notes,
        visibility=visibility,
    )
    relink_after_commit(lead)
    return lead


@transaction.atomic
def update_lead(
    *,
    lead: Lead,
    owner: User,
    title: str,
    status: str,
    source: str,
    value: Decimal,
    currency: str,
    person: Person | None,
    organization: Organization | None,
    notes: str,
    visibility: str,
) -> Lead:
    _check_value(value)
    lead.owner = owner
    lead.title = title
    lead.status = status
    lead.source = source
    lead.value = value
    lead.currency = currency.upper()
    lead.person = person
    lead.organization = organization
    lead.notes = notes
    lead.visibility = visibility
    lead.save(
        update_fields=[
            "owner",
            "title",
            "status",
            "source",
            "value",
            "currency",
            "person",
            "organization",
            "notes",
            "visibility",
            "updated_at",
        ]
    )
    relink_after_commit(lead)
    return lead


@transaction.atomic
def delete_lead(*, lead: Lead, user: User) -> None:
    require_can_delete(user, lead)
    linked_threads = threads_linked_to(lead)
    lead.delete()
    relink_threads_after_commit(linked_threads)
