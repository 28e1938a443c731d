"""Sending (mailsync.sending) against real servers: aiosmtpd (STARTTLS + AUTH) receives the bytes, Dovecot
holds the Sent folder, and a real worker process is killed between DATA and the state update."""

from __future__ import annotations

import email
import email.policy
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.utils import timezone

from devtools.mailservers import make_message
from mailsync.linking import access
from mailsync.models import EmailAccount, EmailMessage, EmailThread, OutgoingMessage, ThreadLink
from mailsync.protocols import smtp as smtp_protocol
from mailsync.sending import delivery, mime, selectors, services, tasks
from mailsync.sending.addresses import AddressError, parse_recipients
from mailsync.sync import engine
from mailsync.sync.ingest import ingest_raw
from tests.factories import DealFactory, PersonEmailFactory, PersonFactory

pytestmark = pytest.mark.smtp

PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
    b"\x00\x00\x00\rIDATx\x9cc\xf8\xff\xff?\x00\x05\xfe\x02\xfe\xa7\x35\x81\x84\x00\x00\x00\x00IEND\xaeB`\x82"
)
ARABIC = "مرحبا، هذا عرض السعر"


def make_account(user, mail_user, dovecot, smtp_server, **extra) -> EmailAccount:
    values = {
        "user": user,
        "email_address": mail_user.address,
        "display_name": "Alice Owner",
        "username": mail_user.username,
        "imap_host": dovecot.host,
        "imap_port": dovecot.imaps_port,
        "imap_security": "ssl",
        "smtp_host": smtp_server.host,
        "smtp_port": smtp_server.port,
        "smtp_security": "starttls",
        "trusted_ca_pem": dovecot.ca_pem,
        "state": EmailAccount.State.SYNCING,
    }
    account = EmailAccount(**{**values, **extra})
    account.set_secret(mail_user.password)
    account.save()
    return account


@pytest.fixture
def smtp_hooks(smtp_server):
    yield smtp_server
    smtp_server.refused_recipients = set()
    smtp_server.on_data = None


def received_by(smtp_server, mail_user) -> list:
    return [message for message in smtp_server.messages if message.login == mail_user.username]


def compose(user, *, to="Bob Customer <bob@customer.example>", subject="Offer", body="<p>Hi</p>", **kwargs):
    outgoing = services.create_draft(user=user, **kwargs)
    return services.save_draft(
        outgoing=outgoing,
        to=to if to is not None else outgoing.to_addresses,
        cc=outgoing.cc_addresses,
        bcc="",
        subject=subject if subject is not None else outgoing.subject,
        body_html=body,
    )


def send_now(outgoing: OutgoingMessage) -> OutgoingMessage:
    queued = services.queue_message(outgoing=outgoing)
    OutgoingMessage.objects.filter(pk=queued.pk).update(send_at=timezone.now() - timedelta(seconds=1))
    delivery.deliver(queued.pk)
    return OutgoingMessage.objects.get(pk=queued.pk)


# --- Pure parts -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("char", list('\\/":<>|*´`~^'))  # noqa: RUF001
def test_w4_address_characters_are_refused_by_name(char):
    with pytest.raises(AddressError) as caught:
        parse_recipients(f"bo{char}b@example.org")
    assert f"“{char}”" in str(caught.value)


@pytest.mark.parametrize("text", ["bob@", "@example.org", "bob example.org", "bob@@example.org", "bob@exa mple.org"])
def test_malformed_addresses_are_refused(text):
    with pytest.raises(AddressError):
        parse_recipients(text)


def test_recipient_lists_keep_names_and_drop_duplicates():
    parsed = parse_recipients('"Smith, Ann" <ann@example.org>; bob@example.org,\nBOB@example.org')
    assert [(r.name, r.address) for r in parsed] == [("Smith, Ann", "ann@example.org"), ("", "bob@example.org")]


