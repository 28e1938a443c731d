"""Reading mail in a real browser: the reading pane beside the list on a wide screen, the thread's
toolbar, keyboard shortcuts with their help, and record timelines that expand in place and page."""

import re

import pytest

from conftest import browser_login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _inbox(alice, count: int):
    import datetime as dt

    from django.utils import timezone

    from tests.test_inbox import settle, thread_in

    start = timezone.now() - dt.timedelta(hours=1)
    threads = [
        thread_in(alice, "inbox", subject=f"Order {n}", date=start - dt.timedelta(hours=n), is_read=n != 1)
        for n in range(count)
    ]
    settle(alice)
    return threads


def _wide(page):
    page.set_viewport_size({"width": 1400, "height": 900})


def test_keyboard_reading_through_the_inbox(page, alice):
    from playwright.sync_api import expect

    from mailsync.models import MailboxEntry

    threads = _inbox(alice, 4)
    _wide(page)
    browser_login(page, alice)
    page.goto("/mail/")
    rows = page.locator("#results tr[data-thread]")
    expect(rows).to_have_count(4)

    # ? shows the shortcuts (reply / forward are not offered before sending exists).
    page.keyboard.press("?")
    help_dialog = page.locator("#shortcuts-help")
    expect(help_dialog).to_be_visible()
    expect(help_dialog).to_contain_text("Archive")
    for key in ("r", "a", "f"):
        expect(help_dialog.locator("kbd", has_text=re.compile(f"^{key}$"))).to_have_count(0)
    page.keyboard.press("Escape")
    expect(help_dialog).to_be_hidden()

    # j / k move a cursor; keys typed into the search box are text, not shortcuts.
    page.keyboard.press("j")
    page.keyboard.press("j")
    page.keyboard.press("k")
    page.keyboard.press("j")
    expect(page.locator("tr.cursor")).to_have_attribute("data-thread", str(threads[1].pk))
    page.keyboard.press("/")
    expect(page.locator("input[name=q]")).to_be_focused()
    page.keyboard.type("jk")
    expect(page.locator("input[name=q]")).to_have_value("jk")
    expect(rows).to_have_count(0)  # the live search ran
    page.locator("input[name=q]").fill("")
    expect(rows).to_have_count(4)
    expect(page.locator("tr.cursor")).to_have_count(0)  # new rows, no cursor yet
    page.locator("body").click(position={"x": 5, "y": 300})

    # o opens the conversation under the cursor: a page of its own, with the list beside it.
    page.keyboard.press("j")
    page.keyboard.press("o")
    page.wait_for_url(re.compile(rf"/mail/threads/{threads[0].pk}/\?in=inbox"))
    pane = page.locator(".reading-list")
    expect(pane).to_be_visible()
    expect(pane.locator("a[aria-current=page]")).to_contain_text("Order 0")
    expect(page.locator("h1")).to_have_text("Order 0")

    # j: the older conversation; k: back to the newer one.
    page.keyboard.press("j")
    page.wait_for_url(re.compile(rf"/mail/threads/{threads[1].pk}/"))
    expect(page.locator("h1")).to_have_text("Order 1")
    page.keyboard.press("k")
    page.wait_for_url(re.compile(rf"/mail/threads/{threads[0].pk}/"))

    # e archives and moves on to the next conversation.
    page.keyboard.press("e")
    page.wait_for_url(re.compile(rf"/mail/threads/{threads[1].pk}/"))
    expect(page.locator(".messages")).to_contain_text("archived")
    assert set(MailboxEntry.objects.filter(thread=threads[0]).values_list("mailbox", flat=True)) == {"archive"}
    expect(pane.locator("li")).to_have_count(3)

    # Shift+U marks it unread and goes back to the list, where it is unread.
    page.keyboard.press("Shift+U")
    page.wait_for_url(re.compile(r"/mail/$"))
    expect(page.locator(f'tr[data-thread="{threads[1].pk}"]')).to_have_class(re.compile("unread"))

    # # on the list asks before deleting the conversation under the cursor.
    page.keyboard.press("j")
    page.keyboard.type("#")
    expect(page.locator("body")).to_contain_text("cannot be restored")

    # u on a conversation: back to its list; / there: the list's search box.
    page.goto(f"/mail/threads/{threads[2].pk}/?in=inbox")
    page.keyboard.press("/")
    page.wait_for_url(re.compile(r"/mail/#search$"))
    expect(page.locator("input[name=q]")).to_be_focused()
    page.goto(f"/mail/threads/{threads[2].pk}/?in=inbox")
    page.keyboard.press("u")
    page.wait_for_url(re.compile(r"/mail/$"))


