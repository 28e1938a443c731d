"""Blocked addresses and domains (SPEC F1): the exact rule, preview, recompute, and where blocked mail hides."""

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext

from mailsync.linking import blocking
from mailsync.linking.access import timeline_for, visible_messages, visible_threads
from mailsync.linking.rules import link_threads
from mailsync.models import BlockedAddress, EmailMessage
from mailsync.workspace import conversation_services
from tests.factories import PersonEmailFactory, PersonFactory
from tests.mail_factories import (
    AccountAddressFactory,
    EmailAccountFactory,
    create_message,
    create_thread,
    fast_password_hashing,
)

SPAM = "promo@spam.example"


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    fast_password_hashing(settings)


# --- Patterns -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Promo@Spam.Example", "promo@spam.example"),
        ("  Promo <promo@spam.example> ", "promo@spam.example"),
        ("@Spam.Example", "@spam.example"),
        ("spam.example", "@spam.example"),
        ("@bücher.example", "@xn--bcher-kva.example"),
    ],
)
def test_patterns_are_normalised(raw, expected):
    assert blocking.normalize_block_pattern(raw) == expected


@pytest.mark.parametrize("raw", ["", "   ", "@", "@nodot", "not an address", "a@b@c.example", "@exa mple.com", "x@"])
def test_bad_patterns_get_a_clear_message(raw):
    with pytest.raises(ValidationError) as error:
        blocking.normalize_block_pattern(raw)
    assert "example.com" in error.value.messages[0]


# --- The rule, in Python --------------------------------------------------------------------------------

OWN = {"alice@company.test"}


@pytest.mark.parametrize(
    ("senders", "recipients", "patterns", "sent", "blocked"),
    [
        ([SPAM], ["alice@company.test"], [SPAM], False, True),  # sole sender blocked
        ([SPAM], ["alice@company.test", "bob@company.test"], [SPAM], False, False),  # a colleague keeps it
        ([SPAM], ["alice@company.test", "ann@acme.example"], ["@spam.example"], False, False),
        ([SPAM], ["alice@company.test", "x@spam.example"], ["@spam.example"], False, True),  # all blocked
        ([SPAM, "real@other.example"], ["alice@company.test"], [SPAM], False, False),  # Sender not blocked
        (["x@sub.spam.example"], ["alice@company.test"], ["@spam.example"], False, False),  # exact domain only
        ([SPAM], ["alice@company.test"], [SPAM], True, False),  # sent by the owner
        (["alice@company.test"], ["alice@company.test"], ["alice@company.test"], False, False),
        ([], ["alice@company.test"], [SPAM], False, False),  # no sender at all: nothing to match
        ([SPAM], ["alice@company.test"], [], False, False),
    ],
)
def test_is_message_blocked(senders, recipients, patterns, sent, blocked):
    result = blocking.is_message_blocked(
        sender_side=senders, recipients=recipients, own=OWN, patterns=patterns, sent=sent
    )
    assert result is blocked


# --- The rule, in the database --------------------------------------------------------------------------


def is_blocked(message) -> bool:
    message.refresh_from_db(fields=["is_blocked"])
    return message.is_blocked


@pytest.fixture
def mailbox(alice):
    """Alice's messages covering every F1 case."""
    account = EmailAccountFactory(user=alice)
    AccountAddressFactory(account=account, address="alice.sales@company.test")
    cases = {}

    def add(name, **kwargs):
        thread = create_thread(alice, **kwargs)
        cases[name] = thread.messages.get()

    add("sole_sender", sender=SPAM, to=[alice.email])
    add("own_alias_in_cc", sender=SPAM, to=[alice.email], cc=["alice.sales@company.test"])
    add("customer_in_cc", sender=SPAM, to=[alice.email], cc=["ann@acme.example"])
    add("colleague_in_to", sender=SPAM, to=[alice.email, "bob@company.test"])
    add("reply_to_elsewhere", sender=SPAM, to=[alice.email], reply_to=["support@brand.example"])
    add("sender_header_elsewhere", sender=SPAM, to=[alice.email], sender_header="list@lists.example")
    add("other_at_domain", sender="news@spam.example", to=[alice.email])
    add("subdomain", sender="x@eu.spam.example", to=[alice.email])
    add("sent_to_spam", sender=alice.email, to=[SPAM])
    add("unrelated", sender="ann@acme.example", to=[alice.email])
    return cases


@pytest.mark.django_db
def test_exact_address_block(alice, mailbox):
    conversation_services.add_blocked_address(user=alice, pattern=SPAM)
    hidden = {name for name, message in mailbox.items() if is_blocked(message)}
    assert hidden == {"sole_sender", "own_alias_in_cc", "reply_to_elsewhere"}