def test_header_injection_is_neutralised():
    draft = mime.Draft(
        from_address="alice@company.test",
        from_name="Alice\r\nBcc: victim@evil.example",
        to=parse_recipients('"Bob\r\nX-Evil: 1" <bob@example.org>'),
        subject="Offer\r\nBcc: victim@evil.example\nX-Injected: yes",
        html="<p>x</p>",
    )
    raw = mime.build(draft, message_id="m1@company.test", now=timezone.now())
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Bcc"] is None and parsed["X-Injected"] is None and parsed["X-Evil"] is None
    assert parsed.get_all("Subject") == ["Offer Bcc: victim@evil.example X-Injected: yes"]
    assert b"\r\nBcc:" not in raw


def test_hostile_html_is_sanitised_and_blocks_get_a_direction():
    html = mime.sanitize_body(
        '<p onclick="x()">Hi <script>alert(1)</script><a href="javascript:alert(1)">link</a></p>'
        '<img src="x" onerror="alert(1)"><style>p{}</style><iframe src="https://evil"></iframe>'
        f'<div dir="rtl">{ARABIC}</div>'
    )
    assert "script" not in html and "onclick" not in html and "onerror" not in html and "javascript" not in html
    assert "iframe" not in html and "style" not in html
    assert '<p dir="auto">' in html and f'<div dir="rtl">{ARABIC}</div>' in html


def test_reply_and_forward_prefixes_are_added_once():
    assert mime.reply_subject("Offer") == "Re: Offer"
    assert mime.reply_subject("RE: Offer") == "RE: Offer"
    assert mime.reply_subject("Re[2]: Offer") == "Re[2]: Offer"
    assert mime.forward_subject("Offer") == "Fwd: Offer"
    assert mime.forward_subject("Fwd: Offer") == "Fwd: Offer"


def test_references_keep_the_first_and_the_last_ids():
    parent_refs = " ".join(f"<id{i}@x>" for i in range(30))
    refs = mime.references_for(parent_refs, "<parent@x>")
    assert len(refs) == mime.MAX_REFERENCES
    assert refs[0] == "id0@x" and refs[-1] == "parent@x" and refs[-2] == "id29@x"


# --- Real servers ----------------------------------------------------------------------------------------


def test_sent_message_arrives_byte_for_byte_and_is_filed_once(alice, dovecot, mail_user, smtp_server, celery_eager):
    account = make_account(alice, mail_user, dovecot, smtp_server)
    outgoing = services.create_draft(user=alice)
    image = services.add_attachment(
        outgoing=outgoing, upload=SimpleUploadedFile("logo.png", PNG, content_type="image/png"), inline=True
    )
    services.add_attachment(
        outgoing=outgoing,
        upload=SimpleUploadedFile("Offer 2026.pdf", b"%PDF-1.4 offer", content_type="application/pdf"),
    )
    body = f'<p><b>Bold offer</b></p><p><img src="cid:{image.content_id}"></p><p>{ARABIC}</p>'
    outgoing = services.save_draft(
        outgoing=outgoing,
        to="Bob Customer <bob@customer.example>",
        cc="carol@customer.example",
        bcc="boss@company.test",
        subject="Offer for 2026",
        body_html=body,
    )
    sent = send_now(outgoing)

    assert sent.state == OutgoingMessage.State.SENT, sent.error_message
    [received] = received_by(smtp_server, mail_user)
    assert received.data == bytes(sent.mime)  # the exact bytes fixed when queued
    assert received.mail_from == mail_user.address
    assert sorted(received.rcpt_tos) == ["bob@customer.example", "boss@company.test", "carol@customer.example"]
    parsed = email.message_from_bytes(received.data, policy=email.policy.default)
    assert parsed["Message-ID"] == f"<{sent.message_id}>"
    assert parsed["Subject"] == "Offer for 2026" and parsed["Bcc"] is None
    assert parsed["To"] == "Bob Customer <bob@customer.example>" and parsed["Cc"] == "carol@customer.example"
    assert parsed["Thread-Index"] and parsed["Thread-Topic"] == "Offer for 2026"
    tree = [part.get_content_type() for part in parsed.walk()]
    assert tree == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "multipart/related",
        "text/html",
        "image/png",
        "application/pdf",
    ]
    html_part = parsed.get_body(("html",))
    html = html_part.get_content()
    assert "<b>Bold offer</b>" in html and f'<p dir="auto">{ARABIC}</p>' in html
    assert f'src="cid:{image.content_id}"' in html
    png = next(part for part in parsed.walk() if part.get_content_type() == "image/png")
    assert png["Content-ID"] == f"<{image.content_id}>" and png.get_content() == PNG
    pdf = next(part for part in parsed.walk() if part.get_content_type() == "application/pdf")
    assert pdf.get_filename() == "Offer 2026.pdf" and pdf.get_content() == b"%PDF-1.4 offer"
    assert ARABIC in parsed.get_body(("plain",)).get_content()

    # One Sent copy on a server that does not file sent mail itself.
    assert sent.sent_copy == OutgoingMessage.SentCopy.APPENDED
    assert len(dovecot.uids(mail_user, "Sent")) == 1
    # In the CRM at once: the Sent list, with the same identity the next sync finds.
    stored = sent.sent_message
    assert stored.direction == EmailMessage.Direction.SENT and stored.mailbox == "sent"
    assert stored.message_id == sent.message_id
    engine.sync_account(account.pk)
    assert EmailMessage.objects.filter(account=account, message_id=sent.message_id).count() == 1
    assert stored.locations.filter(folder__name="Sent").count() == 1
    # Sending again does nothing more (a repeated task).
    assert delivery.deliver(sent.pk) == OutgoingMessage.State.SENT
    assert len(received_by(smtp_server, mail_user)) == 1 and len(dovecot.uids(mail_user, "Sent")) == 1