def test_the_thread_toolbar_and_layout_on_a_phone(page, alice):
    from playwright.sync_api import expect

    threads = _inbox(alice, 3)
    page.set_viewport_size({"width": 390, "height": 844})
    browser_login(page, alice)
    page.goto("/mail/")
    page.locator(f'tr[data-thread="{threads[1].pk}"] td.what a').first.click()
    page.wait_for_url(re.compile(rf"/mail/threads/{threads[1].pk}/\?in=inbox"))
    expect(page.locator(".reading-list")).to_be_hidden()  # no room beside the conversation
    toolbar = page.locator(".thread-actions")
    for label in ("← Inbox", "Archive", "Delete", "Mark unread", "↑ Newer", "Older ↓"):
        expect(toolbar).to_contain_text(label)
    # The links box comes below the messages, as wide as the screen.
    messages_box = page.locator("article.message").first.bounding_box()
    links_box = page.locator("#thread-links").bounding_box()
    assert links_box["y"] > messages_box["y"] + messages_box["height"] - 1
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    toolbar.locator("text=Older ↓").click()
    page.wait_for_url(re.compile(rf"/mail/threads/{threads[2].pk}/"))
    toolbar.locator("text=← Inbox").click()
    page.wait_for_url(re.compile(r"/mail/$"))


def test_unlink_is_a_button(page, alice):
    from mailsync.models import ThreadLink
    from tests.factories import DealFactory

    (thread,) = _inbox(alice, 1)
    ThreadLink.objects.create(
        thread=thread, deal=DealFactory(owner=alice), state=ThreadLink.State.LINKED, rule="manual"
    )
    browser_login(page, alice)
    page.goto(f"/mail/threads/{thread.pk}/")
    unlink = page.get_by_role("button", name=re.compile("^Unlink"))
    style = unlink.evaluate(
        "b => { const s = getComputedStyle(b); return [s.borderTopWidth, s.paddingLeft, s.cursor]; }"
    )
    assert style[0] != "0px" and style[1] != "0px" and style[2] == "pointer", style


def test_a_timeline_expands_in_place_and_pages(page, alice):
    import datetime as dt

    from django.utils import timezone

    from mailsync.linking.access import TIMELINE_LIMIT
    from mailsync.models import ThreadLink
    from tests.factories import DealFactory
    from tests.mail_factories import create_message
    from tests.test_inbox import settle, thread_in

    deal = DealFactory(owner=alice, title="Big order")
    start = timezone.now() - dt.timedelta(days=1)
    threads = []
    for n in range(TIMELINE_LIMIT + 2):
        thread = thread_in(alice, "inbox", subject=f"Big order mail {n}", date=start - dt.timedelta(hours=n))
        ThreadLink.objects.create(thread=thread, deal=deal, state=ThreadLink.State.LINKED, rule="manual")
        threads.append(thread)
    account = threads[0].messages.get().account
    create_message(threads[0], sender=account.email_address, to=["ann@acme.example"], body_text="Our offer: 12 anvils.")
    settle(alice)

    browser_login(page, alice)
    page.goto(deal.get_absolute_url())
    items = page.locator("#timeline li.timeline-item")
    expect_count(items, TIMELINE_LIMIT)
    first = items.first
    assert "Sent" in first.locator(".timeline-meta").inner_text() and "2 messages" in first.inner_text()
    first.locator("summary").click()
    preview = first.locator(".conversation-preview")
    preview.wait_for()
    assert preview.locator("li").count() == 2 and "Our offer: 12 anvils." in preview.inner_text()
    assert page.url.endswith(deal.get_absolute_url())  # in place: still the deal page

    page.locator("text=Older conversations").click()
    expect_count(items, TIMELINE_LIMIT + 2)
    assert page.locator("text=Older conversations").count() == 0
    assert "Big order mail 51" in items.last.inner_text()


def expect_count(locator, count):
    from playwright.sync_api import expect

    expect(locator).to_have_count(count)
