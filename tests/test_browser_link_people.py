"""The links box of a thread in real Chromium (issue 17, point 6): a person from an unknown sender, and a
link by hand to an organization, both swapped in place (htmx)."""

import pytest

from conftest import browser_login
from contacts.models import Person
from crm.models import Visibility
from mailsync.models import MessageParticipant, ThreadLink
from tests.factories import OrganizationDomainFactory, OrganizationFactory
from tests.mail_factories import create_thread

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_create_a_person_from_the_sender_then_link_an_organization_by_hand(page, alice):
    from playwright.sync_api import expect

    globex = OrganizationFactory(owner=alice, visibility=Visibility.COMPANY, name="Globex")
    OrganizationDomainFactory(organization=globex, domain="globex.example")
    initech = OrganizationFactory(owner=alice, visibility=Visibility.COMPANY, name="Initech")
    thread = create_thread(alice, sender="hank@globex.example", subject="Volcano lair")
    MessageParticipant.objects.filter(message__thread=thread, role="from").update(name="Hank Scorpio")

    browser_login(page, alice)
    page.goto(f"/mail/threads/{thread.pk}/")
    links = page.locator("#thread-links")
    unknown = links.locator(".unknown-senders li", has_text="hank@globex.example")
    expect(unknown).to_contain_text("Hank Scorpio")
    expect(unknown).to_contain_text("at Globex")
    unknown.locator("button", has_text="Create person").click()

    expect(links.locator(".unknown-senders")).to_have_count(0)
    expect(links.locator("li", has_text="Hank Scorpio").first).to_be_visible()
    person = Person.objects.get(emails__email="hank@globex.example")
    assert person.organization == globex and person.name == "Hank Scorpio"

    page.select_option("#thread-links select[name=target]", f"organization:{initech.pk}")
    links.locator("button", has_text="Link").last.click()
    expect(links.locator("li", has_text="Initech")).to_be_visible()
    assert ThreadLink.objects.get(thread=thread, organization=initech).state == ThreadLink.State.LINKED
    assert ThreadLink.objects.get(thread=thread, person=person).state == ThreadLink.State.LINKED


def test_old_mail_is_suggested_for_a_new_deal_with_its_why_and_one_click_links_it(page, alice):
    """Point 8: an 8-month-old conversation and a deal created today."""
    import datetime as dt

    from django.utils import timezone
    from playwright.sync_api import expect

    from mailsync.linking.rules import link_threads
    from tests.factories import DealFactory
    from tests.test_linking import ANN, make_person

    ann = make_person(alice)
    thread = create_thread(alice, sender=ANN, subject="Last spring", date=timezone.now() - dt.timedelta(days=240))
    deal = DealFactory(owner=alice, person=ann, title="Anvils 2027")
    link_threads([thread.pk])

    browser_login(page, alice)
    page.goto(f"/mail/threads/{thread.pk}/")
    links = page.locator("#thread-links")
    suggestion = links.locator("li", has_text="Anvils 2027")
    expect(suggestion.locator(".link-reason")).to_contain_text("more than 30 days before: suggested, not linked")
    expect(links.locator("li", has_text="Anvils 2027").locator("button", has_text="Link")).to_be_visible()
    page.goto(deal.get_absolute_url())
    expect(page.locator("main")).not_to_contain_text("Last spring")

    page.goto(f"/mail/threads/{thread.pk}/")
    links.locator("li", has_text="Anvils 2027").locator("button", has_text="Link").click()
    expect(links.locator("li", has_text="Anvils 2027").locator(".unlink-button")).to_be_visible()  # linked now
    assert ThreadLink.objects.get(thread=thread, deal=deal).state == ThreadLink.State.LINKED
    page.goto(deal.get_absolute_url())
    expect(page.locator("main")).to_contain_text("Last spring")
