"""Templates, signatures and smart fields in the composer (issue 13 with issue 12): the default signature
above the quote, switching the From account switches it, smart fields filled for the recipients when the
message is queued, a missing one holds the send, the preview; and in Chromium, a template with fields
inserted into a reply and sent through aiosmtpd."""

from __future__ import annotations

import email
import email.policy
import json
import os

import pytest
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.urls import reverse

from conftest import browser_login, client_for
from crm.models import Visibility
from mailsync.models import EmailAccount, OutgoingMessage, SignatureImage
from mailsync.sending import mime, services, template_services
from tests.factories import DealFactory, OrganizationFactory, PersonEmailFactory, PersonFactory
from tests.mail_factories import EmailAccountFactory, EmailMessageFactory, EmailThreadFactory, MessageParticipantFactory
from tests.test_sending import make_account, received_by

PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
    b"\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82"
)


def sending_account(user, address: str) -> EmailAccount:
    return EmailAccountFactory(user=user, email_address=address)


def signature(user, account, name, body, *, new=True, replies=False):
    return template_services.save_signature(
        user=user, account=account, name=name, body_html=body, default_for_new=new, default_for_replies=replies
    )


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path)


@pytest.fixture
def ann_deal(alice):
    organization = OrganizationFactory(owner=alice, name="Acme", visibility=Visibility.COMPANY)
    ann = PersonFactory(owner=alice, first_name="Ann", last_name="Buyer", organization=organization)
    PersonEmailFactory(person=ann, email="ann@acme.example", is_primary=True)
    return DealFactory(owner=alice, title="Acme renewal", person=ann, organization=organization)


@pytest.mark.django_db
def test_a_new_draft_gets_the_default_signature_with_its_image_as_an_inline_part(alice, media):
    account = sending_account(alice, "alice@company.test")
    full = signature(alice, account, "Full", "<p>Alice Owner</p>")
    image = SignatureImage(signature=full, content_type="image/png", size=len(PNG))
    image.file.save("logo.png", ContentFile(PNG), save=False)
    image.save()
    full.body_html = f'<p>Alice Owner</p><p><img src="/mail/signature-images/{image.pk}/" alt=""></p>'
    full.save()
    signature(alice, account, "Short", "<p>A.</p>", new=False, replies=True)

    draft = services.create_draft(user=alice, to="ann@acme.example")
    assert draft.body_html.startswith('<div dir="auto"><br></div><div dir="auto" data-signature=""><p dir="auto">Alice')
    [part] = draft.attachments.filter(is_inline=True)
    assert f'src="cid:{part.content_id}"' in draft.body_html and "/mail/signature-images/" not in draft.body_html
    with part.file.open("rb") as handle:
        assert handle.read() == PNG
    # Sent, the image travels inside the message.
    built = mime.build(services.build_draft(draft), message_id="x@crm", now=draft.created_at)
    parsed = email.message_from_bytes(built, policy=email.policy.default)
    [inline] = [p for p in parsed.walk() if p.get_content_type() == "image/png"]
    assert inline["Content-ID"] == f"<{part.content_id}>" and inline.get_content() == PNG

    thread = EmailThreadFactory(owner=alice)
    source = EmailMessageFactory(account=account, thread=thread, subject="Question", message_id="q@acme.example")
    MessageParticipantFactory(message=source, role="from", address="ann@acme.example")
    reply = services.create_draft(user=alice, kind=OutgoingMessage.Kind.REPLY, source=source)
    assert '<p dir="auto">A.</p>' in reply.body_html and "Alice Owner" not in reply.body_html


@pytest.mark.django_db
def test_switching_the_from_account_switches_the_signature(alice, bob, media):
    first = sending_account(alice, "alice@company.test")
    second = sending_account(alice, "alice@private.example")
    signature(alice, first, "Work", "<p>Alice, Company</p>")
    signature(alice, second, "Private", "<p>Alice, at home</p>")
    client = client_for(alice)
    draft = services.create_draft(user=alice, to="ann@acme.example")
    draft = services.save_draft(
        outgoing=draft, to="ann@acme.example", cc="", bcc="", subject="Hi", body_html="<p>Text</p>" + draft.body_html
    )
    response = client.post(reverse("mailsync:compose_signature", args=[draft.pk]), {"account": second.pk})
    assert response.status_code == 200 and "Alice, at home" in response.content.decode()
    draft.refresh_from_db()
    assert "Alice, at home" in draft.body_html and "Alice, Company" not in draft.body_html
    assert '<p dir="auto">Text</p>' in draft.body_html
    # Someone else's account, or someone else's draft: nothing.
    bob_account = sending_account(bob, "bob@company.test")
    assert (
        client.post(reverse("mailsync:compose_signature", args=[draft.pk]), {"account": bob_account.pk}).status_code
        == 404
    )
    assert client_for(bob).post(
        reverse("mailsync:compose_signature", args=[draft.pk]), {"account": bob_account.pk}
    ).status_code == 404  # fmt: skip


