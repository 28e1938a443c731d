"""Bulk mail (issue 17, point 7): newsletters and list mail in a Bulk list of their own, the backfill of
stored mail, "select all N matching" applied to the whole filtered list, per-list filters."""

import pytest
from django.core.files.base import ContentFile
from django.core.management import call_command
from django.urls import reverse

from mailsync.mailboxes import placement
from mailsync.models import EmailMessage, Mailbox
from mailsync.sync import parsing
from mailsync.workspace import actions
from tests.mail_factories import fast_password_hashing
from tests.test_inbox import listed, settle, thread_in

pytestmark = pytest.mark.django_db

PLAIN = b"From: Ann <ann@customer.example>\r\nTo: alice@mail.example\r\nSubject: Order\r\nMessage-ID: <1@x>\r\n\r\nHi"


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    fast_password_hashing(settings)


@pytest.mark.parametrize(
    ("header", "bulk"),
    [
        (b"List-Id: Weekly news <news.shop.example>", True),
        (b"List-Unsubscribe: <https://shop.example/u?x=1>", True),
        (b"Precedence: bulk", True),
        (b"Precedence: List", True),
        (b"Precedence: junk", True),
        (b"Precedence: first-class", False),
        (b"X-Mailer: Outlook", False),
    ],
)
def test_bulk_headers(header, bulk):
    raw = PLAIN.replace(b"Subject: Order\r\n", b"Subject: Order\r\n" + header + b"\r\n")
    assert parsing.parse_message(raw).is_bulk is bulk
    assert parsing.raw_is_bulk(raw) is bulk
    assert parsing.parse_message(PLAIN).is_bulk is False


@pytest.mark.parametrize(
    ("restored", "archived", "direction", "roles", "expected"),
    [
        (False, False, "received", {"inbox"}, "bulk"),
        (False, False, "received", set(), "bulk"),  # imported from files
        (True, False, "received", {"inbox"}, "inbox"),  # the user moved it back to the Inbox: stays there
        (False, True, "received", {"inbox"}, "archive"),
        (False, False, "received", {"archive"}, "archive"),
        (False, False, "received", {"trash"}, "trash"),
        (False, False, "sent", {"sent"}, "sent"),
        (False, False, "sent", set(), "sent"),  # one's own mail to a list is never bulk
    ],
)
def test_bulk_placement(restored, archived, direction, roles, expected):
    placed = placement.place(
        restored_to_inbox=restored, is_archived=archived, direction=direction, roles=roles, is_bulk=True
    )
    assert placed == expected


def test_stored_newsletters_are_moved_to_bulk_by_the_backfill(alice, bob):
    newsletter = thread_in(alice, "inbox", subject="Spring sale")
    order = thread_in(alice, "inbox", subject="Order")
    bobs = thread_in(bob, "inbox", subject="Bob's newsletter")
    for thread, raw in (
        (newsletter, PLAIN.replace(b"\r\n\r\n", b"\r\nList-Id: <n.shop.example>\r\n\r\n")),
        (order, PLAIN),
        (bobs, PLAIN.replace(b"\r\n\r\n", b"\r\nPrecedence: bulk\r\n\r\n")),
    ):
        message = thread.messages.get()
        message.raw.save(f"{message.pk}.eml", ContentFile(raw), save=True)
    settle(alice, bob)
    assert set(listed(alice)) == {newsletter.pk, order.pk}  # stored before Bulk existed: in the Inbox

    call_command("rebuild_mailboxes", "--detect-bulk", "--user", alice.email, stdout=open("/dev/null", "w"))  # noqa: SIM115
    assert listed(alice) == [order.pk]
    assert listed(alice, Mailbox.BULK) == [newsletter.pk]
    assert listed(bob) == [bobs.pk]  # another user's mail: not touched by --user
    call_command("rebuild_mailboxes", "--detect-bulk", stdout=open("/dev/null", "w"))  # noqa: SIM115
    assert listed(bob, Mailbox.BULK) == [bobs.pk]
    assert EmailMessage.objects.filter(is_bulk=True).count() == 2


def test_bulk_list_and_move_to_inbox(client, alice, bob):
    newsletter = thread_in(alice, "inbox", subject="Spring sale")
    EmailMessage.objects.filter(thread=newsletter).update(is_bulk=True)
    thread_in(alice, "inbox", subject="Order")
    settle(alice)
    client.force_login(alice)
    html = client.get(reverse("mailsync:bulk")).content.decode()
    assert "Spring sale" in html and "Order" not in html
    inbox_html = client.get(reverse("mailsync:inbox")).content.decode()
    assert "Spring sale" not in inbox_html and 'data-mailbox="bulk"' in inbox_html
    assert reverse("mailsync:cleanup") in inbox_html  # the clean-up (F3) is one click from the Inbox
    client.force_login(bob)
    assert "Spring sale" not in client.get(reverse("mailsync:bulk")).content.decode()
    result = actions.apply_bulk_action(user=alice, mailbox=Mailbox.BULK, action="inbox", thread_ids=[newsletter.pk])
    assert result.threads == 1 and newsletter.pk in listed(alice) and listed(alice, Mailbox.BULK) == []
    placement.rebuild_all(user=alice)  # a repair keeps the user's choice
    assert newsletter.pk in listed(alice)


def test_select_all_matching_applies_to_the_whole_filtered_list_in_batches(client, alice, bob, monkeypatch):
    monkeypatch.setattr(actions, "BATCH_THREADS", 7)
    unread = [thread_in(alice, "inbox", subject=f"Unread {n}").pk for n in range(23)]
    read = [thread_in(alice, "inbox", subject=f"Read {n}", is_read=True).pk for n in range(3)]
    bobs = thread_in(bob, "inbox", subject="Bob's").pk
    settle(alice, bob)
    client.force_login(alice)
    page_one = unread[:5]  # what the page showed: scope=all means every match, not these
    response = client.post(
        reverse("mailsync:inbox_action"),
        {"mailbox": "inbox", "action": "archive", "scope": "all", "unread": "on", "thread": page_one, "next": "/mail/"},
    )
    assert response.status_code == 302
    assert sorted(listed(alice)) == sorted(read)  # every unread one archived, the read ones stay
    assert sorted(listed(alice, Mailbox.ARCHIVE)) == sorted(unread)
    assert listed(bob) == [bobs]
    # Delete asks first, and the confirmation carries the filters, not 10,000 ids.
    html = client.post(
        reverse("mailsync:inbox_action"), {"mailbox": "archive", "action": "delete", "scope": "all", "unread": "on"}
    ).content.decode()
    assert (
        "Delete 23 conversations?" in html and 'name="scope" value="all"' in html and 'name="unread" value="on"' in html
    )
    assert 'name="thread"' not in html


def test_sent_offers_no_unread_or_contact_filter_and_empty_lists_no_toolbar(client, alice):
    thread_in(alice, "inbox", subject="Order")
    settle(alice)
    client.force_login(alice)
    sent = client.get(reverse("mailsync:sent")).content.decode()
    assert 'name="unread"' not in sent and 'name="contact"' not in sent
    inbox_html = client.get(reverse("mailsync:inbox")).content.decode()
    assert 'name="unread"' in inbox_html and 'name="contact"' in inbox_html and "bulk-actions" in inbox_html
    trash = client.get(reverse("mailsync:trash")).content.decode()
    assert "Trash is empty." in trash
    assert "bulk-actions" not in trash and "inbox-filters" not in trash and "data-bulk-button" not in trash
