"""mailsync.sync.threads: which conversation a message belongs to, through the real ingestion path."""

from datetime import timedelta

import pytest

from mailsync.models import EmailAccount, EmailMessage, EmailThread, MailFolder, MailSettings, ThreadLink
from mailsync.sync.ingest import ingest_batch, ingest_raw
from mailsync.sync.parsing import parse_message
from mailsync.sync.threads import assign_threads, has_reply_prefix, normalize_subject, refresh_thread_stats
from tests.factories import PersonFactory
from tests.test_ingest import BASE_DATE, build_message


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture
def account(alice):
    return EmailAccount.objects.create(
        user=alice, email_address="alice@company.test", imap_host="localhost", username="alice@company.test"
    )


def thread_of(message_id: str) -> EmailThread:
    return EmailMessage.objects.get(message_id=message_id).thread


@pytest.mark.parametrize(
    ("subject", "normalized"),
    [
        ("Re: Offer", "offer"),
        ("RE: AW: Fwd: Offer", "offer"),
        ("Re[2]: Offer", "offer"),
        ("SV: Vs: Antw: Offer", "offer"),
        ("[sales] Re: [Ticket #42] Offer", "offer"),
        ("回复\uff1a报价", "报价"),  # full-width colon
        ("답장: 견적", "견적"),
        ("Odp: PD: Oferta", "oferta"),
        ("R: I: Offerta", "offerta"),
        ("Offer   for  2025", "offer for 2025"),
        ("Research results", "research results"),
        ("", ""),
    ],
)
def test_normalize_subject(subject, normalized):
    assert normalize_subject(subject) == normalized


def test_reply_prefix_detection():
    assert has_reply_prefix("Re: x") and has_reply_prefix("[list] AW: x") and has_reply_prefix("Fwd: x")
    assert not has_reply_prefix("Research") and not has_reply_prefix("Reminder: x")


def test_reply_chain_by_references_is_one_thread(account):
    ingest_raw(
        account,
        [
            build_message(1, subject="Offer"),
            build_message(
                2,
                subject="Re: Offer",
                sender="alice@company.test",
                to="bob@customer.example",
                references="<msg-1@customer.example>",
            ),
        ],
    )
    ingest_raw(
        account,
        [build_message(3, subject="Re: Offer", references="<msg-1@customer.example> <msg-2@customer.example>")],
    )
    thread = thread_of("msg-1@customer.example")
    assert set(thread.messages.values_list("message_id", flat=True)) == {
        "msg-1@customer.example",
        "msg-2@customer.example",
        "msg-3@customer.example",
    }
    assert thread.message_count == 3
    assert thread.subject == "Offer"
    assert thread.first_message_at == BASE_DATE + timedelta(minutes=1)
    assert thread.last_message_at == BASE_DATE + timedelta(minutes=3)
    assert EmailThread.objects.count() == 1


def test_in_reply_to_alone_is_enough(account):
    ingest_raw(account, [build_message(1, subject="Quote")])
    ingest_raw(account, [build_message(2, subject="Totally different", in_reply_to="<msg-1@customer.example>")])
    assert thread_of("msg-2@customer.example") == thread_of("msg-1@customer.example")


def test_reply_arriving_before_its_parent(account):
    ingest_raw(account, [build_message(2, subject="Re: Proposal", in_reply_to="<msg-1@customer.example>")])
    assert thread_of("msg-2@customer.example").subject == "Re: Proposal"

    ingest_raw(account, [build_message(1, subject="Proposal")])

    thread = thread_of("msg-1@customer.example")
    assert thread == thread_of("msg-2@customer.example")
    assert thread.subject == "Proposal"  # the earliest message names the thread
    assert thread.message_count == 2
    assert thread.first_message_at == BASE_DATE + timedelta(minutes=1)


def test_two_replies_to_a_message_that_never_arrives_share_a_thread(account):
    ingest_raw(account, [build_message(2, subject="Re: Plan", references="<absent@customer.example>")])
    ingest_raw(account, [build_message(3, subject="Re: Plan", references="<absent@customer.example>")])
    assert thread_of("msg-2@customer.example") == thread_of("msg-3@customer.example")


def test_parent_and_reply_in_the_same_batch(account):
    ingest_raw(
        account,
        [
            build_message(2, subject="Re: Visit", in_reply_to="<msg-1@customer.example>"),
            build_message(1, subject="Visit"),
            build_message(3, subject="Other topic"),
        ],
    )
    assert thread_of("msg-1@customer.example") == thread_of("msg-2@customer.example")
    assert thread_of("msg-3@customer.example") != thread_of("msg-1@customer.example")
    assert thread_of("msg-1@customer.example").subject == "Visit"


