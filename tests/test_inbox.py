"""The mail workspace lists: Inbox, Sent, Archive, Trash of the user's own mail, filters (F2), search,
placement and list rows (mailsync.mailboxes), visibility (P1-P3) and the cost of a page."""

import datetime as dt
import itertools
import random

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from crm.models import Visibility
from mailsync.linking import access
from mailsync.mailboxes import placement, search
from mailsync.mailboxes.words import search_words
from mailsync.models import (
    EmailMessage,
    EmailThread,
    Mailbox,
    MailboxEntry,
    MailFolder,
    MessageLocation,
)
from mailsync.sync import engine
from mailsync.sync.ingest import ingest_raw
from mailsync.sync.parsing import parse_message
from mailsync.workspace import conversation_services, inbox
from mailsync.workspace.inbox import InboxFilters
from tests.factories import DealFactory, PersonEmailFactory, PersonFactory
from tests.mail_factories import EmailAccountFactory, create_message, create_thread, fast_password_hashing
from tests.mailservers import make_message

pytestmark = pytest.mark.django_db

PRIVATE = EmailThread.Visibility.PRIVATE
SHARED = EmailThread.Visibility.SHARED
ANN = "ann@acme.example"
LIST_URLS = ["mailsync:inbox", "mailsync:sent", "mailsync:archive", "mailsync:trash"]
_uids = itertools.count(1)


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    fast_password_hashing(settings)


# --- helpers (also used by test_actions and test_browser_inbox) -----------------------------------------


def settle(*users) -> None:
    """What ingestion does after writing mail: place it, build the list rows, index them for search."""
    for user in users:
        placement.rebuild_all(user=user)


def folder_of(account, role: str, name: str | None = None) -> MailFolder:
    name = name or {"inbox": "INBOX", "": "Projects"}.get(role, role.capitalize())
    folder, _ = MailFolder.objects.get_or_create(account=account, name=name, defaults={"role": role, "uidvalidity": 7})
    return folder


def put_in(message: EmailMessage, folder: MailFolder) -> MessageLocation:
    return MessageLocation.objects.create(message=message, folder=folder, uidvalidity=7, uid=next(_uids))


def thread_in(owner, role: str = "inbox", *, sender: str = ANN, subject: str | None = None, **fields) -> EmailThread:
    """A thread of `owner` whose one message is in the folder with `role` of the owner's account."""
    thread = create_thread(owner, sender=sender, subject=subject, **fields)
    message = thread.messages.get()
    put_in(message, folder_of(message.account, role))
    return thread


def listed(user, mailbox_name: str = Mailbox.INBOX, filters: InboxFilters | None = None) -> list[int]:
    page = inbox.inbox_page(user, mailbox_name, filters or InboxFilters(), per_page=500)
    return [row.entry.thread_id for row in page.rows]


# --- placement (mailsync.mailboxes.placement.place) ---------------------------------------------------


@pytest.mark.parametrize(
    ("restored", "archived", "direction", "roles", "expected"),
    [
        (False, False, "received", {"inbox"}, "inbox"),
        (False, False, "received", {"inbox", "all"}, "inbox"),  # Gmail: Inbox + All Mail
        (False, False, "received", {"all"}, "archive"),  # Gmail: archived
        (False, False, "received", {"archive"}, "archive"),
        (False, False, "received", {""}, "archive"),  # filed into a folder of one's own
        (False, False, "sent", {"sent", "all"}, "sent"),
        (False, False, "sent", {""}, "sent"),
        (False, False, "received", {"trash"}, "trash"),
        (False, False, "received", {"junk"}, "other"),
        (False, False, "received", set(), "inbox"),  # imported from files
        (False, False, "sent", set(), "sent"),
        (False, True, "received", {"inbox"}, "archive"),  # archived in the CRM: wins over the server
        (True, False, "received", {"trash"}, "inbox"),  # moved back in the CRM
    ],
)
def test_placement_rules(restored, archived, direction, roles, expected):
    placed = placement.place(restored_to_inbox=restored, is_archived=archived, direction=direction, roles=roles)
    assert placed == expected


