"""Writes for projects."""

from datetime import date

from django.core.exceptions import ValidationError
from django.db import transaction

from contacts.models import Organization, Person
from crm.models import User, Visibility
from crm.records import require_can_delete
from deals.models import Deal
from mailsync.linking.tasks import relink_after_commit, relink_threads_after_commit, threads_linked_to

from .models import Project


def _check_dates(start_date: date | None, due_date: date | None) -> None:
    if start_date and due_date and due_date < start_date:
        raise ValidationError({"due_date": "The due date cannot be before the start date."})


@transaction.atomic
def create_project(
    *,
    owner: User,
    title: str,
    status: str = Project.Status.OPEN,
    person: Person | None = None,
    organization: Organization | None = None,
    deal: Deal | None = None,
    start_date: date | None = None,
    due_date: date | None = None,
    notes: str = "",
    visibility: str = Visibility.COMPANY,
) -> Project:
    _check_dates(start_date, due_date)
    project = Project.objects.create(
        owner=owner,
        title=title,
        status=status,
        person=person,
        organization=organization,
        deal=deal,
        start_date=start_date,
        due_date=due_date,
        notes=notes,
        visibility=visibility,
    )
    relink_after_commit(project)
    return project


@transaction.atomic
def update_project(
    *,
    project: Project,
    owner: User,
    title: str,
    status: str,
    person: Person | None,
    organization: Organization | None,
    deal: Deal | None,
    start_date: date | None,
    due_date: date | None,
    notes: str,
    visibility: str,
) -> Project:
    _check_dates(start_date, due_date)
    project.owner = owner
    project.title = title
    project.status = status
    project.person = person
    project.organization = organization
    project.deal = deal
    project.start_date = start_date
    project.due_date = due_date
    project.notes = notes
    project.visibility = visibility
    project.save(
        update_fields=[
            "owner",
            "title",
            "status",
            "person",
            "organization",
            "deal",
            "start_date",
            "due_date",
            "notes",
            "visibility",
            "updated_at",
        ]
    )
    relink_after_commit(project)
    return project


@transaction.atomic
def delete_project(*, project: Project, user: User) -> None:
    require_can_delete(user, project)
    linked_threads = threads_linked_to(project)
    project.delete()
    relink_threads_after_commit(linked_threads)