def test_provider_that_files_sent_mail_gets_no_second_copy(alice, dovecot, mail_user, smtp_hooks, celery_eager):
    account = make_account(alice, mail_user, dovecot, smtp_hooks, provider="gmail")
    smtp_hooks.on_data = lambda received: dovecot.append(mail_user, received.data, "Sent")  # as Gmail does
    sent = send_now(compose(alice))
    assert sent.state == OutgoingMessage.State.SENT
    assert sent.sent_copy == OutgoingMessage.SentCopy.PROVIDER
    assert len(dovecot.uids(mail_user, "Sent")) == 1
    engine.sync_account(account.pk)
    assert EmailMessage.objects.filter(account=account, message_id=sent.message_id).count() == 1


def test_reply_lands_in_the_same_thread_with_its_links_and_visibility(
    alice, bob, charlie, dovecot, mail_user, smtp_server, celery_eager
):
    account = make_account(alice, mail_user, dovecot, smtp_server)
    original = make_message(
        "Pricing question", sender="Bob Customer <bob@customer.example>", to=mail_user.address,
        message_id="<q1@customer.example>", body="What does it cost?\n",
    )  # fmt: skip
    result = ingest_raw(account, [original])
    source = EmailMessage.objects.get(pk=result.message_ids[0])
    thread = source.thread
    deal = DealFactory(owner=alice, visibility="team")  # the Sales team sees it, charlie (Support) does not
    ThreadLink.objects.create(thread=thread, deal=deal, state=ThreadLink.State.LINKED, rule="manual")
    EmailThread.objects.filter(pk=thread.pk).update(visibility=EmailThread.Visibility.SHARED)

    draft = services.create_draft(user=alice, kind=OutgoingMessage.Kind.REPLY, source=source)
    assert draft.subject == "Re: Pricing question" and draft.to_addresses == "Bob Customer <bob@customer.example>"
    sent = send_now(compose(alice, to=None, subject=None, body="<p>It costs 10.</p>", kind="reply", source=source))
    assert sent.state == OutgoingMessage.State.SENT
    parsed = email.message_from_bytes(received_by(smtp_server, mail_user)[-1].data, policy=email.policy.default)
    assert parsed["In-Reply-To"] == "<q1@customer.example>" and parsed["References"] == "<q1@customer.example>"
    assert parsed["Subject"] == "Re: Pricing question"
    assert "What does it cost?" in parsed.get_body(("plain",)).get_content()  # the quote
    assert sent.sent_message.thread_id == thread.pk
    assert EmailThread.objects.get(pk=thread.pk).visibility == EmailThread.Visibility.SHARED
    assert ThreadLink.objects.filter(thread=thread, deal=deal, state=ThreadLink.State.LINKED).exists()
    # Thread rules: the teammate sees the shared reply; the outsider does not; the draft is alice's alone.
    assert access.visible_messages(bob).filter(pk=sent.sent_message_id).exists()
    assert not access.visible_messages(charlie).filter(pk=sent.sent_message_id).exists()