def test_list_rows_follow_messages_and_their_counts(alice):
    thread = thread_in(alice, "inbox", subject="Quote")
    first = thread.messages.get()
    account = first.account
    reply = create_message(thread, sender=alice.email, account=account, is_read=True)
    put_in(reply, folder_of(account, "sent"))
    unread = create_message(thread, sender=ANN, account=account)
    put_in(unread, folder_of(account, "inbox"))
    settle(alice)

    entries = {entry.mailbox: entry for entry in MailboxEntry.objects.filter(thread=thread)}
    assert set(entries) == {"inbox", "sent"}
    assert entries["inbox"].message_count == 2 and entries["inbox"].unread_count == 2
    assert entries["inbox"].latest_message_id == unread.pk
    assert entries["inbox"].thread_message_count == 3
    assert entries["sent"].latest_message_id == reply.pk and entries["sent"].unread_count == 0

    # The server reports the inbox copies read (the sync's flag pass calls refresh_mailboxes).
    EmailMessage.objects.filter(pk__in=[first.pk, unread.pk]).update(is_read=True)
    placement.refresh_mailboxes([first.pk, unread.pk])
    assert MailboxEntry.objects.get(thread=thread, mailbox="inbox").unread_count == 0

    # Deleted mail never counts (L6); a thread without visible mail in a mailbox leaves it.
    EmailMessage.objects.filter(pk__in=[first.pk, unread.pk]).update(deleted_at=timezone.now())
    placement.refresh_mailboxes([first.pk, unread.pk])
    assert set(MailboxEntry.objects.filter(thread=thread).values_list("mailbox", flat=True)) == {"sent"}


def test_rebuild_repairs_stale_rows_and_refresh_user_mailboxes_finds_them(alice):
    threads = [thread_in(alice, "inbox") for _ in range(3)]
    settle(alice)
    MailboxEntry.objects.filter(thread=threads[0]).delete()  # lost
    MailboxEntry.objects.filter(thread=threads[1]).update(message_count=9)  # wrong
    assert placement.refresh_user_mailboxes(alice) == 2
    assert sorted(listed(alice)) == sorted(thread.pk for thread in threads)
    assert MailboxEntry.objects.get(thread=threads[1]).message_count == 1
    assert placement.refresh_user_mailboxes(alice) == 0


# --- the lists agree with mailsync.linking.access -----------------------------------------------------


def test_lists_hold_exactly_the_threads_access_lets_the_owner_see(alice, bob):
    deal = DealFactory(owner=alice, visibility=Visibility.COMPANY)
    mixed = [
        thread_in(alice, "inbox"),
        thread_in(alice, "archive"),
        thread_in(alice, "trash"),
        thread_in(alice, "sent", sender=alice.email),
        thread_in(alice, "junk"),  # listed nowhere but still the owner's ("other")
        thread_in(alice, "inbox", visibility=SHARED),
        create_thread(alice, sender=ANN),  # imported: no folder
        thread_in(bob, "inbox", visibility=SHARED),
    ]
    conversation_services.link_thread(user=bob, thread=mixed[-1], record=deal)  # alice can see it, not own it
    deleted = thread_in(alice, "inbox")
    deleted.messages.update(deleted_at=timezone.now(), deletion_source="user")
    blocked = thread_in(alice, "inbox", sender="spam@junk.example")
    conversation_services.add_blocked_address(user=alice, pattern="@junk.example")
    half = thread_in(alice, "inbox")
    create_message(half, sender=ANN, deleted_at=timezone.now())
    settle(alice, bob)

    own_visible = set(access.visible_threads(alice).filter(owner=alice).values_list("pk", flat=True))
    in_lists = set(inbox.own_entries(alice).values_list("thread_id", flat=True))
    assert in_lists == own_visible
    assert deleted.pk not in in_lists and blocked.pk not in in_lists and mixed[-1].pk not in in_lists
    for mailbox_name in inbox.MAILBOXES:
        for thread_id in listed(alice, mailbox_name):
            assert access.get_thread_for_user(alice, thread_id).owner_id == alice.pk


def test_blocking_and_unblocking_updates_the_lists_and_counts(alice):
    spam = thread_in(alice, "inbox", sender="offers@spam.example")
    keep = thread_in(alice, "inbox")
    settle(alice)
    blocked = conversation_services.add_blocked_address(user=alice, pattern="@spam.example")
    assert listed(alice) == [keep.pk]
    assert inbox.mailbox_counts(alice)["inbox"].total == 1
    conversation_services.remove_blocked_address(user=alice, blocked=blocked)
    assert set(listed(alice)) == {spam.pk, keep.pk}


def test_removing_non_contact_mail_updates_the_lists(alice):
    person = PersonFactory(owner=alice)
    PersonEmailFactory(person=person, email=ANN)
    contact = thread_in(alice, "inbox", sender=ANN)
    stranger = thread_in(alice, "inbox", sender="someone@else.example")
    settle(alice)
    assert set(listed(alice)) == {contact.pk, stranger.pk}
    conversation_services.remove_non_contact_mail(alice)
    assert listed(alice) == [contact.pk]


# --- views --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url_name", LIST_URLS)
def test_each_list_answers_and_refuses_other_methods(client, alice, url_name):
    client.force_login(alice)
    response = client.get(reverse(url_name))
    assert response.status_code == 200
    assert b"mailbox-tabs" in response.content
    assert client.post(reverse(url_name)).status_code == 405


