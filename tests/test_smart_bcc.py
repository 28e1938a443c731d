"""Smart BCC (SPEC B1, B2): the personal address, who may file, confirmation links, and filing through the
same pipeline as synced mail. The inbound paths have their own modules (webhooks, SMTP receiver)."""

import re
import time
from unittest import mock

import pytest
from django.core import mail
from django.test import TestCase
from django.urls import reverse

from mailsync.inbound import filing, selectors, services
from mailsync.inbound.authentication import FAIL, PASS, AuthResults
from mailsync.inbound.filing import InboundMail, file_message
from mailsync.models import (
    EmailAccount,
    EmailMessage,
    EmailThread,
    Mailbox,
    MailSettings,
    SmartBccAddress,
    SmartBccDelivery,
    SmartBccSender,
    ThreadLink,
)
from tests.factories import PersonEmailFactory, PersonFactory
from tests.mail_factories import AccountAddressFactory, EmailAccountFactory
from tests.smart_bcc_support import CUSTOMER, DOMAIN, sent_copy

pytestmark = pytest.mark.django_db
Reason = SmartBccDelivery.Reason


def deliver(recipient: str, raw: bytes, **extra) -> filing.FilingOutcome:
    """File as an inbound path does, with the follow-up work after the commit (linking) run too."""
    with TestCase.captureOnCommitCallbacks(execute=True):
        return file_message(InboundMail(raw=raw, recipient=recipient, channel="test", **extra))


# --- the personal address -----------------------------------------------------------------------------


def test_each_user_gets_a_personal_address_on_the_smart_bcc_domain(alice, bob, smart_bcc_settings):
    first = services.ensure_address(user=alice)
    assert services.ensure_address(user=alice) == first
    assert re.fullmatch(r"u-[a-z2-9]{10}", first.local_part)
    assert selectors.full_address(first) == f"{first.local_part}@{DOMAIN}"
    assert services.ensure_address(user=bob).local_part != first.local_part


def test_new_address_retires_the_old_one(alice, alice_bcc):
    old = alice_bcc
    new = selectors.full_address(services.replace_address(user=alice))
    assert new != old
    assert SmartBccAddress.objects.filter(user=alice, retired_at__isnull=True).count() == 1

    refused = deliver(old, sent_copy())
    assert refused.status == "not_filed" and refused.reason == Reason.RETIRED_ADDRESS
    assert deliver(new, sent_copy()).filed


def test_recipient_lookup_is_exact_about_the_domain_and_ignores_a_plus_tag(alice, alice_bcc):
    local = alice_bcc.split("@")[0]
    assert selectors.address_for_recipient(alice_bcc.upper()).user == alice
    assert selectors.address_for_recipient(f"{local}+deal-42@{DOMAIN}").user == alice
    assert selectors.address_for_recipient(f"{local}@other.test") is None
    assert selectors.address_for_recipient(f"u-nosuchaddr@{DOMAIN}") is None
    assert deliver(f"u-nosuchaddr@{DOMAIN}", sent_copy()).status == "unknown_recipient"
    assert not SmartBccDelivery.objects.exists()


# --- filing: the same pipeline as synced mail --------------------------------------------------------------


def test_mail_from_the_login_address_is_filed_threaded_linked_and_marked(alice, alice_bcc):
    MailSettings.objects.create(user=alice, default_visibility=EmailThread.Visibility.SHARED)
    carol = PersonFactory(owner=alice, first_name="Carol")
    PersonEmailFactory(person=carol, email=CUSTOMER)

    outcome = deliver(alice_bcc, sent_copy())

    assert outcome.filed
    message = EmailMessage.objects.get(pk=outcome.message_id)
    assert message.direction == EmailMessage.Direction.SENT
    assert message.mailbox == Mailbox.SENT
    assert message.is_read
    assert message.thread.owner == alice
    assert message.thread.visibility == EmailThread.Visibility.SHARED  # the owner's default (P1)
    assert [a.filename for a in message.attachments.all()] == ["offer.pdf"]
    assert message.attachments.get().file.read() == b"%PDF-1.4 offer\n"
    assert ThreadLink.objects.filter(thread=message.thread, person=carol, state=ThreadLink.State.LINKED).exists()
    # alice has no connected account: the mail lives in a mailbox-less row that nothing syncs
    assert message.account.provider == filing.SMART_BCC_PROVIDER
    assert message.account.state == EmailAccount.State.REMOVED
    delivery = SmartBccDelivery.objects.get(message=message)
    assert delivery.status == SmartBccDelivery.Status.FILED and delivery.channel == "test"