def test_a_new_message_from_a_deal_is_linked_to_it(alice, dovecot, mail_user, smtp_server, celery_eager):
    make_account(alice, mail_user, dovecot, smtp_server)
    person = PersonFactory(owner=alice, first_name="Dora", last_name="Buyer")
    PersonEmailFactory(person=person, email="dora@buyer.example")
    deal = DealFactory(owner=alice, person=person)
    draft = services.create_draft(user=alice, record=deal)
    assert draft.to_addresses == "Dora Buyer <dora@buyer.example>"
    sent = send_now(compose(alice, to=None, record=deal))
    assert sent.state == OutgoingMessage.State.SENT
    assert ThreadLink.objects.filter(thread=sent.sent_message.thread, deal=deal, state=ThreadLink.State.LINKED).exists()


def test_forward_carries_the_attachments(alice, dovecot, mail_user, smtp_server, celery_eager):
    account = make_account(alice, mail_user, dovecot, smtp_server)
    raw = (
        b"From: ann@example.org\r\nTo: " + mail_user.address.encode() + b"\r\nSubject: Contract\r\n"
        b"Message-ID: <c1@example.org>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n--b\r\nContent-Type: application/pdf\r\n"
        b"Content-Disposition: attachment; filename=contract.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"JVBERi1jb250cmFjdA==\r\n--b--\r\n"
    )
    source = EmailMessage.objects.get(pk=ingest_raw(account, [raw]).message_ids[0])
    sent = send_now(compose(alice, subject=None, kind="forward", source=source))
    parsed = email.message_from_bytes(received_by(smtp_server, mail_user)[-1].data, policy=email.policy.default)
    assert parsed["Subject"] == "Fwd: Contract" and parsed["In-Reply-To"] is None
    [pdf] = [part for part in parsed.iter_attachments()]
    assert pdf.get_filename() == "contract.pdf" and pdf.get_content() == b"%PDF-contract"
    assert sent.state == OutgoingMessage.State.SENT


def test_xoauth2_account_sends_and_files_its_copy(alice, dovecot, mail_user, smtp_server, celery_eager):
    from mailsync.protocols.oauth import OAuthTokens

    account = make_account(alice, mail_user, dovecot, smtp_server, auth_kind="oauth2")
    account.set_secret(OAuthTokens(provider="google", access_token=mail_user.access_token).to_secret())
    account.save()
    sent = send_now(compose(alice))
    assert sent.state == OutgoingMessage.State.SENT, sent.error_message
    assert len(received_by(smtp_server, mail_user)) == 1
    assert sent.sent_copy == OutgoingMessage.SentCopy.APPENDED and len(dovecot.uids(mail_user, "Sent")) == 1


def test_sent_copy_waits_for_the_imap_server_and_the_sweep_files_it_once(
    alice, dovecot, mail_user, smtp_server, closed_port, celery_eager
):
    account = make_account(alice, mail_user, dovecot, smtp_server, imap_port=closed_port)
    sent = send_now(compose(alice))
    assert sent.state == OutgoingMessage.State.SENT and sent.sent_message_id  # delivered, in the CRM
    assert sent.sent_copy == OutgoingMessage.SentCopy.PENDING
    assert sent.pk in delivery.due_ids()
    EmailAccount.objects.filter(pk=account.pk).update(imap_port=dovecot.imaps_port)
    assert tasks.send_due_mail() == 1
    sent.refresh_from_db()
    assert sent.sent_copy == OutgoingMessage.SentCopy.APPENDED and sent.pk not in delivery.due_ids()
    assert len(dovecot.uids(mail_user, "Sent")) == 1 and len(received_by(smtp_server, mail_user)) == 1


