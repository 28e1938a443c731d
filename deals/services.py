"""Writes for deals."""

from datetime import datetime
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from contacts.models import Organization, Person
from crm.models import User, Visibility
from crm.records import require_can_delete
from mailsync.linking.tasks import relink_after_commit, relink_threads_after_commit, threads_linked_to

from .models import Deal, Pipeline, Stage


def closed_at_for(status: str, closed_at: datetime | None) -> datetime | None:
    """An open deal has no close date; a won or lost one keeps the moment it was first closed."""
    if status == Deal.Status.OPEN:
        return None
    return closed_at or timezone.now()


def _check_stage(pipeline: Pipeline, stage: Stage) -> None:
    if stage.pipeline_id != pipeline.pk:
        raise ValidationError({"stage": f"Stage “{stage.name}” is not part of the pipeline “{pipeline.name}”."})


def _check_value(value: Decimal) -> None:
    if value < 0:
        raise ValidationError({"value": "The value cannot be negative."})


@transaction.atomic
def create_deal(
    *,
    owner: User,
    title: str,
    pipeline: Pipeline,
    stage: Stage,
    status: str = Deal.Status.OPEN,
    value: Decimal = Decimal("0"),
    currency: str = "EUR",
    person: Person | None = None,
    organization: Organization | None = None,
    expected_close_date=None,
    notes: str = "",
    visibility: str = Visibility.COMPANY,
) -> Deal:
    _check_stage(pipeline, stage)
    _check_value(value)
    deal = Deal.objects.create(
        owner=owner,
        title=title,
        pipeline=pipeline,
        stage=stage,
        status=status,
        closed_at=closed_at_for(status, None),
        value=value,
        currency=currency.upper(),
        person=person,
        organization=organization,
        expected_close_date=expected_close_date,
        notes=notes,
        visibility=visibility,
    )
    relink_after_commit(deal)
    return deal


@transaction.atomic
def update_deal(
    *,
    deal: Deal,
    owner: User,
    title: str,
    pipeline: Pipeline,
    stage: Stage,
    status: str,
    value: Decimal,
    currency: str,
    person: Person | None,
    organization: Organization | None,
    expected_close_date,
    notes: str,
    visibility: str,
) -> Deal:
    _check_stage(pipeline, stage)
    _check_value(value)
    deal.owner = owner
    deal.title = title
    deal.pipeline = pipeline
    deal.stage = stage
    deal.status = status
    deal.closed_at = closed_at_for(status, deal.closed_at)
    deal.value = value
    deal.currency = currency.upper()
    deal.person = person
    deal.organization = organization
    deal.expected_close_date = expected_close_date
    deal.notes = notes
    deal.visibility = visibility
    deal.save(
        update_fields=[
            "owner",
            "title",
            "pipeline",
            "stage",
            "status",
            "closed_at",
            "value",
            "currency",
            "person",
            "organization",
            "expected_close_date",
            "notes",
            "visibility",
            "updated_at",
        ]
    )
    relink_after_commit(deal)
    return deal


@transaction.atomic
def delete_deal(*, deal: Deal, user: User) -> None:
    require_can_delete(user, deal)
    linked_threads = threads_linked_to(deal)
    deal.delete()
    relink_threads_after_commit(linked_threads)
