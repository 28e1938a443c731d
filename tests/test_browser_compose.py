"""The composer in real Chromium, sending through real servers (aiosmtpd STARTTLS + AUTH, Dovecot):
from a deal's "Email" action, bold text, an inline image, an attachment and an Arabic paragraph; the
message in Sent and on the deal's timeline; then a reply from the thread view into the same thread."""

from __future__ import annotations

import email
import email.policy

import pytest

from conftest import browser_login
from mailsync.models import OutgoingMessage
from tests.factories import DealFactory, PersonEmailFactory, PersonFactory
from tests.test_sending import ARABIC, PNG, make_account, received_by

pytestmark = [pytest.mark.browser, pytest.mark.smtp, pytest.mark.django_db(transaction=True)]


def test_compose_from_a_deal_then_reply_from_the_thread(
    page, alice, dovecot, mail_user, smtp_server, settings, celery_eager
):
    settings.MAILSYNC_UNDO_SEND_SECONDS = 0  # the task runs at once (Celery eager in tests)
    make_account(alice, mail_user, dovecot, smtp_server)
    person = PersonFactory(owner=alice, first_name="Dora", last_name="Buyer")
    PersonEmailFactory(person=person, email="dora@buyer.example")
    deal = DealFactory(owner=alice, person=person, title="Fleet renewal")
    browser_login(page, alice)

    page.goto(deal.get_absolute_url())
    page.click("[data-email-record]")
    page.wait_for_selector("[data-editor]:not([hidden])")
    assert page.input_value("#compose-to") == "Dora Buyer <dora@buyer.example>"
    page.fill("#compose-subject", "Renewal offer")
    editor = page.locator("[data-editor]")
    editor.click()
    page.click('[data-command="bold"]')
    page.keyboard.type("Bold terms")
    page.click('[data-command="bold"]')
    page.keyboard.press("Enter")
    page.keyboard.type("Plain line")
    page.keyboard.press("Enter")
    page.click('[data-command="rtl"]')
    page.keyboard.type(ARABIC)
    page.set_input_files("[data-image-input]", files=[{"name": "chart.png", "mimeType": "image/png", "buffer": PNG}])
    page.wait_for_selector("[data-editor] img")
    page.set_input_files(
        "[data-file-input]", files=[{"name": "offer.pdf", "mimeType": "application/pdf", "buffer": b"%PDF-1.4 offer"}]
    )
    page.wait_for_selector("[data-attachment-list] li a:has-text('offer.pdf')")
    assert page.get_attribute('[data-command="rtl"]', "aria-pressed") == "true"
    page.click("button[name=when][value=now]")
    page.wait_for_selector(".outgoing-status[data-state=sent]")

    [first] = received_by(smtp_server, mail_user)
    parsed = email.message_from_bytes(first.data, policy=email.policy.default)
    assert parsed["Subject"] == "Renewal offer" and first.rcpt_tos == ["dora@buyer.example"]
    html = parsed.get_body(("html",)).get_content()
    assert "<b>Bold terms</b>" in html and f'dir="rtl">{ARABIC}' in html
    image = next(part for part in parsed.walk() if part.get_content_type() == "image/png")
    assert f'src="cid:{image["Content-ID"].strip("<>")}"' in html and image.get_content() == PNG
    [pdf] = list(parsed.iter_attachments())
    assert pdf.get_filename() == "offer.pdf" and pdf.get_content() == b"%PDF-1.4 offer"
    assert len(dovecot.uids(mail_user, "Sent")) == 1

    # In Sent and on the deal at once.
    page.goto("/mail/sent/")
    page.wait_for_selector(".mail-list :text('Renewal offer')")
    page.goto(deal.get_absolute_url())
    page.wait_for_selector("#timeline :text('Renewal offer')")

    # Reply from the thread view: the same thread.
    sent = OutgoingMessage.objects.get(subject="Renewal offer")
    page.goto(f"/mail/threads/{sent.sent_message.thread_id}/")
    page.wait_for_selector('[data-reply-shortcut="r"]')
    page.keyboard.press("r")  # the shortcut presses Reply of the newest message
    page.wait_for_selector("[data-editor]:not([hidden])")
    assert page.input_value("#compose-subject") == "Re: Renewal offer"
    page.locator("[data-editor]").click()
    page.keyboard.type("Following up.")
    page.click("button[name=when][value=now]")
    page.wait_for_selector(".outgoing-status[data-state=sent]")
    second = received_by(smtp_server, mail_user)[1]
    reply = email.message_from_bytes(second.data, policy=email.policy.default)
    assert reply["In-Reply-To"] == parsed["Message-ID"] and reply["Subject"] == "Re: Renewal offer"
    assert second.rcpt_tos == ["dora@buyer.example"]
    replied = OutgoingMessage.objects.get(subject="Re: Renewal offer")
    assert replied.sent_message.thread_id == sent.sent_message.thread_id
    page.goto(f"/mail/threads/{sent.sent_message.thread_id}/")
    assert page.locator("article.message").count() == 2