@pytest.mark.django_db
def test_domain_block_is_exact_domain(alice, mailbox):
    conversation_services.add_blocked_address(user=alice, pattern="@spam.example")
    hidden = {name for name, message in mailbox.items() if is_blocked(message)}
    assert hidden == {"sole_sender", "own_alias_in_cc", "reply_to_elsewhere", "other_at_domain"}


@pytest.mark.django_db
def test_preview_counts_exactly_what_the_block_then_hides(alice, mailbox):
    visible_before = visible_messages(alice).count()
    normalized, preview = conversation_services.preview_blocked_address(user=alice, pattern="@Spam.example")
    assert normalized == "@spam.example"
    assert not BlockedAddress.objects.exists()  # a preview writes nothing
    assert not EmailMessage.objects.filter(is_blocked=True).exists()
    conversation_services.add_blocked_address(user=alice, pattern="@spam.example")
    assert preview == 4
    assert visible_messages(alice).count() == visible_before - preview
    # A second pattern's preview counts only what is still visible.
    _, second = conversation_services.preview_blocked_address(user=alice, pattern="@eu.spam.example")
    assert second == 1


@pytest.mark.django_db
def test_unblock_restores(alice, mailbox):
    blocked = conversation_services.add_blocked_address(user=alice, pattern=SPAM)
    conversation_services.add_blocked_address(user=alice, pattern="@spam.example")
    conversation_services.remove_blocked_address(user=alice, blocked=blocked)
    assert is_blocked(mailbox["sole_sender"])  # the domain still covers it
    conversation_services.remove_blocked_address(
        user=alice, blocked=BlockedAddress.objects.get(pattern="@spam.example")
    )
    assert not EmailMessage.objects.filter(is_blocked=True).exists()


@pytest.mark.django_db
def test_duplicate_and_foreign_blocks_are_refused(alice, bob):
    conversation_services.add_blocked_address(user=alice, pattern=SPAM)
    with pytest.raises(ValidationError, match="already blocked"):
        conversation_services.add_blocked_address(user=alice, pattern="PROMO@spam.example")
    with pytest.raises(ValidationError, match="already blocked"):
        conversation_services.preview_blocked_address(user=alice, pattern=SPAM)
    from django.core.exceptions import PermissionDenied

    with pytest.raises(PermissionDenied):
        conversation_services.remove_blocked_address(user=bob, blocked=BlockedAddress.objects.get())
    assert BlockedAddress.objects.count() == 1


@pytest.mark.django_db
def test_blocks_are_per_user(alice, bob):
    mine = create_thread(alice, sender=SPAM).messages.get()
    theirs = create_thread(bob, sender=SPAM).messages.get()
    conversation_services.add_blocked_address(user=alice, pattern=SPAM)
    assert is_blocked(mine)
    assert not is_blocked(theirs)


@pytest.mark.django_db
def test_new_mail_is_checked_against_the_list(alice):
    conversation_services.add_blocked_address(user=alice, pattern=SPAM)
    thread = create_thread(alice, sender=SPAM)
    reply = create_message(thread, sender=SPAM, to=[alice.email, "ann@acme.example"])
    blocking.recompute_blocked_for_threads([thread.pk])
    assert is_blocked(thread.messages.get(pk__lt=reply.pk))
    assert not is_blocked(reply)


@pytest.mark.django_db
def test_blocked_mail_disappears_from_lists_timelines_and_counts(alice, bob):
    ann = PersonFactory(owner=alice, first_name="Ann", last_name="Smith")
    PersonEmailFactory(person=ann, email=SPAM)
    all_blocked = create_thread(alice, sender=SPAM, visibility="shared")
    partly = create_thread(alice, sender=SPAM, visibility="shared")
    kept = create_message(partly, sender=SPAM, to=[alice.email, "bob@company.test"])
    link_threads([all_blocked.pk, partly.pk])
    assert len(timeline_for(bob, person=ann)) == 2

    conversation_services.add_blocked_address(user=alice, pattern=SPAM)
    for viewer in (alice, bob):
        assert set(visible_threads(viewer)) == {partly}
        assert list(visible_messages(viewer)) == [kept]
        [entry] = timeline_for(viewer, person=ann)
        assert entry == partly
        assert entry.visible_message_count == 1


@pytest.mark.django_db
def test_recompute_is_set_based(alice):
    def queries_for(count):
        for n in range(count):
            create_thread(alice, sender=f"s{n}@spam{count}.example")
        with CaptureQueriesContext(connection) as captured:
            conversation_services.add_blocked_address(user=alice, pattern=f"@spam{count}.example")
        assert EmailMessage.objects.filter(is_blocked=True, from_address__endswith=f"spam{count}.example").count() == (
            count
        )
        return len(captured.captured_queries)

    assert queries_for(3) == queries_for(30)
