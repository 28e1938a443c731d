"""The composer pages (mailsync.workspace.compose_views): drafts, autosave, files, send / undo / retry, and
who may reach what (the owner only: teammate, outsider and admin get 404)."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from conftest import client_for
from mailsync.models import EmailAccount, OutgoingAttachment, OutgoingMessage
from mailsync.sending import services
from tests.factories import DealFactory, PersonEmailFactory, PersonFactory
from tests.mail_factories import EmailMessageFactory, EmailThreadFactory, MessageParticipantFactory

PNG = b"\x89PNG\r\n\x1a\n0000"


@pytest.fixture
def account(alice):
    account = EmailAccount(
        user=alice,
        email_address="alice@company.test",
        username="alice@company.test",
        imap_host="imap.company.test",
        smtp_host="smtp.company.test",
        state=EmailAccount.State.SYNCING,
    )
    account.set_secret("pw")
    account.save()
    return account


def new_draft(client, **params) -> OutgoingMessage:
    response = client.get(reverse("mailsync:compose_new"), params)
    assert response.status_code == 302
    draft = OutgoingMessage.objects.latest("pk")
    assert response["Location"] == reverse("mailsync:compose", args=[draft.pk])
    return draft


def test_compose_autosave_attach_and_send(alice, account, settings, django_capture_on_commit_callbacks):
    settings.MAILSYNC_UNDO_SEND_SECONDS = 10
    client = client_for(alice)
    draft = new_draft(client, to="ann@customer.example")
    page = client.get(reverse("mailsync:compose", args=[draft.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert 'value="ann@customer.example"' in html and "vendor/squire/squire.js" in html
    assert "<script>" not in html  # CSP: no inline scripts

    upload = client.post(
        reverse("mailsync:compose_upload", args=[draft.pk]),
        {"file": SimpleUploadedFile("logo.png", PNG, content_type="image/png"), "inline": "1"},
    )
    image = upload.json()
    assert upload.status_code == 200 and image["inline"]
    attached = client.post(
        reverse("mailsync:compose_upload", args=[draft.pk]),
        {"file": SimpleUploadedFile("terms.pdf", b"%PDF", content_type="application/pdf")},
    )
    assert attached.status_code == 200 and attached.json()["name"] == "terms.pdf"

    body = (
        f'<div><b>Bold</b></div><div><img src="http://testserver{image["url"]}"></div><div>مرحبا</div>'
        '<script>alert(1)</script><img src="x" onerror="alert(1)"><a href="javascript:alert(1)">x</a>'
    )
    saved = client.post(
        reverse("mailsync:compose_save", args=[draft.pk]),
        {"account": account.pk, "to": "ann@customer.example", "subject": "Hello", "body_html": body},
    )
    assert saved.status_code == 200 and "Draft saved" in saved.content.decode()
    draft.refresh_from_db()
    inline = OutgoingAttachment.objects.get(message=draft, is_inline=True)
    assert f'src="cid:{inline.content_id}"' in draft.body_html and "testserver" not in draft.body_html
    assert '<div dir="auto">مرحبا</div>' in draft.body_html
    assert "script" not in draft.body_html and "onerror" not in draft.body_html and "javascript" not in draft.body_html
    # Reopening the draft shows the image from the CRM again, and the attachment.
    reopened = client.get(reverse("mailsync:compose", args=[draft.pk])).content.decode()
    assert image["url"] in reopened and "terms.pdf" in reopened

    with django_capture_on_commit_callbacks() as callbacks:
        sent = client.post(
            reverse("mailsync:compose_send", args=[draft.pk]),
            {"account": account.pk, "to": "ann@customer.example", "subject": "Hello", "body_html": body, "when": "now"},
        )
    assert sent.status_code == 302 and sent["Location"] == reverse("mailsync:outgoing_detail", args=[draft.pk])
    assert len(callbacks) == 1  # the task, after the commit
    draft.refresh_from_db()
    assert draft.state == OutgoingMessage.State.QUEUED and draft.message_id and draft.mime
    status = client.get(sent["Location"]).content.decode()
    assert "Undo" in status and "Queued" in status
    undone = client.post(reverse("mailsync:outgoing_undo", args=[draft.pk]))
    assert undone["Location"] == reverse("mailsync:compose", args=[draft.pk])
    draft.refresh_from_db()
    assert draft.state == OutgoingMessage.State.DRAFT


def test_send_with_a_bad_address_shows_the_reason_and_keeps_everything(alice, account):
    client = client_for(alice)
    draft = new_draft(client)
    response = client.post(
        reverse("mailsync:compose_send", args=[draft.pk]),
        {"to": "ann@customer.example, bo<b@x.example", "subject": "Keep me", "body_html": "<p>Body kept</p>"},
    )
    assert response.status_code == 422
    html = response.content.decode()
    assert "contains “&lt;”" in html and "Keep me" in html and "Body kept" in html
    draft.refresh_from_db()
    assert draft.state == OutgoingMessage.State.DRAFT and draft.subject == "Keep me"


def test_addresses_are_checked_as_typed(alice, account):
    client = client_for(alice)
    url = reverse("mailsync:compose_check")
    assert client.post(url, {"value": "ann@customer.example, Bob <bob@x.example>"}).content == b""
    assert "“*”" in client.post(url, {"value": "an*n@customer.example"}).content.decode()
    assert "not a valid email address" in client.post(url, {"value": "ann@"}).content.decode()


def test_suggestions_come_from_people_the_user_may_see(alice, bob, charlie, account):
    visible = PersonFactory(owner=bob, first_name="Vera", last_name="Visible")
    PersonEmailFactory(person=visible, email="vera@customer.example")
    hidden = PersonFactory(owner=charlie, first_name="Vera", last_name="Hidden", visibility="private")
    PersonEmailFactory(person=hidden, email="vera.hidden@customer.example")
    data = client_for(alice).get(reverse("mailsync:compose_suggest"), {"q": "vera"}).json()
    assert [item["address"] for item in data["suggestions"]] == ["vera@customer.example"]


def test_reply_buttons_and_email_actions(alice, account):
    thread = EmailThreadFactory(owner=alice, subject="Question")
    message = EmailMessageFactory(
        thread=thread, account=account, message_id="q@customer.example", from_address="ann@customer.example"
    )
    MessageParticipantFactory(message=message, role="from", address="ann@customer.example", name="Ann")
    client = client_for(alice)
    page = client.get(reverse("mailsync:thread_detail", args=[thread.pk])).content.decode()
    assert reverse("mailsync:compose_reply", args=[message.pk]) in page
    assert 'data-reply-shortcut="r"' in page and ">Reply all<" in page and ">Forward<" in page
    # The address link opens the composer (W6 default).
    assert f"{reverse('mailsync:compose_new')}?to=ann%40customer.example" in page

    response = client.post(reverse("mailsync:compose_reply", args=[message.pk]), {"kind": "reply_all"})
    draft = OutgoingMessage.objects.get(owner=alice)
    assert response["Location"] == reverse("mailsync:compose", args=[draft.pk])
    assert (
        draft.kind == "reply_all"
        and draft.subject == "Re: Question"
        and draft.to_addresses == "Ann <ann@customer.example>"
    )

    deal = DealFactory(owner=alice)
    deal_page = client.get(deal.get_absolute_url()).content.decode()
    assert f"{reverse('mailsync:compose_new')}?record=deal%3A{deal.pk}" in deal_page
    draft = new_draft(client, record=f"deal:{deal.pk}")
    assert draft.deal == deal


def test_mail_lists_offer_compose_and_drafts(alice, account):
    page = client_for(alice).get(reverse("mailsync:inbox")).content.decode()
    assert reverse("mailsync:compose_new") in page and reverse("mailsync:drafts") in page


def test_drafts_list_shows_drafts_and_failed_mail(alice, account):
    client = client_for(alice)
    draft = new_draft(client)
    services.save_draft(outgoing=draft, to="a@x.example", cc="", bcc="", subject="Unfinished", body_html="")
    failed = new_draft(client)
    OutgoingMessage.objects.filter(pk=failed.pk).update(
        state="failed", subject="Did not go", error_message="The outgoing (SMTP) server refused the login."
    )
    html = client.get(reverse("mailsync:drafts")).content.decode()
    assert "Unfinished" in html and "Did not go" in html and "refused the login" in html
    sent_list = client.get(reverse("mailsync:sent")).content.decode()
    assert "Did not go" in sent_list and reverse("mailsync:outgoing_detail", args=[failed.pk]) in sent_list


@pytest.mark.parametrize("persona", ["bob", "charlie", "admin_user"])
def test_nobody_else_reaches_a_draft_or_its_files(alice, account, persona, request):
    draft = services.create_draft(user=alice)
    services.save_draft(outgoing=draft, to="ann@customer.example", cc="", bcc="", subject="Secret", body_html="")
    file = services.add_attachment(
        outgoing=draft, upload=SimpleUploadedFile("secret.pdf", b"%PDF", content_type="application/pdf")
    )
    other = client_for(request.getfixturevalue(persona))
    for name in ("compose", "outgoing_detail"):
        assert other.get(reverse(f"mailsync:{name}", args=[draft.pk])).status_code == 404
    for name in ("compose_save", "compose_send", "compose_discard", "compose_upload"):
        assert other.post(reverse(f"mailsync:{name}", args=[draft.pk]), {"subject": "x"}).status_code == 404
    for name in ("outgoing_undo", "outgoing_retry", "outgoing_edit"):
        assert other.post(reverse(f"mailsync:{name}", args=[draft.pk])).status_code == 404
    assert other.get(reverse("mailsync:compose_file", args=[file.pk])).status_code == 404
    assert other.post(reverse("mailsync:compose_file_remove", args=[file.pk])).status_code == 404
    assert "Secret" not in other.get(reverse("mailsync:drafts")).content.decode()
    draft.refresh_from_db()
    assert draft.subject == "Secret" and draft.state == OutgoingMessage.State.DRAFT
    # Nobody sends from alice's account by naming it.
    other_user = request.getfixturevalue(persona)
    EmailAccount.objects.create(
        user=other_user, email_address=f"{persona}@company.test", username="x", imap_host="i", smtp_host="s"
    )
    mine = services.create_draft(user=other_user)
    response = other.post(
        reverse("mailsync:compose_save", args=[mine.pk]),
        {"account": account.pk, "to": "", "subject": "", "body_html": ""},
    )
    assert response.status_code == 409 and "your own mail accounts" in response.content.decode()


def test_nobody_replies_to_a_message_they_cannot_see(alice, charlie, account):
    thread = EmailThreadFactory(owner=alice)
    message = EmailMessageFactory(thread=thread, account=account)
    EmailAccount.objects.create(
        user=charlie, email_address="charlie@company.test", username="c", imap_host="i", smtp_host="s"
    )
    response = client_for(charlie).post(reverse("mailsync:compose_reply", args=[message.pk]), {"kind": "forward"})
    assert response.status_code == 404
    assert not OutgoingMessage.objects.filter(owner=charlie).exists()


def test_uploads_over_the_provider_limit_are_refused_with_the_reason(alice, account):
    EmailAccount.objects.filter(pk=account.pk).update(provider="outlook")
    client = client_for(alice)
    draft = new_draft(client)
    big = SimpleUploadedFile("big.bin", b"0" * (20 * 1024 * 1024 + 1), content_type="application/octet-stream")
    response = client.post(reverse("mailsync:compose_upload", args=[draft.pk]), {"file": big})
    assert response.status_code == 400
    assert "Outlook.com (Hotmail) accepts up to 20 MB" in json.loads(response.content)["error"]
    assert not draft.attachments.exists()


def test_send_later_and_discard(alice, account, django_capture_on_commit_callbacks):
    client = client_for(alice)
    draft = new_draft(client, to="ann@customer.example")
    fields = {"to": "ann@customer.example", "subject": "Later", "body_html": "<p>x</p>", "when": "later"}
    past = client.post(reverse("mailsync:compose_send", args=[draft.pk]), {**fields, "send_at": "2001-01-01T09:00"})
    assert past.status_code == 422 and "Choose a time in the future." in past.content.decode()
    response = client.post(reverse("mailsync:compose_send", args=[draft.pk]), {**fields, "send_at": "2099-05-04T09:30"})
    assert response.status_code == 302
    draft.refresh_from_db()
    assert draft.state == OutgoingMessage.State.QUEUED and draft.send_later
    assert (draft.send_at.year, draft.send_at.month, draft.send_at.day) == (2099, 5, 4)
    assert "Cancel and edit" in client.get(response["Location"]).content.decode()

    other = new_draft(client)
    file = services.add_attachment(
        outgoing=other, upload=SimpleUploadedFile("x.pdf", b"%PDF", content_type="application/pdf")
    )
    stored = file.file.name
    with django_capture_on_commit_callbacks(execute=True):
        discarded = client.post(reverse("mailsync:compose_discard", args=[other.pk]))
    assert discarded["Location"] == reverse("mailsync:drafts")
    assert not OutgoingMessage.objects.filter(pk=other.pk).exists()
    assert not file.file.storage.exists(stored)


def test_untouched_drafts_are_not_listed_and_go_after_a_day(alice, account, django_capture_on_commit_callbacks):
    from datetime import timedelta

    from django.utils import timezone

    from mailsync.sending import cleanup

    client = client_for(alice)
    untouched = new_draft(client, to="ann@customer.example")  # an address link, then nothing typed
    typed = new_draft(client)
    client.post(reverse("mailsync:compose_save", args=[typed.pk]), {"to": "", "subject": "Typed", "body_html": ""})
    listed = client.get(reverse("mailsync:drafts")).content.decode()
    assert "Typed" in listed and reverse("mailsync:compose", args=[untouched.pk]) not in listed
    assert cleanup.discard_untouched_drafts() == 0  # not a day old yet
    day_ago = timezone.now() - timedelta(days=2)
    OutgoingMessage.objects.filter(pk__in=[untouched.pk, typed.pk]).update(created_at=day_ago)
    with django_capture_on_commit_callbacks(execute=True):
        assert cleanup.discard_untouched_drafts() == 1
    assert list(OutgoingMessage.objects.values_list("pk", flat=True)) == [typed.pk]


def test_compose_without_a_sending_account_says_what_to_do(bob):
    client = client_for(bob)
    response = client.get(reverse("mailsync:compose_new"), follow=True)
    assert response.redirect_chain[-1][0] == reverse("mailsync:settings")
    assert "Connect a mail account with an outgoing (SMTP) server first" in response.content.decode()
    assert not OutgoingMessage.objects.exists()
