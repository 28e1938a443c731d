"""A message filed through Smart BCC and its copy in the sender's Sent folder (synced from the real test
Dovecot) are one message, whichever arrives first.

The two copies differ the way they do in real life: the BCC copy crossed the Internet (Received,
Authentication-Results and a DKIM-Signature on top), the Sent copy keeps the Bcc header the client wrote.
"""

import pytest
from django.test import TestCase

from mailsync.inbound.filing import InboundMail, file_message
from mailsync.models import EmailAccount, EmailMessage, MessageLocation, SmartBccDelivery
from mailsync.sync import engine
from tests.smart_bcc_support import sent_copy

pytestmark = [pytest.mark.dovecot, pytest.mark.django_db]


def copies(sender: str, smart_bcc: str, message_id: str) -> tuple[bytes, bytes]:
    original = sent_copy(sender=f"Alice Owner <{sender}>", message_id=message_id)
    head, _, body = original.partition(b"\r\n\r\n")
    sent_folder_copy = head + f"\r\nBcc: {smart_bcc}".encode() + b"\r\n\r\n" + body
    trace = (
        "Received: from mail.company.test (mail.company.test [192.0.2.10])\r\n"
        f"\tby mx.crm.test with ESMTPS id 4f1a2b for <{smart_bcc}>; Tue, 1 Dec 2026 10:00:00 +0000\r\n"
        "Authentication-Results: mx.crm.test; spf=pass smtp.mailfrom=company.test\r\n"
        "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=company.test; s=s1; h=from:to:subject; bh=x=; b=y=\r\n"
    ).encode()
    return trace + original, sent_folder_copy


@pytest.fixture
def alice_account(alice, mail_user, dovecot):
    account = EmailAccount(
        user=alice,
        email_address=mail_user.address,
        username=mail_user.username,
        imap_host=dovecot.host,
        imap_port=dovecot.imaps_port,
        imap_security="ssl",
        smtp_host=dovecot.host,
        trusted_ca_pem=dovecot.ca_pem,
        state=EmailAccount.State.INITIAL_SYNC,
    )
    account.set_secret(mail_user.password)
    account.save()
    return account


def file_bcc(raw: bytes, recipient: str):
    with TestCase.captureOnCommitCallbacks(execute=True):
        return file_message(InboundMail(raw=raw, recipient=recipient, channel="smtp"))


def sync_until_done(account):
    with TestCase.captureOnCommitCallbacks(execute=True):
        for _ in range(5):
            report = engine.sync_account(account.pk)
            assert report.error is None, report.error
            if not report.more_work:
                return report
    return report


def test_filed_first_then_synced_from_sent_is_one_message(alice_account, alice_bcc, mail_user, dovecot):
    bcc_copy, sent_folder_copy = copies(mail_user.address, alice_bcc, "<dedup-1@company.test>")
    outcome = file_bcc(bcc_copy, alice_bcc)
    assert outcome.filed

    dovecot.append(mail_user, sent_folder_copy, "Sent", flags=("\\Seen",))
    sync_until_done(alice_account)

    (message,) = EmailMessage.objects.filter(message_id="dedup-1@company.test")
    assert message.pk == outcome.message_id
    assert message.account == alice_account
    assert MessageLocation.objects.filter(message=message, folder__name="Sent").exists()
    assert SmartBccDelivery.objects.get(message=message).status == SmartBccDelivery.Status.FILED
    assert message.thread.message_count == 1


def test_synced_first_then_filed_is_one_message(alice_account, alice_bcc, mail_user, dovecot):
    bcc_copy, sent_folder_copy = copies(mail_user.address, alice_bcc, "<dedup-2@company.test>")
    dovecot.append(mail_user, sent_folder_copy, "Sent", flags=("\\Seen",))
    sync_until_done(alice_account)
    (synced,) = EmailMessage.objects.filter(message_id="dedup-2@company.test")

    outcome = file_bcc(bcc_copy, alice_bcc)
    assert outcome.filed and outcome.message_id == synced.pk
    assert EmailMessage.objects.filter(message_id="dedup-2@company.test").count() == 1
    # and a later sync neither duplicates nor deletes it
    sync_until_done(alice_account)
    assert EmailMessage.objects.filter(message_id="dedup-2@company.test", deleted_at__isnull=True).count() == 1


def test_a_filed_message_with_no_sent_copy_survives_syncs(alice_account, alice_bcc, mail_user, dovecot):
    bcc_copy, _ = copies(mail_user.address, alice_bcc, "<dedup-3@company.test>")
    outcome = file_bcc(bcc_copy, alice_bcc)
    for _ in range(2):
        sync_until_done(alice_account)
    message = EmailMessage.objects.get(pk=outcome.message_id)
    assert message.deleted_at is None and message.account == alice_account
