"""Celery tasks of mail sync: thin, load by id and call a service.

Retries: mail-server problems never raise out of a task; the sync records them on the account with
a backoff (`next_retry_at`) that the beat-driven `enqueue_due_syncs` respects. Authentication
problems stop the schedule until the user re-authenticates.
"""

import logging

from celery import shared_task
from django.db import transaction

from .linking import rules as linking
from .sync import engine as sync

logger = logging.getLogger(__name__)


@shared_task(ignore_result=True, acks_late=True)
def sync_account(account_id: int) -> None:
    """One sync of one account; continues in a new task while initial / past-email work remains, so a
    big mailbox never holds a worker (or the account's lock) for long."""
    report = sync.sync_account(account_id)
    if report.locked and report.more_work and report.error is None:
        sync_account.delay(account_id)


@shared_task(ignore_result=True)
def enqueue_due_syncs() -> int:
    """Beat: every MAILSYNC_SYNC_INTERVAL seconds, a sync for each account that is due."""
    account_ids = list(sync.due_accounts().values_list("pk", flat=True))
    for account_id in account_ids:
        sync_account.delay(account_id)
    return len(account_ids)


@shared_task(ignore_result=True)
def link_threads(thread_ids: list[int]) -> None:
    linking.link_threads(thread_ids)


@shared_task(ignore_result=True)
def relink_record(kind: str, pk: int) -> None:
    """Re-run linking after a CRM record changed (L7: retroactive linking)."""
    from contacts.models import Organization, Person
    from deals.models import Deal
    from leads.models import Lead
    from projects.models import Project

    model = {"person": Person, "organization": Organization, "deal": Deal, "lead": Lead, "project": Project}[kind]
    record = model.objects.filter(pk=pk).first()
    if record is None:
        return
    if kind == "person":
        linking.relink_for_person(record)
    elif kind == "organization":
        linking.relink_for_organization(record)
    else:
        linking.relink_for_record(record)


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
    from mailsync.linking.rules import target_field_for

    from .models import ThreadLink

    return list(ThreadLink.objects.filter(**{target_field_for(record): record}).values_list("thread_id", flat=True))


@shared_task(ignore_result=True)
def index_mailbox_for_search(entry_ids: list[int]) -> None:
    """Search documents of mail list rows that changed (mailsync.mailbox: kept out of the ingest transaction)."""
    from .mailboxes import placement as mailbox

    mailbox.index_for_search(entry_ids)


@shared_task(bind=True, ignore_result=True, acks_late=True, max_retries=6)
def apply_server_actions(self, account_id: int) -> None:
    """Replay the account's outbox of bulk actions (mailsync.actions) in the mail account. Retried while
    the account is syncing or the server fails transiently; after that the rows wait for the next sync."""
    from .workspace import actions

    try:
        actions.apply_pending_on_server(account_id=account_id, final_attempt=self.request.retries >= self.max_retries)
    except actions.RetryLater as exc:
        raise self.retry(exc=exc, countdown=20) from exc