@pytest.mark.django_db
def test_queueing_fills_the_fields_for_the_recipients_and_the_record(
    alice, ann_deal, django_capture_on_commit_callbacks
):
    sending_account(alice, "alice@company.test")
    draft = services.create_draft(user=alice, record=ann_deal)
    draft = services.save_draft(
        outgoing=draft,
        to=draft.to_addresses,
        cc="",
        bcc="",
        subject="Next steps for {{deal.title}}",
        body_html="<p>Hi {{person.first_name}}, {{organization.name}} &amp; {{lead.title|us}}</p>",
    )
    queued = services.queue_message(outgoing=draft)
    assert queued.subject == "Next steps for Acme renewal"
    assert '<p dir="auto">Hi Ann, Acme &amp; us</p>' in queued.body_html
    parsed = email.message_from_bytes(bytes(queued.mime), policy=email.policy.default)
    assert parsed["Subject"] == "Next steps for Acme renewal"
    assert "Hi Ann, Acme & us" in parsed.get_body(("plain",)).get_content()


@pytest.mark.django_db
def test_a_field_without_a_value_holds_the_send_and_says_which(alice):
    sending_account(alice, "alice@company.test")
    client = client_for(alice)
    draft = services.create_draft(user=alice)
    response = client.post(
        reverse("mailsync:compose_send", args=[draft.pk]),
        {
            "to": "stranger@unknown.example",
            "subject": "Hello {{person.first_name}}",
            "body_html": "<p>{{deal.title}}</p>",
            "when": "now",
        },
    )
    assert response.status_code == 422
    page = response.content.decode()
    assert "Some smart fields have no value: Person: First name, Deal: Title" in page
    draft.refresh_from_db()
    assert draft.state == OutgoingMessage.State.DRAFT and draft.subject == "Hello {{person.first_name}}"
    with pytest.raises(ValidationError):
        services.queue_message(outgoing=draft)


@pytest.mark.django_db
def test_the_preview_shows_the_filled_message_and_what_would_hold_it(alice, bob, ann_deal):
    sending_account(alice, "alice@company.test")
    client = client_for(alice)
    draft = services.create_draft(user=alice, record=ann_deal)
    response = client.post(
        reverse("mailsync:compose_preview", args=[draft.pk]),
        {
            "to": draft.to_addresses,
            "subject": "For {{person.first_name}}",
            "body_html": "<p>{{deal.title}} {{lead.title}}</p>",
        },
    )
    data = json.loads(response.content)
    assert data["subject"] == "For Ann"
    assert "Acme renewal {{lead.title}}" in data["document"] and data["missing"] == ["Lead: Title"]
    assert client_for(bob).post(reverse("mailsync:compose_preview", args=[draft.pk]), {}).status_code == 404
    draft.refresh_from_db()
    assert draft.state == OutgoingMessage.State.DRAFT  # a preview sends nothing


@pytest.mark.django_db
def test_the_composer_offers_templates_and_knows_its_record(alice, ann_deal):
    sending_account(alice, "alice@company.test")
    template_services.create_template(
        user=alice, name="Follow-up", subject="About {{deal.title}}", body_html="<p>Hi</p>", visibility="owner"
    )
    client = client_for(alice)
    draft = services.create_draft(user=alice, record=ann_deal)
    page = client.get(reverse("mailsync:compose", args=[draft.pk])).content.decode()
    assert f'data-record="deal:{ann_deal.pk}"' in page and "Insert a template" in page
    assert '<option value="person.first_name">Person: First name</option>' in page  # the smart-field picker
    services.save_draft(
        outgoing=draft, to="", cc="", bcc="", subject="", body_html="<p>{{person.first_name}} {{deal.title|x}}</p>"
    )
    page = client.get(reverse("mailsync:compose", args=[draft.pk])).content.decode()
    # Opened again, a field still to fill is marked (one with a fallback is not).
    assert "&lt;mark class=&quot;smart-field-missing&quot; data-field=&quot;person.first_name&quot;&gt;" in page
    assert "&lt;mark class=&quot;smart-field-missing&quot; data-field=&quot;deal.title" not in page
    picker = client.get(reverse("mailsync:template_picker"), {"q": "follow"}).content.decode()
    assert "Follow-up" in picker and "data-template-fill" in picker