def test_empty_inbox_points_to_email_sync(client, alice):
    client.force_login(alice)
    page = client.get(reverse("mailsync:inbox")).content.decode()
    assert "No mailbox is connected yet" in page and reverse("mailsync:settings") in page
    EmailAccountFactory(user=alice)
    assert "Inbox is empty." in client.get(reverse("mailsync:inbox")).content.decode()


def test_lists_need_a_login(client):
    response = client.get(reverse("mailsync:inbox"))
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]


def test_inbox_shows_own_threads_newest_first_with_what_each_row_needs(client, alice):
    deal = DealFactory(owner=alice, title="Big shipment deal")
    old = thread_in(
        alice, "inbox", subject="Older question", date=timezone.now() - dt.timedelta(days=2), has_attachments=True
    )
    new = thread_in(alice, "inbox", subject="Newest quote", is_read=True)
    conversation_services.link_thread(user=alice, thread=new, record=deal)
    thread_in(alice, "archive", subject="Filed away")
    settle(alice)
    client.force_login(alice)
    page = client.get(reverse("mailsync:inbox")).content.decode()
    assert page.index("Newest quote") < page.index("Older question")
    assert "Filed away" not in page
    assert "Big shipment deal" in page  # link badge
    assert reverse("mailsync:thread_detail", args=[new.pk]) in page
    # The attachment mark is drawn, not an emoji (headless or minimal systems have no emoji font).
    assert page.count('aria-label="Has attachments"') == 1 and "<svg" in page
    assert f'<tr class="unread" data-thread="{old.pk}">' in page
    assert f'<tr class="" data-thread="{new.pk}">' in page
    archive = client.get(reverse("mailsync:archive")).content.decode()
    assert "Filed away" in archive and "Newest quote" not in archive


def test_sent_list_shows_recipients(client, alice):
    thread_in(alice, "sent", sender=alice.email, to=["bruno@vetreria.example"], subject="Our offer")
    settle(alice)
    client.force_login(alice)
    page = client.get(reverse("mailsync:sent")).content.decode()
    assert "Our offer" in page and "To: bruno" in page


@pytest.mark.parametrize("other", ["bob", "charlie", "admin_user"])
def test_nobody_sees_alices_mail_in_their_own_lists(request, client, alice, other):
    """Bob (teammate), Charlie (outsider) and an admin: alice's private AND shared mail never appears in
    their inbox (shared mail shows on the records' timelines), nor in their counts or searches."""
    viewer = request.getfixturevalue(other)
    deal = DealFactory(owner=alice, visibility=Visibility.COMPANY)
    private = thread_in(alice, "inbox", subject="Alice private pricing")
    shared = thread_in(alice, "inbox", subject="Alice shared pricing", visibility=SHARED)
    conversation_services.link_thread(user=alice, thread=shared, record=deal)
    own = thread_in(viewer, "inbox", subject="Viewer own mail")
    settle(alice, viewer)
    client.force_login(viewer)
    for url_name in LIST_URLS:
        for query in ("", "?q=pricing", "?unread=1"):
            page = client.get(reverse(url_name) + query).content.decode()
            assert "Alice" not in page, (url_name, query)
    assert listed(viewer) == [own.pk]
    assert inbox.mailbox_counts(viewer)["inbox"].total == 1
    assert private.pk not in listed(viewer, filters=InboxFilters(query="pricing"))


def test_htmx_request_gets_the_results_fragment_and_boosted_gets_the_page(client, alice):
    thread_in(alice, "inbox", subject="Fragment me")
    settle(alice)
    client.force_login(alice)
    fragment = client.get(reverse("mailsync:inbox"), headers={"HX-Request": "true"})
    assert fragment.status_code == 200
    body = fragment.content.decode()
    assert "Fragment me" in body and "<html" not in body and "mailbox-tabs" not in body
    assert "HX-Request" in fragment["Vary"]
    boosted = client.get(reverse("mailsync:inbox"), headers={"HX-Request": "true", "HX-Boosted": "true"})
    assert "<html" in boosted.content.decode()


# --- filters (F2) -------------------------------------------------------------------------------------------


def test_unread_filter_is_shown_with_how_much_it_hides_and_how_to_remove_it(client, alice):
    unread = thread_in(alice, "inbox", subject="Still unread")
    thread_in(alice, "inbox", subject="Already read", is_read=True)
    thread_in(alice, "inbox", subject="Read too", is_read=True)
    settle(alice)
    client.force_login(alice)
    page = client.get(reverse("mailsync:inbox") + "?unread=1&q=").content.decode()
    assert "Still unread" in page and "Already read" not in page
    assert "Only unread" in page
    assert "Showing 1 of 3 conversations in Inbox" in page and "2 hidden by filters" in page
    assert f'href="{reverse("mailsync:inbox")}"' in page  # the chip's remove link and "Clear all filters"
    assert listed(alice, filters=InboxFilters(unread=True)) == [unread.pk]
    # The tabs show the totals (and unread) whatever the filter.
    assert "1 unread" in page
    unfiltered = client.get(reverse("mailsync:inbox")).content.decode()
    assert "hidden by filters" not in unfiltered and "Only unread" not in unfiltered


