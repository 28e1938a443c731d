"""What tracking saw of the mail in a list of conversations (a record's timeline): `{% load mail_tracking %}`,
`{% tracking_of_threads threads as tracked %}` once for the page, then `{{ tracked|summary_for:thread.pk }}`.
The threads are the ones the page already shows, so the user may see them (and so their tracking)."""

from django import template

from mailsync.sending.selectors import tracking_of_threads as _tracking_of_threads

register = template.Library()


@register.simple_tag
def tracking_of_threads(threads) -> dict:
    return _tracking_of_threads([thread.pk for thread in threads if getattr(thread, "pk", None)])


@register.filter
def summary_for(tracked: dict, thread_pk):
    return tracked.get(thread_pk) if tracked else None
