"""Reading mail (issue 17): the thread page as the reading pane of the list it was opened from (its
list, newer / older, Archive / Delete / Mark unread, Back), record timelines (who, received or sent,
how many, expand in place, older pages), and the small things around them (favicon, menu, labels)."""

import datetime as dt
from html import unescape
from urllib.parse import parse_qs, urlsplit

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from conftest import client_for
from mailsync.linking import access
from mailsync.models import EmailMessage, EmailThread, MailboxEntry, ThreadLink
from tests.factories import DealFactory, PersonEmailFactory, PersonFactory
from tests.mail_factories import create_message, fast_password_hashing
from tests.test_inbox import settle, thread_in

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}
ANN = "ann@acme.example"


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    fast_password_hashing(settings)


def inbox_of(owner, count: int, **fields) -> list[EmailThread]:
    """`count` conversations in the owner's Inbox, newest first (one hour apart)."""
    start = timezone.now() - dt.timedelta(days=1)
    threads = [
        thread_in(owner, "inbox", subject=f"Conversation {n}", date=start - dt.timedelta(hours=n), **fields)
        for n in range(count)
    ]
    settle(owner)
    return threads


def thread_url(thread, query: str = "") -> str:
    return reverse("mailsync:thread_detail", args=[thread.pk]) + (f"?{query}" if query else "")


def reading(client, thread, query: str = ""):
    response = client.get(thread_url(thread, query))
    assert response.status_code == 200
    return response, response.content.decode()


def opens(url: str, thread) -> bool:
    return urlsplit(url).path == thread_url(thread)


# --- the list links carry the list; the thread page shows it and steps through it ------------------------


def test_a_list_row_opens_the_thread_with_the_list_it_came_from(alice):
    threads = inbox_of(alice, 2, is_read=False)
    html = client_for(alice).get(reverse("mailsync:inbox") + "?unread=on&q=Conversation").content.decode()
    assert f'href="{thread_url(threads[0])}?in=inbox&amp;q=Conversation&amp;unread=on"' in html


def test_the_thread_page_has_back_newer_older_and_the_lists_actions(alice):
    newest, middle, oldest = inbox_of(alice, 3)
    response, html = reading(client_for(alice), middle, "in=inbox")
    context = response.context
    assert opens(context["newer_url"], newest) and opens(context["older_url"], oldest)
    assert context["list_url"] == reverse("mailsync:inbox")
    assert [item["action"] for item in context["thread_actions"]] == ["archive", "delete", "unread"]
    nexts = {item["action"]: item["next"] for item in context["thread_actions"]}
    # Archive and delete move on to the next (older) conversation; "unread" goes back to the list.
    assert opens(nexts["archive"], oldest) and opens(nexts["delete"], oldest)
    assert nexts["unread"] == reverse("mailsync:inbox")
    assert 'data-shortcut="u"' in html and 'data-shortcut="e"' in html and 'data-shortcut="#"' in html
    # The list beside the conversation (shown on wide screens), the open one marked.
    assert html.count('class="reading-list"') == 1
    assert f'{thread_url(middle)}?in=inbox" aria-current="page"' in html
    for thread in (newest, oldest):
        assert f'href="{thread_url(thread)}?in=inbox"' in html
    # The ends of the list have nothing beyond them.
    assert reading(client_for(alice), newest, "in=inbox")[0].context["newer_url"] == ""
    assert reading(client_for(alice), oldest, "in=inbox")[0].context["older_url"] == ""


def test_archive_from_the_thread_goes_to_the_next_conversation(alice):
    newest, middle, oldest = inbox_of(alice, 3)
    client = client_for(alice)
    context = reading(client, middle, "in=inbox")[0].context
    archive = next(item for item in context["thread_actions"] if item["action"] == "archive")
    response = client.post(
        reverse("mailsync:inbox_action"),
        {"mailbox": "inbox", "action": "archive", "thread": middle.pk, "next": archive["next"]},
    )
    assert response.status_code == 302 and opens(response["Location"], oldest)
    assert set(MailboxEntry.objects.filter(thread=middle).values_list("mailbox", flat=True)) == {"archive"}
    # The next conversation's page knows its neighbours without the archived one.
    assert opens(reading(client, oldest, "in=inbox")[0].context["newer_url"], newest)