def test_account_folder_linked_and_contact_filters(client, alice):
    other_account = EmailAccountFactory(user=alice, email_address="sales@company.test")
    main = thread_in(alice, "archive", subject="Main account mail")
    second = create_thread(alice, sender="buyer@shop.example", subject="Second account mail", account=other_account)
    put_in(second.messages.get(), folder_of(other_account, "archive"))
    filed = create_thread(alice, sender="x@y.example", subject="Filed project mail", account=other_account)
    project_folder = folder_of(other_account, "", name="Projects/ACME")
    put_in(filed.messages.get(), project_folder)
    person = PersonFactory(owner=alice)
    PersonEmailFactory(person=person, email="buyer@shop.example")
    deal = DealFactory(owner=alice)
    conversation_services.link_thread(user=alice, thread=main, record=deal)
    settle(alice)

    assert set(listed(alice, "archive")) == {main.pk, second.pk, filed.pk}
    assert set(listed(alice, "archive", InboxFilters(account=other_account))) == {second.pk, filed.pk}
    assert listed(alice, "archive", InboxFilters(folder=project_folder)) == [filed.pk]
    assert listed(alice, "archive", InboxFilters(linked="linked")) == [main.pk]
    assert set(listed(alice, "archive", InboxFilters(linked="unlinked"))) == {second.pk, filed.pk}
    assert listed(alice, "archive", InboxFilters(from_contact=True)) == [second.pk]

    client.force_login(alice)
    url = reverse("mailsync:archive")
    for query, chip in [
        (f"?account={other_account.pk}", "Account: sales@company.test"),
        (f"?folder={project_folder.pk}", "Folder: Projects/ACME"),
        ("?linked=linked", "Linked to a record"),
        ("?linked=unlinked", "Not linked to a record"),
        ("?contact=1", "From an existing contact"),
    ]:
        page = client.get(url + query).content.decode()
        assert chip in page, query
        assert "hidden by filters" in page, query
    both = client.get(url + f"?account={other_account.pk}&contact=1").content.decode()
    assert f'href="{url}?contact=1"' in both  # removing one chip keeps the other filter
    assert f'href="{url}?account={other_account.pk}"' in both


def test_invalid_filter_values_are_ignored(client, alice, bob):
    thread_in(alice, "inbox", subject="Still here")
    bobs_account = EmailAccountFactory(user=bob)
    bobs_folder = folder_of(bobs_account, "inbox")
    settle(alice)
    client.force_login(alice)
    for query in (
        "?account=abc",
        f"?account={bobs_account.pk}",
        f"?folder={bobs_folder.pk}",
        "?linked=maybe",
        "?page=x",
    ):
        response = client.get(reverse("mailsync:inbox") + query)
        assert response.status_code == 200
        page = response.content.decode()
        assert "Still here" in page and "hidden by filters" not in page, query


def test_pages(client, alice):
    threads = [thread_in(alice, "inbox", subject=f"Numbered {n:02}") for n in range(5)]
    settle(alice)
    first = inbox.inbox_page(alice, "inbox", InboxFilters(), per_page=2)
    third = inbox.inbox_page(alice, "inbox", InboxFilters(), page=3, per_page=2)
    beyond = inbox.inbox_page(alice, "inbox", InboxFilters(), page=99, per_page=2)
    assert (first.count, first.num_pages, first.has_next, first.has_previous) == (5, 3, True, False)
    assert [row.entry.thread_id for row in first.rows] == [threads[4].pk, threads[3].pk]
    assert [row.entry.thread_id for row in third.rows] == [threads[0].pk]
    assert beyond.number == 3


# --- search -------------------------------------------------------------------------------------------------


def ingested_in(owner, role: str = "inbox", *, sender: str = ANN, subject: str = "Hello", body_text: str = "Hi.\n"):
    """Like thread_in, but the message is stored from bytes as a sync stores it (ingest_raw), so its
    search words come from the parser (EmailMessage.search_terms), not from the text in the database."""
    account = EmailAccountFactory(user=owner)
    result = ingest_raw(account, [make_message(subject, sender=sender, to=owner.email, body=body_text)])
    message = EmailMessage.objects.get(pk=result.created_ids[0])
    assert message.search_terms is not None
    put_in(message, folder_of(account, role))
    return message.thread