def test_a_message_joining_two_threads_merges_them_keeping_links(account, alice):
    ingest_raw(account, [build_message(1, subject="Part A", references="<root-a@x>")])
    ingest_raw(account, [build_message(2, subject="Part B", references="<root-b@x>")])
    first, second = thread_of("msg-1@customer.example"), thread_of("msg-2@customer.example")
    assert first != second
    person = PersonFactory(owner=alice)
    ThreadLink.objects.create(thread=second, person=person, rule="manual")
    second.visibility = EmailThread.Visibility.SHARED
    second.save(update_fields=["visibility"])

    ingest_raw(account, [build_message(3, subject="Re: both", references="<root-a@x> <root-b@x>")])

    merged = thread_of("msg-3@customer.example")
    assert merged == thread_of("msg-1@customer.example") == thread_of("msg-2@customer.example")
    assert EmailThread.objects.count() == 1
    assert merged.message_count == 3
    assert list(merged.links.values_list("person", flat=True)) == [person.pk]
    assert merged.visibility == EmailThread.Visibility.PRIVATE  # one part was private


def test_subject_fallback_needs_a_shared_participant(account):
    ingest_raw(account, [build_message(1, subject="Pricing", sender="bob@customer.example")])
    # No In-Reply-To / References (some clients drop them), but a reply from the same person.
    ingest_raw(account, [build_message(2, subject="RE: Pricing", sender="bob@customer.example", message_id="<x2@y>")])
    # Same subject, different people (the owner is on both, which does not count).
    ingest_raw(account, [build_message(3, subject="Re: Pricing", sender="carol@other.example", message_id="<x3@y>")])
    # Same subject and person, but not a reply: a new conversation.
    ingest_raw(account, [build_message(4, subject="Pricing", sender="bob@customer.example", message_id="<x4@y>")])

    pricing = thread_of("msg-1@customer.example")
    assert thread_of("x2@y") == pricing
    assert thread_of("x3@y") != pricing
    assert thread_of("x4@y") != pricing


def test_subject_fallback_is_limited_in_time(account):
    ingest_raw(account, [build_message(1, subject="Renewal")])
    late = build_message(2, subject="Re: Renewal", message_id="<late@y>", date=BASE_DATE + timedelta(days=90))
    ingest_raw(account, [late])
    assert thread_of("late@y") != thread_of("msg-1@customer.example")


def test_subject_fallback_within_one_batch(account):
    ingest_raw(
        account,
        [
            build_message(1, subject="Samples", cc="dave@customer.example"),
            build_message(2, subject="Re: Samples", sender="dave@customer.example", message_id="<r@y>"),
        ],
    )
    assert thread_of("r@y") == thread_of("msg-1@customer.example")


def test_new_threads_are_private_by_default_and_follow_mail_settings(account, alice):
    ingest_raw(account, [build_message(1, subject="First")])
    assert thread_of("msg-1@customer.example").visibility == EmailThread.Visibility.PRIVATE

    MailSettings.objects.create(user=alice, default_visibility=EmailThread.Visibility.SHARED)
    ingest_raw(account, [build_message(2, subject="Second")])
    assert thread_of("msg-2@customer.example").visibility == EmailThread.Visibility.SHARED
    # P2: earlier threads keep their visibility.
    assert thread_of("msg-1@customer.example").visibility == EmailThread.Visibility.PRIVATE


def test_threads_span_the_owners_accounts_but_never_other_owners(account, alice, bob):
    second_account = EmailAccount.objects.create(
        user=alice, email_address="alice@private.example", imap_host="localhost", username="alice@private.example"
    )
    bobs_account = EmailAccount.objects.create(
        user=bob, email_address="bob@company.test", imap_host="localhost", username="bob@company.test"
    )
    ingest_raw(account, [build_message(1, subject="Deal")])
    ingest_raw(second_account, [build_message(2, subject="Re: Deal", in_reply_to="<msg-1@customer.example>")])
    ingest_raw(bobs_account, [build_message(1, subject="Deal")])

    alices = EmailMessage.objects.filter(account__user=alice)
    assert alices.count() == 2
    assert alices.values("thread").distinct().count() == 1
    bobs_message = EmailMessage.objects.get(account=bobs_account)
    assert bobs_message.thread.owner == bob
    assert bobs_message.thread != alices.first().thread


def test_same_message_in_two_folders_stays_one_message_in_one_thread(account):
    inbox = MailFolder.objects.create(account=account, name="INBOX", uidvalidity=1)
    archive = MailFolder.objects.create(account=account, name="Archive", uidvalidity=2)
    raw = build_message(1)
    ingest_batch(account, inbox, [(1, (), None, raw)], uidvalidity=1)
    ingest_batch(account, archive, [(8, (), None, raw)], uidvalidity=2)
    message = EmailMessage.objects.get()
    assert message.locations.count() == 2
    assert message.thread.message_count == 1
    assert EmailThread.objects.count() == 1


def test_provider_thread_ids_group_messages(account):
    inbox = MailFolder.objects.create(account=account, name="[Gmail]/All Mail", uidvalidity=1)
    ingest_batch(account, inbox, [(1, (), None, build_message(1, subject="A"), "1770001")], uidvalidity=1)
    ingest_batch(account, inbox, [(2, (), None, build_message(2, subject="Something else"), "1770001")], uidvalidity=1)
    assert thread_of("msg-1@customer.example") == thread_of("msg-2@customer.example")
    assert thread_of("msg-1@customer.example").provider_thread_id == "1770001"


