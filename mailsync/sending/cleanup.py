"""Drafts nobody typed in: a composer opened from an address link, a record's "Email" or a Reply button
and left as it was. They are not listed (selectors.drafts_for) and go after a day."""

from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from mailsync.models import OutgoingAttachment, OutgoingMessage

from .selectors import untouched_drafts


def discard_untouched_drafts(*, older_than: timedelta = timedelta(days=1)) -> int:
    """Delete untouched drafts older than `older_than` (their files after the commit); how many."""
    storage = OutgoingAttachment._meta.get_field("file").storage
    with transaction.atomic():
        stale = untouched_drafts().filter(created_at__lt=timezone.now() - older_than)
        names = list(OutgoingAttachment.objects.filter(message__in=stale).values_list("file", flat=True))
        _total, per_model = stale.delete()
        transaction.on_commit(lambda: [storage.delete(name) for name in names])
    return per_model.get(OutgoingMessage._meta.label, 0)