# Both ways a message's words reach its list row's search document: stored by a sync (the parser's
# words) and stored without them (mail from before they existed: the document reads the text).
STORED = {"by a sync": ingested_in, "without search words": thread_in}


def settle_as_stored(how: str, owner) -> None:
    settle(owner)
    if how == "without search words":  # what rebuild_mailboxes filled in, gone again: the old way
        EmailMessage.objects.filter(thread__owner=owner).update(search_terms=None)
        search.index_for_search(MailboxEntry.objects.filter(owner=owner).values_list("pk", flat=True))


@pytest.fixture(params=list(STORED))
def searchable(request, alice):
    stored = STORED[request.param]
    threads = {
        "subject": stored(alice, "inbox", subject="Container shipment to Rotterdam"),
        "body": stored(alice, "inbox", subject="Hello", body_text="Please send the signed warranty form."),
        "participant": stored(alice, "inbox", sender="dana@levi-design.example", subject="Hi"),
        "non_ascii": stored(alice, "inbox", subject="Spotkanie w Łodzi", body_text="Zażółć gęślą jaźń, do zobaczenia."),
        "archived": stored(alice, "archive", subject="Container invoice archived"),
    }
    settle_as_stored(request.param, alice)
    return threads


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("container", ["subject"]),  # the archived one is in another list
        ("CONTAINER rotterdam", ["subject"]),  # every word, any case
        ("warranty", ["body"]),
        ("warr", ["body"]),  # words are prefixes: results while typing
        ("dana@levi-design.example", ["participant"]),  # exact address
        ("levi", ["participant"]),  # a part of an address
        ("łodzi", ["non_ascii"]),
        ("GĘŚLĄ", ["non_ascii"]),
        ("nothing-like-this", []),
        ("'&|!():*", ["subject", "body", "participant", "non_ascii"]),  # no words: no filter, no error
    ],
)
def test_search_in_subject_body_and_participants(alice, searchable, query, expected):
    found = listed(alice, filters=InboxFilters(query=query))
    assert sorted(found) == sorted(searchable[name].pk for name in expected)


@pytest.fixture(params=list(STORED))
def cjk(request, alice):
    stored = STORED[request.param]
    threads = {
        "japanese": stored(alice, "inbox", subject="明日の会議について", body_text="東京都庁で話し合いましょう。"),
        "chinese": stored(alice, "inbox", subject="报价单", body_text="我们明天下午开会讨论合同。"),
        "korean": stored(alice, "inbox", subject="회의록", body_text="다음 주에 계약서를 보내드리겠습니다."),
        "latin": stored(alice, "inbox", subject="Tokyo office", body_text="Plain text only."),
    }
    settle_as_stored(request.param, alice)
    return threads


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("会議", ["japanese"]),  # a word in the middle of a run of Japanese text
        ("議", ["japanese"]),  # one character, even the last of a word
        ("東京都庁", ["japanese"]),
        ("京都", ["japanese"]),  # a true substring of 東京都庁
        ("会談", []),  # both characters occur, but not together: no match
        ("开会", ["chinese"]),
        ("合同 报价", ["chinese"]),
        ("계약서", ["korean"]),
        ("계약", ["korean"]),  # a word with its particle attached (계약서를)
        ("tokyo", ["latin"]),
        ("tokyo 会議", []),
    ],
)
def test_search_in_chinese_japanese_and_korean(alice, cjk, query, expected):
    if connection.vendor != "postgresql":
        pytest.skip("the substring fallback finds these anyway")
    found = listed(alice, filters=InboxFilters(query=query))
    assert sorted(found) == sorted(cjk[name].pk for name in expected)


@pytest.mark.parametrize(
    ("query", "found"),
    [
        ("file_name", True),  # "_" separates words, in the query as in the document
        ("name", True),
        ("3.14", True),  # both parts of a number
        ("14", True),
        ("συμβόλαιο", True),  # upper-case Greek in the mail, lower-case in the box
        ("ΣΥΜΒΌΛΑΙΟ", True),
        ("Zürich", True),
        ("zurich", False),  # accents are kept: a different word
        ("acme", True),  # the domain of a participant's address
        ("xyzzy", False),
    ],
)
def test_search_words_of_mail_stored_by_a_sync(alice, query, found):
    thread = ingested_in(
        alice,
        sender="Ann <ann@acme-logistics.example>",
        subject="ΣΥΜΒΌΛΑΙΟ for Zürich",
        body_text="See file_name.pdf, version 3.14 of the contract.",
    )
    settle(alice)
    assert listed(alice, filters=InboxFilters(query=query)) == ([thread.pk] if found else [])