def test_mark_unread_from_the_thread_goes_back_to_the_list_and_stays_unread(alice):
    (thread,) = inbox_of(alice, 1, is_read=False)
    client = client_for(alice)
    context = reading(client, thread, "in=inbox&unread=on")[0].context  # opening it reads it
    assert not EmailMessage.objects.filter(thread=thread, is_read=False).exists()
    unread = next(item for item in context["thread_actions"] if item["action"] == "unread")
    assert unread["next"] == reverse("mailsync:inbox") + "?unread=on"
    response = client.post(
        reverse("mailsync:inbox_action"),
        {"mailbox": "inbox", "action": "unread", "thread": thread.pk, "next": unread["next"]},
    )
    assert response.status_code == 302 and response["Location"] == unread["next"]
    assert EmailMessage.objects.filter(thread=thread, is_read=False).exists()


def test_newer_and_older_keep_the_lists_filters(alice):
    first, second, third, fourth = inbox_of(alice, 4, is_read=False)
    for thread in (second,):
        EmailMessage.objects.filter(thread=thread).update(is_read=True)
    settle(alice)
    # Unread only: the read one is skipped; the open one is read by now and still finds its neighbours.
    context = reading(client_for(alice), third, "in=inbox&unread=on")[0].context
    assert opens(context["newer_url"], first) and opens(context["older_url"], fourth)
    assert parse_qs(urlsplit(context["older_url"]).query) == {"in": ["inbox"], "unread": ["on"]}


def test_newer_and_older_cross_pages(alice, monkeypatch):
    monkeypatch.setattr("mailsync.workspace.inbox.PAGE_SIZE", 2)
    threads = inbox_of(alice, 5)
    client = client_for(alice)
    context = reading(client, threads[1], "in=inbox")[0].context  # the last row of page 1
    assert opens(context["older_url"], threads[2]) and "page=2" in context["older_url"]
    context = reading(client, threads[2], "in=inbox&page=2")[0].context  # the first row of page 2
    assert opens(context["newer_url"], threads[1]) and "page" not in context["newer_url"]
    assert context["list_url"] == reverse("mailsync:inbox") + "?page=2"
    assert [row.entry.thread_id for row in context["reading_page"].rows] == [threads[2].pk, threads[3].pk]


def test_a_thread_opened_from_elsewhere_reads_in_the_list_that_holds_it(alice):
    thread = thread_in(alice, "archive", subject="Filed away")
    settle(alice)
    for query in ("", "in=inbox&q=nothing", "in=nonsense"):
        context = reading(client_for(alice), thread, query)[0].context
        assert context["reading_mailbox"] == "archive" and context["list_url"] == reverse("mailsync:archive")
        assert [item["action"] for item in context["thread_actions"]] == ["inbox", "delete", "unread"]


def test_a_colleague_gets_no_list_and_no_actions_only_back(alice, bob):
    deal = DealFactory(owner=alice)
    thread = thread_in(alice, "inbox", subject="Shared quote", visibility=EmailThread.Visibility.SHARED)
    ThreadLink.objects.create(thread=thread, deal=deal, state=ThreadLink.State.LINKED, rule="manual")
    settle(alice)
    response, html = reading(client_for(bob), thread, f"in=inbox&back={deal.get_absolute_url()}")
    assert "reading_page" not in response.context and "thread_actions" not in response.context
    assert 'class="reading-list"' not in html and reverse("mailsync:inbox_action") not in html
    assert f'<a class="button back-link" href="{deal.get_absolute_url()}"' in html
    # Back never leads off the site.
    for hostile in ("//evil.example/x", "https://evil.example/", "javascript:alert(1)"):
        response, html = reading(client_for(bob), thread, f"back={hostile}")
        assert response.context["back_url"] == "" and "back-link" not in html