def test_a_reply_filed_later_joins_the_thread_of_the_synced_conversation(alice, alice_bcc):
    account = EmailAccountFactory(user=alice, email_address="alice@company.test")
    first = deliver(alice_bcc, sent_copy(message_id="<offer-1@company.test>"))
    reply = sent_copy(subject="Re: Offer for 2027", message_id="<offer-2@company.test>", attachment=None)
    reply = reply.replace(b"Subject:", b"In-Reply-To: <offer-1@company.test>\r\nSubject:", 1)
    second = deliver(alice_bcc, reply)
    one, two = EmailMessage.objects.get(pk=first.message_id), EmailMessage.objects.get(pk=second.message_id)
    assert one.thread_id == two.thread_id
    assert one.account == two.account == account  # the connected account of the sender's address


def test_the_same_delivery_twice_files_one_message(alice, alice_bcc):
    raw = sent_copy()
    first, again = deliver(alice_bcc, raw), deliver(alice_bcc, raw)
    assert first.message_id == again.message_id
    assert EmailMessage.objects.filter(account__user=alice).count() == 1
    assert SmartBccDelivery.objects.filter(user=alice).count() == 1


def test_a_message_already_synced_into_another_account_is_not_stored_twice(alice, alice_bcc):
    from mailsync.sync.ingest import ingest_raw

    other = EmailAccountFactory(user=alice, email_address="alice@private.test")
    raw = sent_copy(message_id="<shared@company.test>")
    synced = ingest_raw(other, [raw]).message_ids[0]
    outcome = deliver(alice_bcc, raw)
    assert outcome.message_id == synced
    assert EmailMessage.objects.filter(account__user=alice, message_id="shared@company.test").count() == 1
    assert SmartBccDelivery.objects.get(user=alice).message_id == synced


def test_mail_from_a_connected_account_or_its_alias_is_accepted(alice, alice_bcc):
    account = EmailAccountFactory(user=alice, email_address="alice@sales.test")
    AccountAddressFactory(account=account, address="deals@sales.test")
    for sender in ("alice@sales.test", "Deals <deals@sales.test>"):
        outcome = deliver(alice_bcc, sent_copy(sender=sender))
        assert outcome.filed
        assert EmailMessage.objects.get(pk=outcome.message_id).account == account


# --- who may file -------------------------------------------------------------------------------------------


def test_mail_from_someone_else_is_listed_not_filed(alice, bob, alice_bcc, client):
    outcome = deliver(alice_bcc, sent_copy(sender="Mallory <mallory@evil.test>", subject="Please pay this"))
    assert outcome.status == "not_filed" and outcome.reason == Reason.UNKNOWN_SENDER
    assert not EmailMessage.objects.exists()
    # a teammate's own address is "someone else" too
    assert deliver(alice_bcc, sent_copy(sender=bob.email)).reason == Reason.UNKNOWN_SENDER

    client.force_login(alice)
    page = client.get(reverse("mailsync:smart_bcc")).content.decode()
    assert "Please pay this" in page and "mallory@evil.test" in page
    assert "Sent from an address that is not one of yours" in page


def test_an_unconfirmed_alternate_is_not_filed_until_confirmed(alice, alice_bcc):
    sender = services.add_alternate_sender(user=alice, address="Alice.Home@Example.net")
    assert sender.address == "alice.home@example.net"
    refused = deliver(alice_bcc, sent_copy(sender="alice.home@example.net"))
    assert refused.reason == Reason.UNCONFIRMED_SENDER
    assert not EmailMessage.objects.exists()

    services.confirm_sender(token=services.confirmation_token(sender))
    assert deliver(alice_bcc, sent_copy(sender="alice.home@example.net")).filed