# --- Failures: a clear message, nothing lost -------------------------------------------------------------


def test_smtp_auth_failure_fails_with_the_reason_and_retry_sends(alice, dovecot, mail_user, smtp_server, celery_eager):
    account = make_account(alice, mail_user, dovecot, smtp_server)
    account.set_secret("wrong-password-1")
    account.save()
    failed = send_now(compose(alice))
    assert failed.state == OutgoingMessage.State.FAILED and failed.error_code == "smtp_auth_refused"
    assert "refused the login" in failed.error_message and failed.mime  # the message is kept
    assert "wrong-password-1" not in failed.error_detail
    assert received_by(smtp_server, mail_user) == []
    account.refresh_from_db()
    assert account.state == EmailAccount.State.NEEDS_REAUTH

    account.set_secret(mail_user.password)
    account.state = EmailAccount.State.SYNCING
    account.save()
    services.retry(outgoing=failed)
    delivery.deliver(failed.pk)
    failed.refresh_from_db()
    assert failed.state == OutgoingMessage.State.SENT
    [received] = received_by(smtp_server, mail_user)
    assert received.data == bytes(failed.mime)


def test_server_down_fails_with_the_reason(alice, dovecot, mail_user, smtp_server, closed_port, celery_eager):
    make_account(alice, mail_user, dovecot, smtp_server, smtp_port=closed_port)
    failed = send_now(compose(alice))
    assert failed.state == OutgoingMessage.State.FAILED
    assert failed.error_code in {"unreachable", "connection_refused"} and failed.error_message


def test_refused_recipients_are_reported_one_by_one(alice, dovecot, mail_user, smtp_hooks, celery_eager):
    make_account(alice, mail_user, dovecot, smtp_hooks)
    smtp_hooks.refused_recipients = {"gone@customer.example"}
    sent = send_now(compose(alice, to="bob@customer.example, gone@customer.example"))
    assert sent.state == OutgoingMessage.State.SENT
    assert [(r["address"], r["code"]) for r in sent.refused_recipients] == [("gone@customer.example", 550)]
    assert received_by(smtp_hooks, mail_user)[0].rcpt_tos == ["bob@customer.example"]

    smtp_hooks.refused_recipients = {"gone@customer.example", "also-gone@customer.example"}
    failed = send_now(compose(alice, to="gone@customer.example, also-gone@customer.example"))
    assert failed.state == OutgoingMessage.State.FAILED and failed.error_code == "recipients_refused"
    assert {r["address"] for r in failed.refused_recipients} == {"gone@customer.example", "also-gone@customer.example"}
    assert len(received_by(smtp_hooks, mail_user)) == 1


def test_oversize_is_refused_before_sending(alice, dovecot, mail_user, smtp_server, monkeypatch, celery_eager):
    account = make_account(alice, mail_user, dovecot, smtp_server, provider="gmail")
    outgoing = compose(alice)
    big = SimpleUploadedFile("video.mp4", b"0" * (25 * 1024 * 1024 + 1), content_type="video/mp4")
    with pytest.raises(ValidationError, match="Gmail accepts up to 25 MB"):
        services.add_attachment(outgoing=outgoing, upload=big)
    # A custom server states its own limit (SIZE): checked before MAIL FROM.
    EmailAccount.objects.filter(pk=account.pk).update(provider="custom")
    monkeypatch.setattr(smtp_protocol, "size_limit", lambda client: 100)
    failed = send_now(compose(alice))
    assert failed.state == OutgoingMessage.State.FAILED and failed.error_code == "message_too_large"
    assert "accepts up to" in failed.error_message
    assert received_by(smtp_server, mail_user) == []