def test_the_thread_page_costs_the_same_whatever_the_list_size(alice):
    threads = inbox_of(alice, 4)
    client = client_for(alice)
    reading(client, threads[1], "in=inbox")  # warm up (the first read marks it read)
    with CaptureQueriesContext(connection) as small:
        reading(client, threads[1], "in=inbox")
    inbox_of(alice, 40)
    with CaptureQueriesContext(connection) as large:
        reading(client, threads[1], "in=inbox")
    assert len(large) == len(small), [q["sql"][:120] for q in large.captured_queries]


# --- record timelines --------------------------------------------------------------------------------


@pytest.fixture
def ann_deal(alice):
    ann = PersonFactory(owner=alice, first_name="Ann", last_name="Smith")
    PersonEmailFactory(person=ann, email=ANN)
    return DealFactory(owner=alice, person=ann, title="Anvils")


def linked_threads(owner, deal, count: int, **fields) -> list[EmailThread]:
    start = timezone.now() - dt.timedelta(days=2)
    threads = []
    for n in range(count):
        thread = thread_in(owner, "inbox", subject=f"Deal mail {n}", date=start - dt.timedelta(hours=n), **fields)
        ThreadLink.objects.create(thread=thread, deal=deal, state=ThreadLink.State.LINKED, rule="manual")
        threads.append(thread)
    return threads


def test_timeline_items_say_who_which_way_and_how_many(alice, bob, ann_deal):
    (thread,) = linked_threads(alice, ann_deal, 1, from_name="Ann Smith")
    account = thread.messages.get().account
    create_message(thread, sender=account.email_address, to=[ANN], account=account)  # Alice's reply
    create_message(thread, sender=ANN, to=[alice.email], account=account, from_name="Ann Smith")
    thread.visibility = EmailThread.Visibility.SHARED
    thread.save(update_fields=["visibility"])
    html = client_for(alice).get(ann_deal.get_absolute_url()).content.decode()
    assert "Received" in html and "from <bdi>Ann Smith</bdi>" in html
    assert "3 messages (2 received, 1 sent)" in html
    assert f"{thread_url(thread)}?back={ann_deal.get_absolute_url()}" in html
    assert "Older conversations" not in html
    # A colleague sees whose mailbox it is; the latest message sent by Alice says "Sent by Alice".
    create_message(thread, sender=account.email_address, to=[ANN], account=account)
    html = client_for(bob).get(ann_deal.get_absolute_url()).content.decode()
    assert "Sent</span>" in html and f"by {alice}" in html and f"mailbox of {alice}" in html
    assert "4 messages (2 received, 2 sent)" in html


def test_timelines_page_beyond_fifty_with_older(alice, ann_deal):
    threads = linked_threads(alice, ann_deal, access.TIMELINE_LIMIT + 3)
    client = client_for(alice)
    html = client.get(ann_deal.get_absolute_url()).content.decode()
    older = f"{reverse('mailsync:record_timeline', args=['deal', ann_deal.pk])}?offset={access.TIMELINE_LIMIT}"
    assert html.count('class="timeline-item"') == access.TIMELINE_LIMIT
    assert f'hx-get="{older}"' in html and f'href="{older}"' in html
    # htmx: the next items only, which replace the "Older" button.
    fragment = client.get(older, headers=HTMX).content.decode()
    assert "<html" not in fragment and fragment.count('class="timeline-item"') == 3
    assert all(thread.subject in fragment for thread in threads[-3:]) and "Older conversations" not in fragment
    # Without htmx: a page of its own.
    page = client.get(older).content.decode()
    assert "<html" in page and "Email conversations of" in page and threads[-1].subject in page
    # Nonsense offsets and kinds.
    # (Only the offset is replaced: the record's id may contain the same digits.)
    nonsense = older.replace(f"offset={access.TIMELINE_LIMIT}", "offset=-1")
    assert nonsense != older and client.get(nonsense, headers=HTMX).status_code == 200
    assert client.get(reverse("mailsync:record_timeline", args=["user", alice.pk])).status_code == 404


