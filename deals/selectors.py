"""Reads for deals and pipelines; deals always start from what the user may see."""

from django.db.models import Q, QuerySet
from django.shortcuts import get_object_or_404

from contacts.models import Organization, Person
from contacts.selectors import visible_organization_prefetch, visible_person_prefetch
from crm.models import User
from crm.records import filter_by_terms
from mailsync.linking.access import timeline_for

from .models import Deal, Pipeline, Stage


def visible_deals(user: User) -> QuerySet[Deal]:
    return Deal.objects.visible_to(user)


def _with_relations(deals: QuerySet[Deal], user: User) -> QuerySet[Deal]:
    return deals.select_related("pipeline", "stage", "owner").prefetch_related(
        visible_person_prefetch(user), visible_organization_prefetch(user)
    )


def _deal_matches(term: str) -> Q:
    return (
        Q(title__icontains=term)
        | Q(person__first_name__icontains=term)
        | Q(person__last_name__icontains=term)
        | Q(organization__name__icontains=term)
    )


def deal_list(
    user: User,
    *,
    query: str = "",
    status: str = "",
    pipeline: Pipeline | None = None,
    stage: Stage | None = None,
) -> QuerySet[Deal]:
    deals = visible_deals(user)
    if status:
        deals = deals.filter(status=status)
    if pipeline is not None:
        deals = deals.filter(pipeline=pipeline)
    if stage is not None:
        deals = deals.filter(stage=stage)
    return _with_relations(filter_by_terms(deals, query, _deal_matches), user)


def get_deal_for_user(user: User, pk: int) -> Deal:
    return get_object_or_404(_with_relations(visible_deals(user), user), pk=pk)


def deals_linked_to(
    user: User, *, person: Person | None = None, organization: Organization | None = None
) -> QuerySet[Deal]:
    deals = visible_deals(user)
    if person is not None:
        deals = deals.filter(person=person)
    if organization is not None:
        deals = deals.filter(organization=organization)
    return _with_relations(deals, user)


def pipelines() -> QuerySet[Pipeline]:
    return Pipeline.objects.all()


def stages() -> QuerySet[Stage]:
    return Stage.objects.select_related("pipeline")


def stages_of(pipeline_id: int | None) -> QuerySet[Stage]:
    if not pipeline_id:
        return Stage.objects.none()
    return stages().filter(pipeline_id=pipeline_id)


def timeline_for_deal(user: User, deal: Deal) -> list:
    """Email conversations linked to this deal that the user may see, newest first (C4)."""
    return timeline_for(user, deal=deal)
