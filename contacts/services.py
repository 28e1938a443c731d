"""Writes for people and organizations."""

from collections.abc import Sequence

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from crm.addresses import is_free_mail_domain, normalize_domain, normalize_email
from crm.models import User, Visibility
from crm.records import require_can_delete
from mailsync.linking.tasks import relink_after_commit, relink_threads_after_commit, threads_linked_to

from .models import Organization, OrganizationDomain, Person, PersonEmail


def _unique_in_order(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(value for value in values if value))


@transaction.atomic
def set_person_emails(*, person: Person, emails: Sequence[str]) -> None:
    """Make the person's addresses exactly `emails`; the first one is the primary address."""
    wanted = _unique_in_order([normalize_email(email) for email in emails])
    existing = {item.email.lower(): item for item in person.emails.all()}
    stale = [item.pk for address, item in existing.items() if address not in wanted]
    if stale:
        PersonEmail.objects.filter(pk__in=stale).delete()
    for position, address in enumerate(wanted):
        is_primary = position == 0
        item = existing.get(address)
        if item is None:
            try:
                # A savepoint, so that losing a race for an address leaves the transaction usable.
                with transaction.atomic():
                    PersonEmail.objects.create(person=person, email=address, is_primary=is_primary)
            except IntegrityError:
                raise ValidationError({"emails": f"{address} already belongs to another person."}) from None
        elif item.is_primary != is_primary:
            item.is_primary = is_primary
            item.save(update_fields=["is_primary"])


@transaction.atomic
def clear_bouncing(*, person_email: PersonEmail) -> PersonEmail:
    """The address is fine: forget that mail to it bounced (until the next permanent failure)."""
    person_email.bouncing_since = None
    person_email.bounce_status = ""
    person_email.bounce_diagnostic = ""
    person_email.save(update_fields=["bouncing_since", "bounce_status", "bounce_diagnostic"])
    return person_email


@transaction.atomic
def remove_person_email(*, person_email: PersonEmail, user: User) -> None:
    """Remove one address of a person (a bouncing one, say); the next one becomes primary. A deletion: for
    the person's owner or a company admin, as deleting the person is."""
    person = person_email.person
    require_can_delete(user, person)
    remaining = [other.email for other in person.emails.all() if other.pk != person_email.pk]
    set_person_emails(person=person, emails=remaining)
    relink_after_commit(person)


@transaction.atomic
def create_person(
    *,
    owner: User,
    first_name: str = "",
    last_name: str = "",
    emails: Sequence[str] = (),
    organization: Organization | None = None,
    job_title: str = "",
    phone: str = "",
    notes: str = "",
    visibility: str = Visibility.COMPANY,
) -> Person:
    person = Person.objects.create(
        owner=owner,
        first_name=first_name,
        last_name=last_name,
        organization=organization,
        job_title=job_title,
        phone=phone,
        notes=notes,
        visibility=visibility,
    )
    set_person_emails(person=person, emails=emails)
    relink_after_commit(person)
    return person


@transaction.atomic
def update_person(
    *,
    person: Person,
    owner: User,
    first_name: str,
    last_name: str,
    emails: Sequence[str],
    organization: Organization | None,
    job_title: str,
    phone: str,
    notes: str,
    visibility: str,
) -> Person:
    person.owner = owner
    person.first_name = first_name
    person.last_name = last_name
    person.organization = organization
    person.job_title = job_title
    person.phone = phone
    person.notes = notes
    person.visibility = visibility
    person.save(
        update_fields=[
            "owner",
            "first_name",
            "last_name",
            "organization",
            "job_title",
            "phone",
            "notes",
            "visibility",
            "updated_at",
        ]
    )
    set_person_emails(person=person, emails=emails)
    relink_after_commit(person)
    return person


@transaction.atomic
def delete_person(*, person: Person, user: User) -> None:
    require_can_delete(user, person)
    linked_threads = threads_linked_to(person)
    person.delete()
    relink_threads_after_commit(linked_threads)


@transaction.atomic
def set_organization_domains(*, organization: Organization, domains: Sequence[str]) -> None:
    """Make the organization's email domains exactly `domains`."""
    wanted = _unique_in_order([normalize_domain(domain) for domain in domains])
    free = [domain for domain in wanted if is_free_mail_domain(domain)]
    if free:
        raise ValidationError({"domains": f"{free[0]} is a free email provider and cannot identify an organization."})
    existing = {item.domain.lower(): item for item in organization.domains.all()}
    stale = [item.pk for domain, item in existing.items() if domain not in wanted]
    if stale:
        OrganizationDomain.objects.filter(pk__in=stale).delete()
    for domain in wanted:
        if domain in existing:
            continue
        try:
            with transaction.atomic():
                OrganizationDomain.objects.create(organization=organization, domain=domain)
        except IntegrityError:
            raise ValidationError({"domains": f"{domain} is already used by another organization."}) from None


@transaction.atomic
def create_organization(
    *,
    owner: User,
    name: str,
    domains: Sequence[str] = (),
    website: str = "",
    address: str = "",
    notes: str = "",
    visibility: str = Visibility.COMPANY,
) -> Organization:
    organization = Organization.objects.create(
        owner=owner, name=name, website=website, address=address, notes=notes, visibility=visibility
    )
    set_organization_domains(organization=organization, domains=domains)
    relink_after_commit(organization)
    return organization


@transaction.atomic
def update_organization(
    *,
    organization: Organization,
    owner: User,
    name: str,
    domains: Sequence[str],
    website: str,
    address: str,
    notes: str,
    visibility: str,
) -> Organization:
    organization.owner = owner
    organization.name = name
    organization.website = website
    organization.address = address
    organization.notes = notes
    organization.visibility = visibility
    organization.save(update_fields=["owner", "name", "website", "address", "notes", "visibility", "updated_at"])
    set_organization_domains(organization=organization, domains=domains)
    relink_after_commit(organization)
    return organization


@transaction.atomic
def delete_organization(*, organization: Organization, user: User) -> None:
    require_can_delete(user, organization)
    linked_threads = threads_linked_to(organization)
    organization.delete()
    relink_threads_after_commit(linked_threads)