def test_gmail_allows_100_recipients(alice, dovecot, mail_user, smtp_server):
    make_account(alice, mail_user, dovecot, smtp_server, provider="gmail")
    many = ", ".join(f"r{i}@customer.example" for i in range(101))
    with pytest.raises(ValidationError, match="at most 100 recipients"):
        services.queue_message(outgoing=compose(alice, to=many))
    assert OutgoingMessage.objects.get().state == OutgoingMessage.State.DRAFT


def test_bad_addresses_keep_the_draft(alice, dovecot, mail_user, smtp_server):
    make_account(alice, mail_user, dovecot, smtp_server)
    draft = compose(alice, to="bob@customer.example, bad|name@customer.example")
    with pytest.raises(ValidationError) as caught:
        services.queue_message(outgoing=draft)
    assert "“|”" in caught.value.message_dict["to"][0]
    draft.refresh_from_db()
    assert draft.state == OutgoingMessage.State.DRAFT and "bad|name" in draft.to_addresses


def test_undo_within_the_window_and_not_after(alice, dovecot, mail_user, smtp_server, settings, celery_eager):
    settings.MAILSYNC_UNDO_SEND_SECONDS = 10
    make_account(alice, mail_user, dovecot, smtp_server)
    queued = services.queue_message(outgoing=compose(alice))
    assert queued.state == OutgoingMessage.State.QUEUED and queued.send_at > timezone.now()
    assert delivery.deliver(queued.pk) == OutgoingMessage.State.QUEUED  # not due yet: nothing sent
    draft = services.undo_send(outgoing=queued)
    assert draft.state == OutgoingMessage.State.DRAFT and not draft.message_id
    sent = send_now(draft)
    assert sent.state == OutgoingMessage.State.SENT
    with pytest.raises(ValidationError, match="Too late"):
        services.undo_send(outgoing=sent)
    assert len(received_by(smtp_server, mail_user)) == 1


def test_send_later_waits_for_its_time(alice, dovecot, mail_user, smtp_server, celery_eager):
    make_account(alice, mail_user, dovecot, smtp_server)
    later = timezone.now() + timedelta(hours=2)
    queued = services.queue_message(outgoing=compose(alice), send_at=later)
    assert queued.send_later and queued.send_at == later
    assert queued.pk not in delivery.due_ids()
    OutgoingMessage.objects.filter(pk=queued.pk).update(send_at=timezone.now())
    assert queued.pk in delivery.due_ids()
    delivery.deliver(queued.pk)
    assert OutgoingMessage.objects.get(pk=queued.pk).state == OutgoingMessage.State.SENT


def test_only_the_owner_reaches_an_outgoing_message(alice, bob, charlie, admin_user, dovecot, mail_user, smtp_server):
    make_account(alice, mail_user, dovecot, smtp_server)
    draft = compose(alice)
    for other in (bob, charlie, admin_user):
        with pytest.raises(OutgoingMessage.DoesNotExist):
            selectors.get_outgoing_for_user(other, draft.pk)
        assert not selectors.drafts_for(other).exists()
        assert not selectors.sendable_accounts(other).exists()
    with pytest.raises(ValidationError, match="Connect a mail account"):
        services.create_draft(user=bob)
    with pytest.raises(ValidationError, match="your own mail accounts"):
        services.save_draft(
            outgoing=draft, account=EmailAccount(pk=999, user=bob), to="", cc="", bcc="", subject="", body_html=""
        )


# --- A worker killed between DATA and the state update ----------------------------------------------------


def _worker_env() -> dict:
    env = dict(os.environ)
    db = connection.settings_dict
    env["DATABASE_URL"] = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    env["MAILSYNC_ALLOW_PRIVATE_HOSTS"] = "1"
    return env


def _run_worker(outgoing_id: int) -> subprocess.Popen:
    code = (
        f"import django; django.setup(); from mailsync.sending import delivery; print(delivery.deliver({outgoing_id}))"
    )
    root = Path(__file__).resolve().parents[1]
    env = _worker_env()
    env["DJANGO_SETTINGS_MODULE"] = "crm.settings"
    return subprocess.Popen([sys.executable, "-c", code], cwd=root, env=env, start_new_session=True)


