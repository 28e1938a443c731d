"""Delivery failures (W7): bounce reports in synced mail are recognised, matched to the sent message, shown on it,
on the Sent list and on the person, and listed in Delivery reports instead of the Inbox.

The reports are real ones from the shared corpus (mailgun-flanker's Office 365 bounce and its delay notice),
addressed to what the test sent: their recipient and enclosed Message-ID are replaced by ours."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.management import call_command
from django.urls import reverse

from contacts.models import PersonEmail
from crm.addresses import plain_addresses
from mailsync.management.commands.measure_bounces import is_bounce_file, judge, read_labels
from mailsync.models import DeliveryFailure, EmailMessage, Mailbox, OutgoingMessage
from mailsync.sync import bounces, engine
from mailsync.sync.ingest import ingest_raw
from mailsync.sync.parsing import parse_message
from tests.factories import PersonEmailFactory, PersonFactory
from tests.mail_factories import EmailAccountFactory
from tests.test_sending import compose, make_account, send_now

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
if not CORPUS.exists():
    CORPUS = Path("/work/shared/corpus")
LABELS = Path(__file__).parent / "data" / "bounce_labels.tsv"
OFFICE365 = "mailgun-flanker/bounce/office365.eml"  # 5.1.10 RecipientNotFound
DELAYED = "mailgun-flanker/bounce/no-mx.eml"  # Action: delayed, 4.4.4
OFFICE365_ID, OFFICE365_TO = b"20171013111011.20866.254C2F3A4D7AA526@ninomail.com", b"noname@example.com"
DELAYED_ID, DELAYED_TO = b"19E44CA63F984902B7D654F8FF40F89D@bo", b"user@example.com"

needs_corpus = pytest.mark.skipif(not CORPUS.exists(), reason="the shared corpus is not beside the project")


def corpus_report(name: str, *, message_id: str, recipient: str, sender: str) -> bytes:
    """A corpus bounce rewritten to be about our message: its recipient, enclosed Message-ID and the
    address it is sent back to (the original sender)."""
    raw = (CORPUS / name).read_bytes()
    old_id, old_to = (OFFICE365_ID, OFFICE365_TO) if name == OFFICE365 else (DELAYED_ID, DELAYED_TO)
    raw = raw.replace(old_id, message_id.encode()).replace(old_to, recipient.encode())
    parsed = parse_message(raw)
    for _name, address in parsed.to:
        raw = raw.replace(address.encode(), sender.encode())
    return raw


def sent_message(
    user, *, to="bob@customer.example", subject="Offer", message_id="offer-1@company.test", date="07 Dec 2026"
):
    """A message the user sent from elsewhere, as a sync stores it."""
    account = EmailAccountFactory(user=user)
    raw = (
        f"From: {user.email}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{message_id}>\r\n"
        f"Date: {date} 09:00:00 +0000\r\n\r\nHello\r\n"
    ).encode()
    ingest_raw(account, [raw])
    return account, EmailMessage.objects.get(account=account, message_id=message_id)


# --- the detector -----------------------------------------------------------------------------------


@needs_corpus
def test_corpus_bounces_are_recognised_with_recipient_and_status_at_least_95_percent():
    labels = read_labels(LABELS)
    results = [judge((CORPUS / name).read_bytes(), expected)[1] for name, expected in labels.items()]
    assert len(results) == 149
    assert sum(results) / len(results) >= 0.95


@needs_corpus
def test_measure_bounces_command_prints_the_shares():
    out = io.StringIO()
    call_command("measure_bounces", str(CORPUS), stdout=out)
    text = out.getvalue()
    assert "Bounce messages: 149" in text
    line = next(line for line in text.splitlines() if line.startswith("Right recipient"))
    right, labelled = (int(word) for word in line.split(":")[1].split("labelled")[0].split(" of "))
    assert labelled == 149 and right / labelled >= 0.95


@needs_corpus
def test_ordinary_mail_of_the_corpus_is_not_read_as_a_bounce():
    wrongly = []
    for path in sorted(CORPUS.rglob("*.eml")):
        relative = path.relative_to(CORPUS)
        if is_bounce_file(relative) or "multipart_report" in relative.as_posix() or relative.name.startswith("rfc3464"):
            continue  # bounces by content (sisimai's RFC 3464 samples, the Ruby mail gem's reports)
        if relative.parts[-2] == "not" and relative.name.startswith("rb-issue"):
            continue  # a German provider's rejection notice (Mailbox full): a bounce after all
        if parse_message(path.read_bytes()).bounce is not None:
            wrongly.append(relative.as_posix())
    assert wrongly == []


def test_rfc3464_report_fields_per_recipient():
    raw = (
        b"From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\r\nTo: alice@company.test\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <r1@mx.example.net>\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nI'm sorry.\r\n"
        b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n"
        b"Original-Recipient: rfc822;Ann@Example.org\r\nFinal-Recipient: rfc822;ann@mail.example.org\r\n"
        b"Action: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 User unknown\r\n\r\n"
        b"Final-Recipient: rfc822; carl@example.org\r\nAction: delayed\r\nStatus: 4.4.7\r\n\r\n"
        b"Final-Recipient: rfc822; dan@example.org\r\nAction: delivered\r\nStatus: 2.0.0\r\n"
        b"--b\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <Offer-9@Company.TEST>\r\nSubject: Offer\r\n"
        b"To: ann@example.org\r\n--b--\r\n"
    )
    parsed = parse_message(raw)
    report = parsed.bounce
    assert report is not None and report.method == "delivery-status" and parsed.is_bounce
    assert report.original_message_id == "Offer-9@Company.TEST" and report.original_subject == "Offer"
    ann, carl = report.recipients  # the delivered one is no failure
    assert (ann.address, ann.final_address, ann.permanent, ann.status) == (
        "ann@example.org",
        "ann@mail.example.org",
        True,
        "5.1.1",
    )
    assert ann.diagnostic == "550 5.1.1 User unknown"
    assert (carl.address, carl.permanent, carl.action, carl.status) == (
        "carl@example.org",
        False,
        "delayed",
        "4.4.7",
    )


def test_ordinary_messages_are_not_candidates_and_bad_reports_do_not_raise():
    plain = b"From: ann@example.org\r\nTo: alice@company.test\r\nSubject: Lunch?\r\n\r\nSee you at noon.\r\n"
    assert parse_message(plain).bounce is None
    assert not bounces.may_be_bounce({"from": ["ann@example.org"], "subject": ["Lunch?"]}, "text/plain", "", plain)
    # Out-of-office answers come from the null sender too; they are no delivery report.
    vacation = b"Return-Path: <>\r\nFrom: ann@example.org\r\nSubject: Out of office\r\n\r\nBack on Monday.\r\n"
    assert parse_message(vacation).bounce is None
    for broken in (b"", b"\x00\xff" * 50, b"From: MAILER-DAEMON@x\r\nContent-Type: multipart/report\r\n\r\n--"):
        assert bounces.read_bounce(broken) is None
        assert parse_message(broken).bounce is None


# --- at ingestion -------------------------------------------------------------------------------------


@needs_corpus
@pytest.mark.smtp
def test_bounce_of_a_message_sent_through_smtp_shows_on_it_and_on_the_person(
    client, alice, bob, charlie, dovecot, mail_user, smtp_server, celery_eager
):
    account = make_account(alice, mail_user, dovecot, smtp_server)
    person = PersonFactory(owner=alice, first_name="Bob", last_name="Customer")
    address = PersonEmailFactory(person=person, email="bob@customer.example")
    sent = send_now(compose(alice, subject="Offer for 2026"))
    assert sent.state == OutgoingMessage.State.SENT, sent.error_message
    report = corpus_report(
        OFFICE365, message_id=sent.message_id, recipient="bob@customer.example", sender=mail_user.address
    )
    dovecot.append(mail_user, report, "INBOX")
    engine.sync_account(account.pk)

    failure = DeliveryFailure.objects.get(owner=alice)
    assert failure.sent_message_id == sent.sent_message_id and failure.recipient == "bob@customer.example"
    assert failure.permanent and failure.status == "5.1.10" and "RecipientNotFound" in failure.diagnostic
    stored_report = failure.report
    assert stored_report.is_delivery_report and stored_report.mailbox == Mailbox.REPORTS
    address.refresh_from_db()
    assert address.bouncing_since is not None and address.bounce_status == "5.1.10"

    client.force_login(alice)
    thread_html = client.get(reverse("mailsync:thread_detail", args=[sent.sent_message.thread_id])).content.decode()
    assert "Bounced" in thread_html and "bob@customer.example" in thread_html and "5.1.10" in thread_html
    sent_html = client.get(reverse("mailsync:sent")).content.decode()
    assert "Bounced: <bdi>bob@customer.example</bdi>" in sent_html
    outgoing_html = client.get(reverse("mailsync:outgoing_detail", args=[sent.pk])).content.decode()
    assert "Delivery reports" in outgoing_html and "RecipientNotFound" in outgoing_html
    person_html = client.get(person.get_absolute_url()).content.decode()
    assert "Bouncing" in person_html and "The address is fine" in person_html
    # The report is listed in Delivery reports, not the Inbox.
    reports_html = client.get(reverse("mailsync:delivery_reports")).content.decode()
    inbox_html = client.get(reverse("mailsync:inbox")).content.decode()
    assert f'data-thread="{stored_report.thread_id}"' in reports_html
    assert f'data-thread="{stored_report.thread_id}"' not in inbox_html
    # Nobody else learns of it: the thread is private.
    client.force_login(charlie)
    assert client.get(reverse("mailsync:thread_detail", args=[sent.sent_message.thread_id])).status_code == 404

    # One click: the address is fine.
    client.force_login(alice)
    response = client.post(reverse("contacts:person_email_fine", args=[person.pk, address.pk]))
    assert response.status_code == 302
    address.refresh_from_db()
    assert address.bouncing_since is None
    # A sync of the same mailbox again changes nothing.
    engine.sync_account(account.pk)
    assert DeliveryFailure.objects.count() == 1


@needs_corpus
def test_delayed_is_shown_as_delayed_and_does_not_mark_the_address(client, alice):
    person = PersonFactory(owner=alice)
    address = PersonEmailFactory(person=person, email="bob@customer.example")
    account, sent = sent_message(alice)
    ingest_raw(
        account,
        [
            corpus_report(
                DELAYED, message_id="offer-1@company.test", recipient="bob@customer.example", sender=alice.email
            )
        ],
    )
    failure = DeliveryFailure.objects.get()
    assert failure.sent_message == sent and not failure.permanent and failure.still_retrying
    assert failure.label == "Delayed" and failure.status == "4.4.4"
    address.refresh_from_db()
    assert address.bouncing_since is None
    client.force_login(alice)
    html = client.get(reverse("mailsync:thread_detail", args=[sent.thread_id])).content.decode()
    assert "Delayed" in html and "Bounced" not in html


@needs_corpus
def test_report_before_its_sent_copy_is_matched_when_the_copy_arrives(alice):
    account = EmailAccountFactory(user=alice)
    address = PersonEmailFactory(person=PersonFactory(owner=alice), email="bob@customer.example")
    report = corpus_report(
        OFFICE365, message_id="late-1@company.test", recipient="bob@customer.example", sender=alice.email
    )
    ingest_raw(account, [report])
    failure = DeliveryFailure.objects.get()
    assert failure.sent_message is None and failure.report.mailbox == Mailbox.REPORTS
    address.refresh_from_db()
    assert address.bouncing_since is None  # not before we know the owner sent it (backscatter)
    _account, sent = sent_message(alice, message_id="late-1@company.test")
    failure.refresh_from_db()
    assert failure.sent_message == sent
    address.refresh_from_db()
    assert address.bouncing_since is not None


@needs_corpus
def test_without_the_message_id_the_recipient_and_subject_match(alice):
    # The corpus report is of 13 Oct 2017: the message was sent before it.
    account, sent = sent_message(alice, subject="test_bounce 8", message_id="x-2@company.test", date="12 Oct 2017")
    report = corpus_report(
        OFFICE365, message_id="someone-else@elsewhere.test", recipient="bob@customer.example", sender=alice.email
    )
    ingest_raw(account, [report])
    assert DeliveryFailure.objects.get().sent_message == sent


@needs_corpus
def test_bounce_for_nobodys_message_is_kept_in_delivery_reports(alice, bob):
    sent_message(bob, message_id="bobs@company.test")  # bob's, not alice's
    alice_account = EmailAccountFactory(user=alice)
    report = corpus_report(
        OFFICE365, message_id="bobs@company.test", recipient="bob@customer.example", sender=alice.email
    )
    ingest_raw(alice_account, [report])
    failure = DeliveryFailure.objects.get()
    assert failure.sent_message is None  # another owner's message is never matched
    assert failure.report.mailbox == Mailbox.REPORTS and failure.report.deleted_at is None


def test_a_failure_while_recording_loses_nothing(alice, monkeypatch):
    from mailsync.sync import delivery_reports

    def broken(*args, **kwargs):
        raise RuntimeError("database hiccup")

    monkeypatch.setattr(delivery_reports, "_record", broken)
    account = EmailAccountFactory(user=alice)
    raw = (
        b"From: MAILER-DAEMON@mx.example.net\r\nTo: alice@company.test\r\nSubject: failure notice\r\n\r\n"
        b"I'm afraid I wasn't able to deliver your message to the following addresses.\r\n"
        b"This is a permanent error; I've given up.\r\n\r\n<ann@example.org>:\r\n550 5.1.1 no such user\r\n"
    )
    result = ingest_raw(account, [raw])
    assert result.created == 1
    message = EmailMessage.objects.get(account=account)
    assert message.mailbox == Mailbox.REPORTS and not DeliveryFailure.objects.exists()


def test_fixing_a_bouncing_address_is_for_who_sees_the_person(client, alice, charlie):
    person = PersonFactory(owner=alice, visibility="owner")
    address = PersonEmailFactory(person=person, email="gone@customer.example", bounce_status="5.1.1")
    PersonEmail.objects.filter(pk=address.pk).update(bouncing_since="2026-12-01T00:00:00Z")
    client.force_login(charlie)
    assert client.post(reverse("contacts:person_email_remove", args=[person.pk, address.pk])).status_code == 404
    assert client.get(reverse("contacts:person_email_fine", args=[person.pk, address.pk])).status_code == 405
    client.force_login(alice)
    assert client.post(reverse("contacts:person_email_remove", args=[person.pk, address.pk])).status_code == 302
    assert not PersonEmail.objects.filter(pk=address.pk).exists()


def test_a_bug_in_the_bounce_check_never_costs_the_message(monkeypatch):
    from mailsync.sync import parsing

    def broken(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(parsing, "may_be_bounce", broken)
    parsed = parse_message(b"From: ann@example.org\r\nSubject: Hello\r\n\r\nHi there\r\n")
    assert parsed.parse_error == "" and parsed.subject == "Hello" and parsed.bounce is None


def test_sender_address_reads_from_values_as_parseaddr_does():
    import email.utils
    import random

    rng = random.Random(18)
    pieces = ["a", "B", "0", "_", "-", "+", ".", " ", "\t", "<", ">", "@", '"', ",", "(", ")", ":", ";", "\\"]
    pieces += ["ann", "acme", "example", "[", "]", "é", "=?", "\n "]
    shapes = [
        lambda: "".join(rng.choice(pieces) for _ in range(rng.randint(0, 14))),
        lambda: (
            f"{rng.choice(['', 'Ann', 'Ann Ex', ' ann_1 '])}<{rng.choice(['a', 'a.b', 'a..b', '.a'])}@"
            f"{rng.choice(['x', 'x.y', 'x..y', 'x.', '-x'])}>{rng.choice(['', ' ', ',b@c', '>'])}"
        ),
    ]
    fast = 0
    for _ in range(20_000):
        value = rng.choice(shapes)()
        assert bounces.sender_address(value) == email.utils.parseaddr(value)[1].lower(), value
        fast += bool(plain_addresses(value))
    assert fast > 1_000  # the shortcut was taken often enough for the comparison to mean something
