"""Reads for leads; always starting from what the user may see."""

from django.db.models import Q, QuerySet
from django.shortcuts import get_object_or_404

from contacts.models import Organization, Person
from contacts.selectors import visible_organization_prefetch, visible_person_prefetch
from crm.models import User
from crm.records import filter_by_terms
from mailsync.linking.access import timeline_for

from .models import Lead


def visible_leads(user: User) -> QuerySet[Lead]:
    return Lead.objects.visible_to(user)


def _with_relations(leads: QuerySet[Lead], user: User) -> QuerySet[Lead]:
    return leads.select_related("owner").prefetch_related(
        visible_person_prefetch(user), visible_organization_prefetch(user)
    )


def _lead_matches(term: str) -> Q:
    return (
        Q(title__icontains=term)
        | Q(source__icontains=term)
        | Q(person__first_name__icontains=term)
        | Q(person__last_name__icontains=term)
        | Q(organization__name__icontains=term)
    )


def lead_list(user: User, *, query: str = "", status: str = "") -> QuerySet[Lead]:
    leads = visible_leads(user)
    if status:
        leads = leads.filter(status=status)
    return _with_relations(filter_by_terms(leads, query, _lead_matches), user)


def get_lead_for_user(user: User, pk: int) -> Lead:
    return get_object_or_404(_with_relations(visible_leads(user), user), pk=pk)


def leads_linked_to(
    user: User, *, person: Person | None = None, organization: Organization | None = None
) -> QuerySet[Lead]:
    leads = visible_leads(user)
    if person is not None:
        leads = leads.filter(person=person)
    if organization is not None:
        leads = leads.filter(organization=organization)
    return _with_relations(leads, user)


def timeline_for_lead(user: User, lead: Lead) -> list:
    """Email conversations linked to this lead that the user may see, newest first (C4)."""
    return timeline_for(user, lead=lead)
