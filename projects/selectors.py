"""Reads for projects; always starting from what the user may see."""

from django.db.models import Prefetch, Q, QuerySet
from django.shortcuts import get_object_or_404

from contacts.models import Organization, Person
from contacts.selectors import visible_organization_prefetch, visible_person_prefetch
from crm.models import User
from crm.records import filter_by_terms
from deals.models import Deal
from mailsync.linking.access import timeline_for

from .models import Project


def visible_projects(user: User) -> QuerySet[Project]:
    return Project.objects.visible_to(user)


def _with_relations(projects: QuerySet[Project], user: User) -> QuerySet[Project]:
    return projects.select_related("owner").prefetch_related(
        visible_person_prefetch(user),
        visible_organization_prefetch(user),
        Prefetch("deal", queryset=Deal.objects.visible_to(user)),
    )


def _project_matches(term: str) -> Q:
    return (
        Q(title__icontains=term)
        | Q(person__first_name__icontains=term)
        | Q(person__last_name__icontains=term)
        | Q(organization__name__icontains=term)
        | Q(deal__title__icontains=term)
    )


def project_list(user: User, *, query: str = "", status: str = "") -> QuerySet[Project]:
    projects = visible_projects(user)
    if status:
        projects = projects.filter(status=status)
    return _with_relations(filter_by_terms(projects, query, _project_matches), user)


def get_project_for_user(user: User, pk: int) -> Project:
    return get_object_or_404(_with_relations(visible_projects(user), user), pk=pk)


def projects_linked_to(
    user: User,
    *,
    person: Person | None = None,
    organization: Organization | None = None,
    deal: Deal | None = None,
) -> QuerySet[Project]:
    projects = visible_projects(user)
    if person is not None:
        projects = projects.filter(person=person)
    if organization is not None:
        projects = projects.filter(organization=organization)
    if deal is not None:
        projects = projects.filter(deal=deal)
    return _with_relations(projects, user)


def timeline_for_project(user: User, project: Project) -> list:
    """Email conversations linked to this project that the user may see, newest first (C4)."""
    return timeline_for(user, project=project)