def _deliver_after_restart(outgoing_id: int) -> str:
    # PostgreSQL may take a moment to see the dead worker's connection go (and free its lock).
    for _ in range(80):
        state = delivery.deliver(outgoing_id)
        if state != "busy":
            return state
        time.sleep(0.1)
    raise AssertionError("the delivery lock of the killed worker was never freed")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("files_sent_mail", [True, False], ids=["provider-files-sent", "custom-server"])
def test_worker_killed_between_data_and_state_update_never_sends_twice(
    alice, dovecot, mail_user, smtp_hooks, files_sent_mail, celery_eager
):
    if connection.vendor != "postgresql":
        pytest.skip("the kill test runs against PostgreSQL")
    make_account(alice, mail_user, dovecot, smtp_hooks, provider="gmail" if files_sent_mail else "custom")
    queued = services.queue_message(outgoing=compose(alice))
    OutgoingMessage.objects.filter(pk=queued.pk).update(send_at=timezone.now())
    worker: dict = {}

    def kill_worker(received):
        if files_sent_mail:
            dovecot.append(mail_user, received.data, "Sent")
        os.killpg(worker["process"].pid, signal.SIGKILL)  # before the client hears "250"

    smtp_hooks.on_data = kill_worker
    worker["process"] = _run_worker(queued.pk)
    assert worker["process"].wait(timeout=60) == -signal.SIGKILL
    smtp_hooks.on_data = None
    left = OutgoingMessage.objects.get(pk=queued.pk)
    assert left.state == OutgoingMessage.State.SENDING and left.delivered_at is None
    assert len(received_by(smtp_hooks, mail_user)) == 1

    state = _deliver_after_restart(queued.pk)
    outgoing = OutgoingMessage.objects.get(pk=queued.pk)
    assert len(received_by(smtp_hooks, mail_user)) == 1  # never twice
    if files_sent_mail:
        # Its Message-ID is in Sent: it left; recorded as sent, in the CRM at once, one Sent copy.
        assert state == OutgoingMessage.State.SENT
        assert outgoing.sent_copy == OutgoingMessage.SentCopy.FOUND and outgoing.sent_message_id
        assert len(dovecot.uids(mail_user, "Sent")) == 1
    else:
        # Nobody can know whether the server kept it: not re-sent by itself; the user decides (Retry).
        assert state == OutgoingMessage.State.FAILED and outgoing.error_code == "delivery_uncertain"
        assert outgoing.mime and "Retry" in outgoing.error_fix
        assert dovecot.uids(mail_user, "Sent") == []


@pytest.mark.django_db(transaction=True)
def test_worker_killed_before_data_sends_once_after_restart(alice, dovecot, mail_user, smtp_hooks, celery_eager):
    """Killed after the claim, before anything reached the server, at a provider that files sent mail:
    the Sent folder has no copy, so the restarted worker sends it (once)."""
    if connection.vendor != "postgresql":
        pytest.skip("the kill test runs against PostgreSQL")
    make_account(alice, mail_user, dovecot, smtp_hooks, provider="gmail")
    smtp_hooks.on_data = lambda received: dovecot.append(mail_user, received.data, "Sent")
    queued = services.queue_message(outgoing=compose(alice))
    OutgoingMessage.objects.filter(pk=queued.pk).update(
        send_at=timezone.now(), state=OutgoingMessage.State.SENDING, sending_started_at=timezone.now()
    )  # as a worker leaves it when killed right after its claim
    # Just left: the provider may still be filing it in Sent, so the restart waits rather than send.
    assert _deliver_after_restart(queued.pk) == OutgoingMessage.State.SENDING
    assert received_by(smtp_hooks, mail_user) == []
    OutgoingMessage.objects.filter(pk=queued.pk).update(sending_started_at=timezone.now() - timedelta(minutes=5))
    assert queued.pk in delivery.due_ids()
    assert _deliver_after_restart(queued.pk) == OutgoingMessage.State.SENT
    assert len(received_by(smtp_hooks, mail_user)) == 1
    assert len(dovecot.uids(mail_user, "Sent")) == 1
