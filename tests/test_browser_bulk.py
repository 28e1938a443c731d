"""Bulk mail and whole-list actions in a real browser (issue 17, point 7)."""

import re

import pytest

from conftest import browser_login
from mailsync.models import EmailMessage

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_bulk_list_select_all_matching_cleanup_link_and_quiet_empty_lists(page, alice):
    from playwright.sync_api import expect

    from tests.test_inbox import settle, thread_in

    for n in range(53):
        thread_in(alice, "inbox", subject=f"Question {n:02d}")
    newsletter = thread_in(alice, "inbox", subject="Spring sale: 20% off")
    EmailMessage.objects.filter(thread=newsletter).update(is_bulk=True)
    settle(alice)

    browser_login(page, alice)
    page.goto("/mail/")
    rows = page.locator("#results table.mail-list tbody tr")
    expect(rows).to_have_count(50)
    expect(page.locator("#results")).not_to_contain_text("Spring sale")

    # All 53, not only the 50 on the page.
    page.check("[data-select-all]")
    expect(page.locator("[data-selected-count]")).to_have_text("50 selected")
    page.check("[data-select-matching]")
    expect(page.locator("[data-selected-count]")).to_have_text("All 53 conversations selected")
    page.click("button[data-bulk-button][value=read]")
    expect(page.locator(".messages")).to_contain_text("53 conversations marked read.")
    assert not EmailMessage.objects.filter(thread__owner=alice, is_read=False, is_bulk=False).exists()
    assert EmailMessage.objects.get(thread=newsletter).is_read is False  # Bulk was not part of the list

    # The newsletter waits in Bulk; "Move to Inbox" brings it back for good.
    page.click(".mailbox-tab[data-mailbox=bulk]")
    page.wait_for_url(re.compile(r"/mail/bulk/$"))
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Spring sale")
    expect(page.locator("[data-select-matching]")).to_have_count(0)  # one page: nothing more to select
    rows.first.locator("input[name=thread]").check()
    page.click("button[data-bulk-button][value=inbox]")
    expect(page.locator(".messages")).to_contain_text("1 conversation moved to the Inbox.")
    expect(page.locator("#results")).to_contain_text("Bulk is empty.")
    expect(page.locator(".bulk-actions")).to_have_count(0)  # an empty list: no toolbar
    expect(page.locator("form.inbox-filters")).to_have_count(0)

    # Sent has no "unread only" or "from an existing contact"; the Inbox links the clean-up (F3).
    page.click(".mailbox-tab[data-mailbox=sent]")
    page.wait_for_url(re.compile(r"/mail/sent/$"))
    expect(page.locator("input[name=unread]")).to_have_count(0)
    expect(page.locator("input[name=contact]")).to_have_count(0)
    page.click(".mailbox-tab[data-mailbox=inbox]")
    page.wait_for_url(re.compile(r"/mail/$"))
    expect(page.locator("#results")).to_contain_text("Spring sale")
    page.click("text=Remove emails not related to your contacts")
    page.wait_for_url(re.compile(r"/mail/cleanup/$"))
