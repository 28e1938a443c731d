"""Celery tasks of linking, and the helpers the CRM apps call after their writes (L7: retroactive linking).

Thin: they load by id and call mailsync.linking.rules. Each task keeps the name it had when every task
lived in mailsync/tasks.py (`mailsync.tasks.<name>`), so a task queued before an upgrade still runs.
The CRM apps (contacts, deals, leads, projects) call `relink_after_commit` / `relink_threads_after_commit`
from their services; ingestion (mailsync.sync.ingest) enqueues `link_threads` after its commit.
"""

from celery import shared_task
from django.db import transaction

from contacts.models import Organization, Person
from deals.models import Deal
from leads.models import Lead
from mailsync.models import ThreadLink
from projects.models import Project

from . import rules

RECORD_MODELS = {"person": Person, "organization": Organization, "deal": Deal, "lead": Lead, "project": Project}


@shared_task(name="mailsync.tasks.link_threads", ignore_result=True)
def link_threads(thread_ids: list[int]) -> None:
    rules.link_threads(thread_ids)


@shared_task(name="mailsync.tasks.relink_record", ignore_result=True)
def relink_record(kind: str, pk: int) -> None:
    """Re-run linking after a CRM record changed (L7: retroactive linking)."""
    record = RECORD_MODELS[kind].objects.filter(pk=pk).first()
    if record is None:
        return
    if kind == "person":
        rules.relink_for_person(record)
    elif kind == "organization":
        rules.relink_for_organization(record)
    else:
        rules.relink_for_record(record)


def relink_after_commit(record) -> None:
    """Called by the CRM services when a record is created or changed."""
    kind = record._meta.model_name
    pk = record.pk
    transaction.on_commit(lambda: relink_record.delay(kind, pk))


def relink_threads_after_commit(thread_ids) -> None:
    """For deletes: the threads that were linked to the deleted record, collected before it went."""
    ids = sorted(set(thread_ids))
    if ids:
        transaction.on_commit(lambda: link_threads.delay(ids))


def threads_linked_to(record) -> list[int]:
    return list(
        ThreadLink.objects.filter(**{rules.target_field_for(record): record}).values_list("thread_id", flat=True)
    )