def test_a_forged_from_failing_spf_and_dkim_is_not_filed(alice, alice_bcc):
    raw = sent_copy()  # From: alice@company.test, her login address
    forged = deliver(alice_bcc, raw, auth=AuthResults(spf=FAIL, dkim=FAIL))
    assert forged.reason == Reason.FAILED_AUTHENTICATION
    assert SmartBccDelivery.objects.get(pk=forged.delivery_id).spf == FAIL
    # one passing check is enough, and an unreported one never refuses
    assert deliver(alice_bcc, raw, auth=AuthResults(spf=FAIL, dkim=PASS)).filed
    assert deliver(alice_bcc, sent_copy(), auth=AuthResults(spf=FAIL)).filed


def test_the_not_filed_list_is_bounded(alice, alice_bcc, monkeypatch):
    monkeypatch.setattr(services, "NOT_FILED_KEPT", 3)
    for number in range(5):
        deliver(alice_bcc, sent_copy(sender="spam@evil.test", subject=f"Spam {number}"))
    kept = SmartBccDelivery.objects.filter(user=alice, status=SmartBccDelivery.Status.NOT_FILED)
    assert sorted(kept.values_list("subject", flat=True)) == ["Spam 2", "Spam 3", "Spam 4"]


# --- alternate senders and their confirmation link ------------------------------------------------------


def _link_in(message) -> str:
    return re.search(r"https?://\S+/smart-bcc/confirm/\S+/", message.body).group(0)


def test_adding_an_alternate_emails_a_signed_link_that_confirms_only_on_post(alice, alice_bcc, client):
    client.force_login(alice)
    response = client.post(reverse("mailsync:smart_bcc_add_sender"), {"address": "alice@home.example"}, follow=True)
    assert b"We sent a confirmation link to alice@home.example" in response.content
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["alice@home.example"]
    link = _link_in(mail.outbox[0])
    path = link.split("testserver", 1)[1]

    anonymous = client.__class__()
    shown = anonymous.get(path)  # a link scanner fetching it confirms nothing
    assert shown.status_code == 200 and b"Confirm alice@home.example" in shown.content
    assert SmartBccSender.objects.get(address="alice@home.example").confirmed_at is None

    confirmed = anonymous.post(path)
    assert confirmed.status_code == 200 and b"is confirmed" in confirmed.content
    assert SmartBccSender.objects.get(address="alice@home.example").confirmed_at is not None
    assert "alice@home.example" in selectors.sender_addresses(alice).accepted


def test_an_expired_confirmation_link_confirms_nothing(alice, alice_bcc, client, settings):
    settings.MAILSYNC_SMART_BCC_CONFIRM_HOURS = 1
    sender = services.add_alternate_sender(user=alice, address="alice@home.example")
    with mock.patch("django.core.signing.time.time", return_value=time.time() - 2 * 3600):
        token = services.confirmation_token(sender)
    path = reverse("mailsync:smart_bcc_confirm", args=[token])
    for response in (client.get(path), client.post(path)):
        assert response.status_code == 400
        assert b"This confirmation link has expired" in response.content
    sender.refresh_from_db()
    assert sender.confirmed_at is None
    assert deliver(alice_bcc, sent_copy(sender="alice@home.example")).reason == Reason.UNCONFIRMED_SENDER


def test_a_tampered_or_stale_link_confirms_nothing(alice, alice_bcc, client):
    sender = services.add_alternate_sender(user=alice, address="alice@home.example")
    token = services.confirmation_token(sender)
    bad = client.post(reverse("mailsync:smart_bcc_confirm", args=[token[:-2] + "xx"]))
    assert bad.status_code == 400 and b"not valid" in bad.content
    # removed (and added again) since the link was sent: the old link names the old row
    services.remove_alternate_sender(user=alice, sender=sender)
    services.add_alternate_sender(user=alice, address="alice@home.example")
    stale = client.post(reverse("mailsync:smart_bcc_confirm", args=[token]))
    assert stale.status_code == 400 and b"was removed" in stale.content
    assert not SmartBccSender.objects.filter(confirmed_at__isnull=False).exists()