@pytest.mark.browser
@pytest.mark.smtp
@pytest.mark.django_db(transaction=True)
def test_a_template_with_fields_inserted_into_a_reply_is_sent_filled(
    page, alice, dovecot, mail_user, smtp_server, settings, celery_eager
):
    settings.MAILSYNC_UNDO_SEND_SECONDS = 0
    account = make_account(alice, mail_user, dovecot, smtp_server)
    ann = PersonFactory(owner=alice, first_name="Ann", last_name="Buyer")
    PersonEmailFactory(person=ann, email="ann@acme.example", is_primary=True)
    DealFactory(owner=alice, title="Acme renewal", person=ann)
    template_services.create_template(
        user=alice,
        name="Follow-up",
        subject="Not used in a reply",
        body_html="<p>Hi {{person.first_name}}, about {{deal.title}} ({{lead.title|no lead}}).</p>",
        visibility="owner",
    )
    thread = EmailThreadFactory(owner=alice, subject="Question")
    source = EmailMessageFactory(
        account=account,
        thread=thread,
        subject="Question",
        message_id="q1@acme.example",
        from_address="ann@acme.example",
    )
    MessageParticipantFactory(message=source, role="from", address="ann@acme.example", name="Ann Buyer")
    MessageParticipantFactory(message=source, role="to", address=mail_user.address)

    browser_login(page, alice)
    page.goto(f"/mail/threads/{thread.pk}/")
    page.wait_for_selector('[data-reply-shortcut="r"]')
    page.keyboard.press("r")
    page.wait_for_selector("[data-editor]:not([hidden])")
    page.locator("[data-editor]").click()
    page.select_option("[data-compose-field-picker]", "person.last_name")
    page.wait_for_selector("[data-editor] :text('{{person.last_name}}')")
    page.click("[data-template-panel] summary")
    page.fill("#compose-template-search", "follow")
    page.click(".template-pick:has-text('Follow-up')")
    page.wait_for_selector("[data-editor] :text('about Acme renewal')")
    assert page.input_value("#compose-subject") == "Re: Question"
    shots = os.environ.get("CRM_SCREENSHOT_DIR")
    if shots:
        for width in (1400, 390):
            page.set_viewport_size({"width": width, "height": 900})
            page.screenshot(path=f"{shots}/compose-template-{width}.png", full_page=True)
    page.click("[data-preview]")
    page.wait_for_selector("[data-preview-dialog][open]")
    assert page.locator("[data-preview-subject]").inner_text() == "Re: Question"
    if shots:
        page.screenshot(path=f"{shots}/compose-preview-390.png")
    page.click("[data-preview-close]")
    page.click("button[name=when][value=now]")
    page.wait_for_selector(".outgoing-status[data-state=sent]")
    [sent] = received_by(smtp_server, mail_user)
    parsed = email.message_from_bytes(sent.data, policy=email.policy.default)
    text = parsed.get_body(("plain",)).get_content()
    assert "Hi Ann, about Acme renewal (no lead)." in text and "Buyer" in text and "{{" not in text
    assert parsed["In-Reply-To"] == "<q1@acme.example>" and sent.rcpt_tos == ["ann@acme.example"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            '<p>Hi</p><div dir="auto" data-signature=""><div>Old</div><p>x</p></div><p>after</p>',
            "<p>Hi</p>NEW<p>after</p>",
        ),
        ('<p>Hi</p><div data-signature="">Old</div>', "<p>Hi</p>NEW"),
        ("<p>Hi</p>", "<p>Hi</p>NEW"),
        ('<div data-signaturex="">keep</div>', '<div data-signaturex="">keep</div>NEW'),
    ],
)
def test_with_signature_replaces_exactly_the_signature_block(body, expected):
    assert template_services.with_signature(body, "NEW") == expected
