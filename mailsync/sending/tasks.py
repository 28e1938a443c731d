"""Celery tasks of sending: thin, they load by id and call delivery (mailsync/tasks.py lists them for the
worker under their registered names `mailsync.tasks.<name>`)."""

from datetime import datetime

from celery import shared_task
from django.db import transaction
from django.utils import timezone

from . import cleanup, delivery


@shared_task(name="mailsync.tasks.send_outgoing", ignore_result=True, acks_late=True)
def send_outgoing(outgoing_id: int) -> str:
    """Deliver one message if it is due (an early or repeated run does nothing harmful: see delivery)."""
    return delivery.deliver(outgoing_id)


@shared_task(name="mailsync.tasks.send_due_mail", ignore_result=True)
def send_due_mail() -> int:
    """Beat: hand every due, left-behind or not yet filed message to send_outgoing; drop the drafts nobody
    typed in."""
    cleanup.discard_untouched_drafts()
    ids = delivery.due_ids()
    for outgoing_id in ids:
        send_outgoing.delay(outgoing_id)
    return len(ids)


def send_after_commit(outgoing_id: int, send_at: datetime) -> None:
    """Once the queueing transaction commits, run the task at `send_at` (the undo window or send later).
    If the broker loses it, the beat sweep (send_due_mail) sends the message anyway."""
    countdown = max(0.0, (send_at - timezone.now()).total_seconds())
    transaction.on_commit(lambda: send_outgoing.apply_async((outgoing_id,), countdown=countdown))