def test_alternate_address_rules(alice, alice_bcc):
    EmailAccountFactory(user=alice, email_address="alice@sales.test")
    for address, error in (
        ("not an address", "valid email address"),
        ("ALICE@company.test", "login address"),
        ("alice@sales.test", "connected accounts"),
        (alice_bcc, "cannot send"),
    ):
        with pytest.raises(services.ValidationError, match=error):
            services.add_alternate_sender(user=alice, address=address)


def test_resending_too_soon_is_refused_and_a_failing_backend_is_reported(alice, alice_bcc, client, settings):
    client.force_login(alice)
    client.post(reverse("mailsync:smart_bcc_add_sender"), {"address": "alice@home.example"})
    sender = SmartBccSender.objects.get(address="alice@home.example")
    again = client.post(reverse("mailsync:smart_bcc_resend", args=[sender.pk]), follow=True)
    assert b"sent a moment ago" in again.content
    assert len(mail.outbox) == 1

    settings.EMAIL_BACKEND = "tests.test_smart_bcc.BrokenBackend"
    page = client.post(reverse("mailsync:smart_bcc_add_sender"), {"address": "alice@work.example"}, follow=True)
    assert b"could not be sent (ConnectionRefusedError)" in page.content


class BrokenBackend:
    def __init__(self, *args, **kwargs):
        pass

    def send_messages(self, messages):
        raise ConnectionRefusedError("smtp down")


# --- the settings page -----------------------------------------------------------------------------


def test_settings_page_shows_the_address_with_copy_and_new_address(alice, alice_bcc, client):
    client.force_login(alice)
    page = client.get(reverse("mailsync:smart_bcc")).content.decode()
    assert f'value="{alice_bcc}"' in page
    assert "data-copy-target" in page and "js/smart-bcc.js" in page
    assert reverse("mailsync:smart_bcc_new_address") in page
    assert "alice@company.test" in page  # the login address, always accepted
    assert "<script>" not in page and " onclick=" not in page  # the CSP allows no inline code

    before = alice_bcc
    client.post(reverse("mailsync:smart_bcc_new_address"))
    assert before not in client.get(reverse("mailsync:smart_bcc")).content.decode()


def test_settings_page_without_a_domain_says_it_is_not_set_up(alice, client, settings):
    settings.MAILSYNC_SMART_BCC_DOMAIN = ""
    client.force_login(alice)
    page = client.get(reverse("mailsync:smart_bcc")).content.decode()
    assert "Smart BCC is not set up on this server yet" in page
    assert not SmartBccAddress.objects.exists()


def test_views_refuse_wrong_methods_outsiders_and_anonymous_users(alice, charlie, alice_bcc, client):
    sender = services.add_alternate_sender(user=alice, address="alice@home.example")
    assert client.get(reverse("mailsync:smart_bcc")).status_code == 302  # login first
    client.force_login(charlie)
    assert client.get(reverse("mailsync:smart_bcc_new_address")).status_code == 405
    assert client.post(reverse("mailsync:smart_bcc_remove_sender", args=[sender.pk])).status_code == 404
    assert client.post(reverse("mailsync:smart_bcc_resend", args=[sender.pk])).status_code == 404
    assert SmartBccSender.objects.filter(pk=sender.pk).exists()
    # charlie's page shows nothing of alice's
    page = client.get(reverse("mailsync:smart_bcc")).content.decode()
    assert "alice@home.example" not in page and alice_bcc not in page


def test_thread_view_marks_mail_filed_via_smart_bcc(alice, alice_bcc, client):
    outcome = deliver(alice_bcc, sent_copy())
    thread = EmailMessage.objects.get(pk=outcome.message_id).thread
    client.force_login(alice)
    page = client.get(reverse("mailsync:thread_detail", args=[thread.pk])).content.decode()
    assert "via Smart BCC" in page


def test_a_different_message_reusing_a_message_id_is_not_taken_for_a_copy(alice, alice_bcc):
    from mailsync.sync.ingest import ingest_raw

    other = EmailAccountFactory(user=alice, email_address="alice@private.test")
    synced = ingest_raw(other, [sent_copy(message_id="<reused@company.test>", body="Another text.\n")])
    outcome = deliver(alice_bcc, sent_copy(message_id="<reused@company.test>"))
    assert outcome.filed and outcome.message_id != synced.message_ids[0]
