"""Bulk mail (newsletters, list mail) stored before it had a list of its own: read the header block of
each stored raw message once, mark the bulk ones (EmailMessage.is_bulk, as ingestion does for new mail)
and place them again (mailsync.mailboxes: out of the Inbox, into Bulk). Run by
`manage.py rebuild_mailboxes --detect-bulk`; idempotent, in batches, a short transaction each."""

from __future__ import annotations

import logging

from django.db import transaction

from mailsync.mailboxes.placement import refresh_mailboxes
from mailsync.models import EmailMessage

from .parsing import raw_is_bulk

logger = logging.getLogger(__name__)

BATCH = 500
# Enough for any real header block (the headers are all that is read).
HEAD_BYTES = 256 * 1024


def _head_of(message: EmailMessage) -> bytes:
    with message.raw.open("rb") as handle:
        return handle.read(HEAD_BYTES)


def detect_bulk_mail(*, user=None) -> int:
    """Mark the received, not yet marked messages (of one user) whose headers say bulk; returns how many."""
    candidates = (
        EmailMessage.objects.filter(is_bulk=False, direction=EmailMessage.Direction.RECEIVED, deleted_at__isnull=True)
        .exclude(raw="")
        .order_by("pk")
    )
    if user is not None:
        candidates = candidates.filter(thread__owner=user)
    marked = 0
    last = 0
    while True:
        batch = list(candidates.filter(pk__gt=last).only("pk", "raw")[:BATCH])
        if not batch:
            return marked
        last = batch[-1].pk
        bulk_ids = []
        for message in batch:
            try:
                if raw_is_bulk(_head_of(message)):
                    bulk_ids.append(message.pk)
            except OSError:
                logger.warning("message %s: raw file unreadable, bulk headers not checked", message.pk)
        if bulk_ids:
            with transaction.atomic():
                EmailMessage.objects.filter(pk__in=bulk_ids).update(is_bulk=True)
                refresh_mailboxes(bulk_ids)
            marked += len(bulk_ids)