def test_assign_threads_batch_api(alice):
    parent = parse_message(build_message(1, subject="Kickoff"))
    reply = parse_message(build_message(2, subject="Re: Kickoff", in_reply_to="<msg-1@customer.example>"))
    other = parse_message(build_message(3, subject="Unrelated"))

    assignment = assign_threads(alice, [reply, other, parent])

    assert assignment.thread_ids[0] == assignment.thread_ids[2] != assignment.thread_ids[1]
    assert assignment.touched == set(assignment.thread_ids)
    kickoff = EmailThread.objects.get(pk=assignment.thread_ids[0])
    assert (kickoff.owner, kickoff.subject, kickoff.visibility) == (alice, "Kickoff", "private")
    # A later batch finds the same thread through the stored references.
    later = parse_message(build_message(4, subject="Re: Kickoff", references="<msg-2@customer.example>"))
    assert assign_threads(alice, [later]).thread_ids == [kickoff.pk]


def test_threads_created_by_a_batch_carry_the_stats_of_their_messages(account):
    """New threads are written with their count, dates and subject (ingestion then skips recomputing
    them): they must be what refresh_thread_stats computes from the stored messages, whatever the order
    in the batch, equal dates, a missing or a future Date header."""
    same = BASE_DATE + timedelta(hours=5)
    ingest_raw(
        account,
        [
            build_message(12, subject="Re: Tie", references="<msg-10@customer.example>", date=same),
            build_message(10, subject="Tie", date=same),  # same date: the first in the batch names it
            build_message(11, subject="Re: Tie", in_reply_to="<msg-10@customer.example>", date=same),
            build_message(22, subject="Re: Later first", references="<msg-20@customer.example>"),
            build_message(20, subject="Later first"),
            build_message(30, subject="Alone"),
            build_message(40, subject="From the future", date=BASE_DATE + timedelta(days=3650)),
            build_message(41, subject="Re: From the future", in_reply_to="<msg-40@customer.example>"),
        ],
    )
    no_date = build_message(50, subject="No date").replace(b"Date: ", b"X-Old-Date: ", 1)
    ingest_raw(account, [no_date, build_message(51, subject="Re: No date", in_reply_to="<msg-50@customer.example>")])

    stored = {
        thread.pk: (thread.message_count, thread.first_message_at, thread.last_message_at, thread.subject)
        for thread in EmailThread.objects.all()
    }
    assert len(stored) == 5
    for pk, (count, first, last, subject) in stored.items():
        messages = list(EmailMessage.objects.filter(thread_id=pk).order_by("date", "pk"))
        assert (count, first, last, subject) == (
            len(messages),
            messages[0].date,
            messages[-1].date,
            messages[0].subject,
        ), subject
    assert thread_of("msg-12@customer.example").subject == "Re: Tie"
    refresh_thread_stats(stored)  # recomputing changes nothing
    assert stored == {
        thread.pk: (thread.message_count, thread.first_message_at, thread.last_message_at, thread.subject)
        for thread in EmailThread.objects.all()
    }


def test_thread_stats_follow_later_batches_and_deletions(account):
    """refresh_thread_stats after each batch: counts and dates follow new mail, the earliest message
    names the thread (an earlier reply arriving late renames it), deleted mail stops counting, and a
    thread whose values did not change is not written."""
    from django.db import connection
    from django.utils import timezone

    def state(thread):
        thread.refresh_from_db()
        return (thread.message_count, thread.first_message_at, thread.last_message_at, thread.subject)

    ingest_raw(account, [build_message(1, subject="Proposal")])
    thread = thread_of("msg-1@customer.example")
    ingest_raw(account, [build_message(3, subject="Re: Proposal", in_reply_to="<msg-1@customer.example>")])
    first, third = BASE_DATE + timedelta(minutes=1), BASE_DATE + timedelta(minutes=3)
    assert state(thread) == (2, first, third, "Proposal")
    assert thread.normalized_subject == "proposal"

    early = BASE_DATE - timedelta(days=1)
    ingest_raw(
        account,
        [build_message(9, subject="Re: [deal] Proposal v0", references="<msg-1@customer.example>", date=early)],
    )
    assert state(thread) == (3, early, third, "Re: [deal] Proposal v0")
    assert thread.normalized_subject == "proposal v0"

    EmailMessage.objects.filter(message_id="msg-3@customer.example").update(deleted_at=timezone.now())
    refresh_thread_stats([thread.pk])
    assert state(thread) == (2, early, BASE_DATE + timedelta(minutes=1), "Re: [deal] Proposal v0")
    EmailMessage.objects.filter(message_id="msg-9@customer.example").update(deleted_at=timezone.now())
    refresh_thread_stats([thread.pk])
    assert state(thread) == (1, first, first, "Proposal")
    assert thread.normalized_subject == "proposal"

    if connection.vendor == "postgresql":
        version = EmailThread.objects.extra(select={"v": "ctid::text"}).values_list("v", flat=True).get(pk=thread.pk)
        refresh_thread_stats([thread.pk])
        after = EmailThread.objects.extra(select={"v": "ctid::text"}).values_list("v", flat=True).get(pk=thread.pk)
        assert after == version  # unchanged: not written