def test_rebuild_gives_older_mail_the_search_words_of_new_mail(alice):
    old = thread_in(alice, "inbox", sender="Ann <ann@acme-logistics.example>", subject="See file_name.pdf")
    message = old.messages.get()
    assert message.search_terms is None  # stored without them
    settle(alice)  # rebuild_mailboxes
    message.refresh_from_db()
    new = parse_message(make_message("See file_name.pdf", sender="Ann <ann@acme-logistics.example>", to=alice.email))
    assert set(message.search_terms.split()) >= set(new.search_terms.split()) - set(search_words(new.body_text))
    assert listed(alice, filters=InboxFilters(query="name")) == [old.pk]


def _entry_rows(owner) -> set[tuple]:
    fields = ("thread_id", "mailbox", *placement._ENTRY_FIELDS)
    return set(MailboxEntry.objects.filter(owner=owner).values_list(*fields))


@pytest.mark.parametrize("seed", range(6))
def test_list_rows_rebuilt_in_sql_as_in_python(alice, seed):
    """PostgreSQL rebuilds list rows with one statement, other databases in Python: same rows, same
    answer (the rows whose messages changed), from list rows that are right, stale, missing or extra."""
    if connection.vendor != "postgresql":
        pytest.skip("the statement is PostgreSQL's")
    rng = random.Random(seed)
    now = timezone.now()
    threads = []
    for number in range(12):
        thread = create_thread(alice, sender=ANN, subject=f"Thread {number}", date=now - dt.timedelta(hours=number))
        for extra in range(rng.randrange(0, 4)):
            create_message(thread, sender=rng.choice([ANN, alice.email]), date=now - dt.timedelta(minutes=extra * 7))
        threads.append(thread)
    settle(alice)  # list rows as they should be
    messages = list(EmailMessage.objects.filter(thread__in=threads))
    for message in rng.sample(messages, len(messages) // 2):  # what changes after the rows were built
        change = rng.choice(["read", "unread", "archive", "trash", "delete", "block", "attach", "date", "same"])
        values = {
            "read": {"is_read": True},
            "unread": {"is_read": False},
            "archive": {"mailbox": Mailbox.ARCHIVE},
            "trash": {"mailbox": Mailbox.TRASH},
            "delete": {"deleted_at": now},
            "block": {"is_blocked": True},
            "attach": {"has_attachments": True},
            "date": {"date": now + dt.timedelta(minutes=rng.randrange(1, 90))},
            "same": {},
        }[change]
        EmailMessage.objects.filter(pk=message.pk).update(**values)
    rows = list(MailboxEntry.objects.filter(owner=alice))
    MailboxEntry.objects.filter(pk__in=[row.pk for row in rng.sample(rows, 3)]).delete()  # missing rows
    MailboxEntry.objects.filter(pk=rng.choice(rows).pk).update(unread_count=99)  # a stale one
    ids = {thread.pk for thread in threads}

    def rebuilt(rebuild) -> tuple[set, set]:
        changed = rebuild(sorted(ids))
        keys = set(MailboxEntry.objects.filter(pk__in=changed).values_list("thread_id", "mailbox"))
        return _entry_rows(alice), keys

    with transaction.atomic():
        sid = transaction.savepoint()
        in_python = rebuilt(placement._rebuild_entries_python)
        transaction.savepoint_rollback(sid)
        in_sql = rebuilt(placement._rebuild_entries_sql)
    assert in_sql == in_python
    assert in_sql[1]  # something did change


def test_search_in_archive_and_search_view(client, alice, searchable):
    assert listed(alice, "archive", InboxFilters(query="container")) == [searchable["archived"].pk]
    client.force_login(alice)
    page = client.get(reverse("mailsync:inbox") + "?q=rotterdam").content.decode()
    assert "Container shipment to Rotterdam" in page and "Spotkanie" not in page
    assert "Search: “rotterdam”" in page


def test_search_finds_new_mail_once_indexed_after_the_commit(alice, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        thread = thread_in(alice, "inbox", subject="Freshly arrived palette")
        placement.refresh_mailboxes(thread.messages.values_list("pk", flat=True))
    assert listed(alice, filters=InboxFilters(query="palette")) == [thread.pk]


def test_substring_fallback_without_postgresql(alice, searchable, monkeypatch):
    monkeypatch.setattr(connection, "vendor", "sqlite")
    assert listed(alice, filters=InboxFilters(query="rotterdam")) == [searchable["subject"].pk]
    assert listed(alice, filters=InboxFilters(query="levi-design")) == [searchable["participant"].pk]


# --- placement after a real sync (Dovecot) --------------------------------------------------------------


@pytest.mark.dovecot
def test_lists_after_a_sync_follow_the_server_folders(alice, dovecot, mail_user):
    from tests.test_sync import make_account

    now = dt.datetime.now(dt.UTC)
    for folder, subject in [("INBOX", "In the inbox"), ("Archive", "In the archive"), ("Trash", "In the trash")]:
        dovecot.append(mail_user, make_message(subject, to=mail_user.address, date=now), folder=folder)
    dovecot.append(mail_user, make_message("Sent by me", sender=mail_user.address, date=now), folder="Sent")
    account = make_account(alice, mail_user, dovecot)
    assert engine.sync_account(account.pk).error is None

    def subjects(mailbox_name):
        return {row.thread.subject for row in inbox.inbox_page(alice, mailbox_name, InboxFilters()).rows}

    assert subjects("inbox") == {"In the inbox"}
    assert subjects("archive") == {"In the archive"}
    assert subjects("trash") == {"In the trash"}
    assert subjects("sent") == {"Sent by me"}

    # Moved on the server (in another mail client): the next sync moves it between the lists.
    inbox_uid = dovecot.uids(mail_user, "INBOX")[0]
    dovecot.move(mail_user, [inbox_uid], "Archive")
    assert engine.sync_account(account.pk).error is None
    assert subjects("inbox") == set()
    assert subjects("archive") == {"In the inbox", "In the archive"}
    assert EmailMessage.objects.filter(account=account, subject="In the inbox").count() == 1

    # Read on the server: the unread count follows.
    assert inbox.mailbox_counts(alice)["archive"].unread == 2
    dovecot.add_flags(mail_user, dovecot.uids(mail_user, "Archive"), ("\\Seen",), folder="Archive")
    assert engine.sync_account(account.pk).error is None
    assert inbox.mailbox_counts(alice)["archive"].unread == 0


# --- cost of a page -----------------------------------------------------------------------------------------


def _queries(client, url) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return len(captured.captured_queries)


@pytest.mark.parametrize(
    "query", ["", "?unread=1", "?q=offer", "?linked=unlinked", "?contact=1", "?page=2", "?folder=__folder__"]
)
def test_queries_per_page_do_not_grow_with_the_mailbox(client, alice, query):
    deal = DealFactory(owner=alice)
    person = PersonFactory(owner=alice)
    PersonEmailFactory(person=person, email=ANN)
    client.force_login(alice)

    def add(count):
        for n in range(count):
            thread = thread_in(alice, "inbox", subject=f"Offer {n}", sender=ANN if n % 2 else "x@y.example")
            create_message(thread, sender=alice.email, account=thread.messages.first().account)
            if n % 3 == 0:
                conversation_services.link_thread(user=alice, thread=thread, record=deal)
        settle(alice)

    folder = folder_of(EmailAccountFactory(user=alice), "inbox")
    url = reverse("mailsync:inbox") + query.replace("__folder__", str(folder.pk))
    add(5)
    small = _queries(client, url)
    add(35)
    large = _queries(client, url)
    assert small == large
    assert large <= 14


def test_sent_and_deal_timeline_queries_do_not_grow(client, alice):
    deal = DealFactory(owner=alice)
    client.force_login(alice)

    def add(count):
        for n in range(count):
            thread = thread_in(alice, "sent", sender=alice.email, to=[f"p{n}@x.example"], subject=f"Sent {n}")
            conversation_services.link_thread(user=alice, thread=thread, record=deal)
        settle(alice)

    add(5)
    small = (_queries(client, reverse("mailsync:sent")), _queries(client, deal.get_absolute_url()))
    add(35)
    large = (_queries(client, reverse("mailsync:sent")), _queries(client, deal.get_absolute_url()))
    assert small == large


def test_costly_filters_are_not_counted_beyond_the_page(client, alice, monkeypatch):
    threads = [thread_in(alice, "inbox", subject=f"Shipment {n}") for n in range(4)]
    thread_in(alice, "inbox", subject="Unrelated")
    settle(alice)
    newest_first = [thread.pk for thread in reversed(threads)]
    first = inbox.inbox_page(alice, "inbox", InboxFilters(query="shipment"), per_page=3)
    assert (first.count, first.capped, first.has_next) == (3, True, True)  # "at least 3"
    assert [row.entry.thread_id for row in first.rows] == newest_first[:3]
    last = inbox.inbox_page(alice, "inbox", InboxFilters(query="shipment"), page=2, per_page=3)
    assert (last.number, last.count, last.capped, last.has_next) == (2, 4, False, False)  # exact at the end
    assert [row.entry.thread_id for row in last.rows] == newest_first[3:]
    beyond = inbox.inbox_page(alice, "inbox", InboxFilters(query="shipment"), page=9, per_page=3)
    assert beyond.number == 1 and len(beyond.rows) == 3
    unread = inbox.inbox_page(alice, "inbox", InboxFilters(unread=True), per_page=3)
    assert (unread.count, unread.capped, unread.num_pages) == (5, False, 2)  # cheap filters: counted

    client.force_login(alice)
    few = client.get(reverse("mailsync:inbox") + "?q=shipment").content.decode()
    assert "Showing 4 of 5 conversations" in few and "1 hidden by filters" in few
    monkeypatch.setattr(inbox, "PAGE_SIZE", 3)
    many = client.get(reverse("mailsync:inbox") + "?q=shipment").content.decode()
    assert "Showing 3+ of 5 conversations" in many and "hidden by filters" not in many
    assert "Older →" in many and "Page 1</span>" in many


def test_huge_conversations_are_indexed_within_limits(alice):
    """A mail to thousands with a long body (S7 keeps every recipient) still gets a search document."""
    recipients = [f"r{n}@list{n}.example" for n in range(3000)]
    body = " ".join(f"token{n}" for n in range(60_000))
    thread = thread_in(alice, "inbox", subject="Quarterly newsletter", to=recipients, body_text=body)
    for _ in range(3):
        create_message(thread, sender=ANN, account=thread.messages.first().account, body_text=body)
    settle(alice)
    assert listed(alice, filters=InboxFilters(query="newsletter")) == [thread.pk]
    assert listed(alice, filters=InboxFilters(query="token5")) == [thread.pk]


def test_row_dates_are_short_for_recent_mail():
    from mailsync.workspace.inbox import ThreadRow

    def when(moment):
        return ThreadRow(entry=MailboxEntry(latest_date=moment), correspondents=[]).when

    now = timezone.localtime()
    assert when(now) == f"{now:%H:%M}"
    long_ago = now.replace(year=now.year - 2)
    assert when(long_ago) == f"{long_ago.day} {long_ago:%b %Y}"
    if now.month > 1:  # earlier this year (January has no earlier month)
        earlier = now.replace(month=1, day=1)
        assert when(earlier) == f"1 {earlier:%b}"


# --- "new conversations" notice of an open list ---------------------------------------------------------------


def test_new_conversations_counts_own_visible_mail_stored_after_the_cursor(alice, bob):
    thread_in(alice, "inbox", subject="Before the page")
    settle(alice)
    cursor = inbox.news_cursor()
    assert inbox.new_conversations(alice, "inbox", cursor) == 0

    fresh = thread_in(alice, "inbox", subject="Arrived later")
    create_message(fresh, sender=ANN, account=fresh.messages.first().account)  # two messages, one conversation
    thread_in(alice, "archive", subject="Filed elsewhere")
    thread_in(alice, "inbox", subject="Blocked sender", is_blocked=True)
    thread_in(alice, "inbox", subject="Deleted", deleted_at=timezone.now())
    thread_in(bob, "inbox", subject="Bob's own")
    settle(alice, bob)
    assert inbox.new_conversations(alice, "inbox", cursor) == 1
    assert inbox.new_conversations(alice, "archive", cursor) == 1
    assert inbox.new_conversations(bob, "inbox", cursor) == 1
    assert inbox.new_conversations(alice, "nonsense", cursor) == 0


def test_news_view_answers_the_poll_with_a_notice_or_nothing(client, alice, bob):
    client.force_login(alice)
    page = client.get(reverse("mailsync:inbox") + "?unread=1").content.decode()
    assert 'hx-trigger="every 3s"' in page  # new mail on screen within 5 s of being stored
    news_url = reverse("mailsync:inbox_news") + f"?mailbox=inbox&since={inbox.news_cursor()}"
    assert news_url.replace("&", "&amp;") in page

    htmx = {"HX-Request": "true", "HX-Current-URL": "http://testserver/mail/?unread=1&page=3"}
    nothing = client.get(news_url, headers=htmx)
    assert (nothing.status_code, nothing.content) == (204, b"")  # nothing new: no body, htmx swaps nothing
    thread_in(bob, "inbox", subject="Not alice's")
    settle(bob)
    assert client.get(news_url, headers=htmx).status_code == 204
    thread_in(alice, "inbox", subject="Fresh")
    settle(alice)
    notice = client.get(news_url, headers=htmx).content.decode()
    assert "1 new conversation in Inbox." in notice
    assert 'href="/mail/?unread=1"' in notice  # the same filters, from the first page

    elsewhere = {"HX-Request": "true", "HX-Current-URL": "https://evil.example/mail/?x=1"}
    assert 'href="/mail/"' in client.get(news_url, headers=elsewhere).content.decode()
    assert client.get(news_url).status_code == 302  # not htmx: the list itself
    bad = reverse("mailsync:inbox_news") + "?mailbox=inbox&since=-1"
    assert client.get(bad, headers=htmx).status_code == 400
    assert client.get(reverse("mailsync:inbox_news") + "?mailbox=x&since=1", headers=htmx).status_code == 400
    client.logout()
    assert client.get(news_url, headers=htmx).status_code == 302  # login required
