"""Celery task of the mail lists: thin, loads by id and calls the search indexing.

Its name is the one it had when every task lived in mailsync/tasks.py, so a task queued before an
upgrade still runs.
"""

from celery import shared_task

from . import search


@shared_task(name="mailsync.tasks.index_mailbox_for_search", ignore_result=True)
def index_mailbox_for_search(entry_ids: list[int]) -> None:
    """Search documents of mail list rows that changed (kept out of the ingest transaction)."""
    search.index_for_search(entry_ids)
