"""Reads for people and organizations; every one of them starts from what the user may see."""

from collections.abc import Iterable

from django.db.models import Prefetch, Q, QuerySet
from django.db.models.functions import Lower
from django.shortcuts import get_object_or_404

from crm.models import User
from crm.records import filter_by_terms
from mailsync.linking.access import timeline_for

from .models import Organization, OrganizationDomain, Person, PersonEmail


def visible_people(user: User) -> QuerySet[Person]:
    return Person.objects.visible_to(user)


def visible_organizations(user: User) -> QuerySet[Organization]:
    return Organization.objects.visible_to(user)


def visible_organization_prefetch(user: User, lookup: str = "organization") -> Prefetch:
    """Follow a link to an organization only when the user may see it (otherwise it reads as None)."""
    return Prefetch(lookup, queryset=visible_organizations(user))


def visible_person_prefetch(user: User, lookup: str = "person") -> Prefetch:
    """Follow a link to a person only when the user may see it; emails come along for `Person.name`."""
    return Prefetch(lookup, queryset=visible_people(user).prefetch_related("emails"))


def _person_matches(term: str) -> Q:
    return (
        Q(first_name__icontains=term)
        | Q(last_name__icontains=term)
        | Q(pk__in=PersonEmail.objects.filter(email__icontains=term).values("person_id"))
    )


def _organization_matches(term: str) -> Q:
    return Q(name__icontains=term) | Q(
        pk__in=OrganizationDomain.objects.filter(domain__icontains=term).values("organization_id")
    )


def person_list(user: User, *, query: str = "") -> QuerySet[Person]:
    people = (
        visible_people(user).select_related("owner").prefetch_related("emails", visible_organization_prefetch(user))
    )
    return filter_by_terms(people, query, _person_matches)


def organization_list(user: User, *, query: str = "") -> QuerySet[Organization]:
    organizations = visible_organizations(user).select_related("owner").prefetch_related("domains")
    return filter_by_terms(organizations, query, _organization_matches)


def get_person_for_user(user: User, pk: int) -> Person:
    people = (
        visible_people(user).select_related("owner").prefetch_related("emails", visible_organization_prefetch(user))
    )
    return get_object_or_404(people, pk=pk)


def get_person_email_for_user(user: User, person_pk: int, email_pk: int) -> PersonEmail:
    """One address of a person the user may see; 404 otherwise."""
    person = get_person_for_user(user, person_pk)
    return get_object_or_404(person.emails.select_related("person"), pk=email_pk)


def get_organization_for_user(user: User, pk: int) -> Organization:
    organizations = visible_organizations(user).select_related("owner").prefetch_related("domains")
    return get_object_or_404(organizations, pk=pk)


def people_of_organization(user: User, organization: Organization) -> QuerySet[Person]:
    return visible_people(user).filter(organization=organization).prefetch_related("emails")


def email_owners(emails: Iterable[str], *, exclude_person: Person | None = None) -> dict[str, Person]:
    """Which person already holds each of these (normalised) addresses."""
    wanted = {email.lower() for email in emails}
    if not wanted:
        return {}
    matches = (
        PersonEmail.objects.annotate(email_lower=Lower("email")).filter(email_lower__in=wanted).select_related("person")
    )
    if exclude_person is not None and exclude_person.pk:
        matches = matches.exclude(person=exclude_person)
    return {match.email_lower: match.person for match in matches}


def domain_owners(
    domains: Iterable[str], *, exclude_organization: Organization | None = None
) -> dict[str, Organization]:
    """Which organization already uses each of these (normalised) domains."""
    wanted = {domain.lower() for domain in domains}
    if not wanted:
        return {}
    matches = (
        OrganizationDomain.objects.annotate(domain_lower=Lower("domain"))
        .filter(domain_lower__in=wanted)
        .select_related("organization")
    )
    if exclude_organization is not None and exclude_organization.pk:
        matches = matches.exclude(organization=exclude_organization)
    return {match.domain_lower: match.organization for match in matches}


def timeline_for_person(user: User, person: Person) -> list:
    """Email conversations linked to this person that the user may see, newest first (C4)."""
    return timeline_for(user, person=person)


def timeline_for_organization(user: User, organization: Organization) -> list:
    """Email conversations linked to this organization that the user may see, newest first (C4)."""
    return timeline_for(user, organization=organization)
