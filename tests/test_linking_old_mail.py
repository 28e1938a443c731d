"""Old mail and new deals (issue 17, point 8): a conversation that ended more than OLD_MAIL_DAYS before a
deal (lead, project) was created is suggested for it, not linked; the "why" says so. The inquiry that led
to a deal (days before) is still linked, and a reply after the deal links the whole conversation."""

import datetime as dt

import pytest
from django.urls import reverse
from django.utils import timezone

from conftest import client_for
from mailsync.linking import access
from mailsync.linking.rules import OLD_MAIL_DAYS, link_threads
from mailsync.models import ThreadLink
from tests.factories import DealFactory, LeadFactory
from tests.mail_factories import create_message, create_thread, fast_password_hashing
from tests.test_linking import ANN, links, make_person

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    fast_password_hashing(settings)


def days_ago(days: float) -> dt.datetime:
    return timezone.now() - dt.timedelta(days=days)


def test_mail_from_long_before_a_new_deal_is_suggested_with_the_reason(alice):
    ann = make_person(alice)
    eight_months = create_thread(alice, sender=ANN, subject="Last spring", date=days_ago(240))
    inquiry = create_thread(alice, sender=ANN, subject="Quote please", date=days_ago(3))
    deal = DealFactory(owner=alice, person=ann, title="Anvils 2027")  # created now
    lead = LeadFactory(owner=alice, person=ann, title="Anvil lead")
    link_threads([eight_months.pk, inquiry.pk])

    old = links(eight_months, deal=deal).get()
    assert (old.state, old.rule) == (ThreadLink.State.SUGGESTED, "before_deal")
    assert f"more than {OLD_MAIL_DAYS} days before: suggested, not linked" in old.reason
    assert "Ann Smith" in old.reason
    assert links(eight_months, lead=lead).get().state == ThreadLink.State.SUGGESTED  # the same rule for leads
    assert links(eight_months, person=ann).get().state == ThreadLink.State.LINKED  # the person still is
    new = links(inquiry, deal=deal).get()
    assert (new.state, new.rule) == (ThreadLink.State.LINKED, "single_open_deal")
    # The deal's timeline has the inquiry, not last spring's mail.
    assert [thread.pk for thread in access.timeline_for(alice, deal=deal)] == [inquiry.pk]

    # The thread view shows it under Suggestions with its why; accepting links it.
    html = client_for(alice).get(reverse("mailsync:thread_detail", args=[eight_months.pk])).content.decode()
    assert "Suggestions" in html and "suggested, not linked" in html


def test_a_reply_after_the_deal_links_the_old_conversation(alice):
    ann = make_person(alice)
    thread = create_thread(alice, sender=ANN, date=days_ago(200))
    deal = DealFactory(owner=alice, person=ann)
    link_threads([thread.pk])
    assert links(thread, deal=deal).get().state == ThreadLink.State.SUGGESTED
    create_message(thread, sender=ANN, date=timezone.now())  # the conversation goes on
    link_threads([thread.pk])
    link = links(thread, deal=deal).get()
    assert (link.state, link.rule) == (ThreadLink.State.LINKED, "single_open_deal")


def test_just_inside_the_window_is_linked(alice):
    ann = make_person(alice)
    thread = create_thread(alice, sender=ANN, date=days_ago(OLD_MAIL_DAYS - 1))
    deal = DealFactory(owner=alice, person=ann)
    link_threads([thread.pk])
    assert links(thread, deal=deal).get().state == ThreadLink.State.LINKED
