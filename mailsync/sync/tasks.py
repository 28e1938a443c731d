"""Celery tasks of sync: thin, they load by id and call the engine or the outbox.

Names: each keeps the name it had when every task lived in mailsync/tasks.py (`mailsync.tasks.<name>`),
so a task queued before an upgrade still finds its function and the beat schedule (crm/settings.py)
stays valid. mailsync/tasks.py imports this module, which is how the worker finds them.

Queues: a sync for new mail (the IDLE watcher's, beat's, "Sync now") runs on SYNC_QUEUE and does only
the quick part; the initial sync of a new account and past-email syncs continue on BULK_QUEUE in
slices of the engine's time budget, so a large first sync never delays the new mail of others. Every
worker must consume both (and Celery's default queue): `make run` does; see the README for production.

Retries: mail-server problems never raise out of a task; the sync records them on the account with
a backoff (`next_retry_at`) that the beat-driven `enqueue_due_syncs` respects. Authentication
problems stop the schedule until the user re-authenticates.
"""

from collections.abc import Iterable

from celery import shared_task
from django.db import transaction

from . import engine, outbox

SYNC_QUEUE = "sync"
BULK_QUEUE = "sync-bulk"
# A sync for new mail that finds the account busy (a bulk slice or another sync holds its lock) tries
# again this many times, this many seconds apart: the change it was started for must not wait for beat.
LOCKED_RETRIES = 12
LOCKED_RETRY_SECONDS = 5


@shared_task(name="mailsync.tasks.sync_account", ignore_result=True, acks_late=True)
def sync_account(account_id: int, bulk: bool = False, attempt: int = 0) -> None:
    """One sync of one account. The quick part here; initial / past-email work continues on the bulk
    queue in new tasks, so a big mailbox never holds a worker (or the account's lock) for long."""
    report = engine.sync_account(account_id, bulk=bulk)
    if not report.locked:
        if not bulk and attempt < LOCKED_RETRIES:
            sync_account.apply_async(
                (account_id,), {"attempt": attempt + 1}, queue=SYNC_QUEUE, countdown=LOCKED_RETRY_SECONDS
            )
        return
    if report.more_work and report.error is None:
        enqueue_bulk_sync(account_id)


def enqueue_sync(account_id: int) -> None:
    """A sync for new mail (the IDLE watcher saw a change, or the user asked)."""
    sync_account.apply_async((account_id,), queue=SYNC_QUEUE)


def enqueue_bulk_sync(account_id: int) -> None:
    sync_account.apply_async((account_id,), {"bulk": True}, queue=BULK_QUEUE)


@shared_task(name="mailsync.tasks.enqueue_due_syncs", ignore_result=True)
def enqueue_due_syncs() -> int:
    """Beat: every MAILSYNC_SYNC_INTERVAL seconds, a sync for each account that is due. The one periodic
    schedule: the IDLE watchers only add syncs for changes they see (mailsync.sync.watcher)."""
    account_ids = list(engine.due_accounts().values_list("pk", flat=True))
    for account_id in account_ids:
        enqueue_sync(account_id)
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
    transaction.on_commit(lambda: enqueue_sync(account_id))


def replay_after_commit(account_ids: Iterable[int]) -> None:
    """Replay these accounts' outboxes once the current transaction (which wrote the rows) commits."""
    ids = list(account_ids)
    if ids:
        transaction.on_commit(lambda: [apply_server_actions.delay(account_id) for account_id in ids])