def test_timeline_of_a_record_the_viewer_may_not_see_is_404(alice, charlie, ann_deal):
    from crm.models import Visibility

    ann_deal.visibility = Visibility.OWNER
    ann_deal.save(update_fields=["visibility"])
    url = reverse("mailsync:record_timeline", args=["deal", ann_deal.pk])
    assert client_for(charlie).get(url, headers=HTMX).status_code == 404
    assert client_for(alice).get(url, headers=HTMX).status_code == 200


def test_a_conversation_expands_in_place_as_text(alice, ann_deal):
    (thread,) = linked_threads(alice, ann_deal, 1, body_text="Hello <script>alert(1)</script> Alice", is_read=False)
    settle(alice)
    client = client_for(alice)
    url = reverse("mailsync:thread_preview", args=[thread.pk])
    html = client.get(ann_deal.get_absolute_url()).content.decode()
    assert f'hx-get="{url}?back={ann_deal.get_absolute_url()}"' in html and 'hx-trigger="toggle once"' in html
    response = client.get(url, headers=HTMX)
    fragment = response.content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in fragment and "<script>" not in fragment
    assert "no-store" in response["Cache-Control"]
    assert EmailMessage.objects.filter(thread=thread, is_read=False).exists()  # a glance is not a read
    # Without htmx it is the thread page.
    response = client.get(url)
    assert response.status_code == 302 and response["Location"] == thread_url(thread)


# --- around the pages --------------------------------------------------------------------------------


def test_favicon(client, alice):
    response = client.get("/favicon.ico")
    assert response.status_code == 301 and response["Location"].endswith("favicon.svg")
    html = client_for(alice).get(reverse("home")).content.decode()
    assert 'rel="icon"' in html and "favicon.svg" in html


def test_the_menu_marks_the_section_of_the_page(alice):
    (thread,) = inbox_of(alice, 1)
    client = client_for(alice)
    for url, section in (
        (thread_url(thread), "Inbox"),
        (reverse("mailsync:sent"), "Inbox"),
        (reverse("mailsync:settings"), "Email sync"),
        (reverse("deals:deal_create"), "Deals"),
        (reverse("home"), "Dashboard"),
    ):
        html = client.get(url).content.decode()
        nav = html.split('<nav class="mainnav"')[1].split("</nav>")[0]
        assert nav.count('aria-current="page"') == 1 and f'aria-current="page">{section}</a>' in nav, url


def test_labels_read_the_same_on_every_form(alice):
    client = client_for(alice)
    assert '<label for="id_title">Title</label>' in client.get(reverse("deals:deal_create")).content.decode()
    add = client.get(reverse("mailsync:account_add")).content.decode()
    assert '<label for="id_email_address">Email address</label>' in add
    assert "IMAP server</label>" in add


def test_admin_labels():
    from mailsync.models import AccountAddress, BlockedAddress, EmailAccount, MailboxEntry, MailSettings

    assert AccountAddress._meta.verbose_name_plural == "account addresses"
    assert BlockedAddress._meta.verbose_name_plural == "blocked addresses"
    assert MailboxEntry._meta.verbose_name_plural == "mailbox entries"
    assert MailSettings._meta.verbose_name_plural == "mail settings"
    labels = {field.name: field.verbose_name for field in EmailAccount._meta.fields}
    assert labels["imap_host"] == "IMAP host" and labels["smtp_port"] == "SMTP port"
    assert labels["trusted_ca_pem"] == "trusted CA certificate (PEM)"


def test_the_dashboard_does_not_contradict_its_counts(alice, admin_user):
    DealFactory(owner=alice, title="Alice's deal")
    html = unescape(client_for(admin_user).get(reverse("home")).content.decode())
    assert "No open deals yet" not in html
    assert "You own none of the 1 open deal you can see" in html
    assert "Alice's deal" in client_for(alice).get(reverse("home")).content.decode().replace("&#x27;", "'")
