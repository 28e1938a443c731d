"""Celery tasks of sync: thin, they load by id and call the engine or the outbox.

Names: each keeps the name it had when every task lived in mailsync/tasks.py (`mailsync.tasks.<name>`),
so a task queued before an upgrade still finds its function and the beat schedule (crm/settings.py)
stays valid. mailsync/tasks.py imports this module, which is how the worker finds them.

Retries: mail-server problems never raise out of a task; the sync records them on the account with
a backoff (`next_retry_at`) that the beat-driven `enqueue_due_syncs` respects. Authentication
problems stop the schedule until the user re-authenticates.
"""

from collections.abc import Iterable

from celery import shared_task
from django.db import transaction

from . import engine, outbox


@shared_task(name="mailsync.tasks.sync_account", ignore_result=True, acks_late=True)
def sync_account(account_id: int) -> None:
    """One sync of one account; continues in a new task while initial / past-email work remains, so a
    big mailbox never holds a worker (or the account's lock) for long."""
    report = engine.sync_account(account_id)
    if report.locked and report.more_work and report.error is None:
        sync_account.delay(account_id)


@shared_task(name="mailsync.tasks.enqueue_due_syncs", ignore_result=True)
def enqueue_due_syncs() -> int:
    """Beat: every MAILSYNC_SYNC_INTERVAL seconds, a sync for each account that is due."""
    account_ids = list(engine.due_accounts().values_list("pk", flat=True))
    for account_id in account_ids:
        sync_account.delay(account_id)
    return len(account_ids)


@shared_task(name="mailsync.tasks.apply_server_actions", bind=True, ignore_result=True, acks_late=True, max_retries=6)
def apply_server_actions(self, account_id: int) -> None:
    """Replay the account's outbox (mailsync.sync.outbox) in the mail account. Retried while the account
    is syncing or the server fails transiently; after that the rows wait for the next sync."""
    try:
        outbox.apply_pending_on_server(account_id=account_id, final_attempt=self.request.retries >= self.max_retries)
    except outbox.RetryLater as exc:
        raise self.retry(exc=exc, countdown=20) from exc


def sync_after_commit(account_id: int) -> None:
    """Start a sync of the account once the current transaction commits, so the worker sees what was saved."""
    transaction.on_commit(lambda: sync_account.delay(account_id))


def replay_after_commit(account_ids: Iterable[int]) -> None:
    """Replay these accounts' outboxes once the current transaction (which wrote the rows) commits."""
    ids = list(account_ids)
    if ids:
        transaction.on_commit(lambda: [apply_server_actions.delay(account_id) for account_id in ids])
