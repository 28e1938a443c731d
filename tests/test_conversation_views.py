"""Conversation pages: thread view with links (L4), attachments, blocked addresses (F1), clean-up (F3),
and a privacy walk over every mail URL as the owner, a teammate, an outsider and an admin (P1-P3)."""

from html.parser import HTMLParser

import pytest
from django.urls import reverse
from django.utils.html import strip_tags

from conftest import client_for
from crm.models import Visibility
from mailsync.linking.rules import link_threads
from mailsync.models import BlockedAddress, EmailAccount, EmailMessage, EmailThread, MailSettings, ThreadLink
from tests.factories import DealFactory, PersonEmailFactory, PersonFactory
from tests.mail_factories import AttachmentFactory, create_message, create_thread, fast_password_hashing

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}
ANN = "ann@acme.example"
PROSPECT = "buyer@prospect.example"


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    fast_password_hashing(settings)


@pytest.fixture(autouse=True)
def media_in_tmp(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path


@pytest.fixture
def world(alice, bob, charlie, admin_user):
    """Alice's mail: a private thread with Ann (a company contact) and a shared thread linked only to a
    deal of her team, each with an attachment; a deal everybody may see; one blocked address."""
    ann = PersonFactory(owner=alice, first_name="Ann", last_name="Smith")
    PersonEmailFactory(person=ann, email=ANN)
    team_deal = DealFactory(owner=alice, title="Team deal", visibility=Visibility.TEAM)
    company_deal = DealFactory(owner=alice, title="Company deal", visibility=Visibility.COMPANY)
    private = create_thread(alice, sender=ANN, visibility=EmailThread.Visibility.PRIVATE, subject="Private talk")
    shared = create_thread(alice, sender=PROSPECT, visibility=EmailThread.Visibility.SHARED, subject="Shared talk")
    link_threads([private.pk, shared.pk])
    ThreadLink.objects.create(thread=shared, deal=team_deal, state=ThreadLink.State.LINKED, rule="manual")
    suggestions = {
        thread: ThreadLink.objects.create(
            thread=thread, deal=company_deal, state=ThreadLink.State.SUGGESTED, rule="organization_deal"
        )
        for thread in (private, shared)
    }
    return {
        "ann": ann,
        "team_deal": team_deal,
        "company_deal": company_deal,
        "private": private,
        "shared": shared,
        "suggestions": suggestions,
        "attachments": {
            private: AttachmentFactory(message=private.messages.get(), filename="private.pdf"),
            shared: AttachmentFactory(message=shared.messages.get(), filename="shared.pdf"),
        },
        "block": BlockedAddress.objects.create(user=alice, pattern="@spam.example"),
    }


def frame_documents(page_html: str) -> list[str]:
    """The srcdoc documents of the message frames of a page (unescaped, as the browser reads them)."""
    found = []

    class Frames(HTMLParser):
        def handle_starttag(self, tag, attrs):
            if tag == "iframe":
                found.append(dict(attrs).get("srcdoc", ""))

    Frames().feed(page_html)
    return found


def target(record) -> str:
    return f"deal:{record.pk}"


# --- Privacy walk ---------------------------------------------------------------------------------------

# (name, thread, expected status for alice, bob, charlie, admin_user)
WALK = [
    ("thread_detail", "private", (200, 404, 404, 404)),
    ("thread_detail", "shared", (200, 200, 404, 200)),
    ("attachment_download", "private", (200, 404, 404, 404)),
    ("attachment_download", "shared", (200, 200, 404, 200)),
    ("thread_link", "private", (302, 404, 404, 404)),
    # Links are the audience of a shared thread: others who see it only suggest (302, "suggested"),
    # never unlink or accept (403).
    ("thread_link", "shared", (302, 302, 404, 302)),
    ("thread_unlink", "private", (302, 404, 404, 404)),
    ("thread_unlink", "shared", (302, 403, 404, 403)),
    ("thread_accept_suggestion", "private", (302, 404, 404, 404)),
    ("thread_accept_suggestion", "shared", (302, 403, 404, 403)),
    ("thread_visibility", "private", (302, 404, 404, 404)),
    ("thread_visibility", "shared", (302, 403, 404, 403)),
    # A conversation expanded on a timeline (htmx), and the older pages of Ann's timeline: the private
    # thread is on it for Alice only (the body check below: nobody else gets "Private talk").
    ("thread_preview", "private", (200, 404, 404, 404)),
    ("thread_preview", "shared", (200, 200, 404, 200)),
    ("record_timeline", "private", (200, 200, 200, 200)),
    ("blocked_remove", None, (302, 404, 404, 404)),
    ("blocked_list", None, (200, 200, 200, 200)),
    ("cleanup", None, (200, 200, 200, 200)),
    # Thread page variants: remote images shown, boosted navigation (answered with a full-page redirect).
    ("thread_detail_images", "private", (200, 404, 404, 404)),
    ("thread_detail_images", "shared", (200, 200, 404, 200)),
    ("thread_detail_boosted", "private", (200, 404, 404, 404)),
    # Alice's mail account: nobody else may act on it or read its progress, admins included.
    ("account_sync_now", None, (302, 404, 404, 404)),
    ("account_folders", None, (302, 404, 404, 404)),
    ("past_sync", None, (302, 404, 404, 404)),
    ("past_sync_progress", None, (302, 404, 404, 404)),
    # Per-user pages: each person sees and changes only their own.
    ("settings", None, (200, 200, 200, 200)),
    ("preferences", None, (302, 302, 302, 302)),
    # Admins only, and without any mail content.
    ("status", None, (404, 404, 404, 200)),
]
PERSONAS = ["alice", "bob", "charlie", "admin_user"]


def _request(client, world, name, thread_key):
    thread = world.get(thread_key)
    if name == "thread_detail":
        return client.get(reverse("mailsync:thread_detail", args=[thread.pk]))
    if name == "attachment_download":
        return client.get(reverse("mailsync:attachment_download", args=[world["attachments"][thread].pk]))
    if name in ("thread_link", "thread_unlink"):
        return client.post(reverse(f"mailsync:{name}", args=[thread.pk]), {"target": target(world["company_deal"])})
    if name == "thread_accept_suggestion":
        suggestion = world["suggestions"][thread]
        return client.post(reverse("mailsync:thread_accept_suggestion", args=[thread.pk, suggestion.pk]))
    if name == "thread_visibility":
        new = "private" if thread.visibility == "shared" else "shared"
        return client.post(reverse("mailsync:thread_visibility", args=[thread.pk]), {"visibility": new})
    if name == "blocked_remove":
        return client.post(reverse("mailsync:blocked_remove", args=[world["block"].pk]))
    if name == "thread_detail_images":
        return client.get(reverse("mailsync:thread_detail", args=[thread.pk]) + "?images=all")
    if name == "thread_preview":
        return client.get(reverse("mailsync:thread_preview", args=[thread.pk]), headers=HTMX)
    if name == "record_timeline":
        return client.get(reverse("mailsync:record_timeline", args=["person", world["ann"].pk]), headers=HTMX)
    if name == "thread_detail_boosted":
        return client.get(reverse("mailsync:thread_detail", args=[thread.pk]), headers={**HTMX, "HX-Boosted": "true"})
    account = EmailAccount.objects.get(user__email="alice@company.test")
    if name in ("account_sync_now", "account_folders", "past_sync"):
        data = {"mode": "all", "months": 3}
        return client.post(reverse(f"mailsync:{name}", args=[account.pk]), data)
    if name == "past_sync_progress":
        return client.get(reverse("mailsync:past_sync_progress", args=[account.pk]))
    if name == "preferences":
        data = {"linking_mode": "manual", "default_visibility": "shared", "email_link_preference": "mailto"}
        return client.post(reverse("mailsync:preferences"), data)
    return client.get(reverse(f"mailsync:{name}"))


def _alice_mail_state(world):
    threads = EmailThread.objects.filter(pk__in=[world["private"].pk, world["shared"].pk]).order_by("pk")
    alice_accounts = EmailAccount.objects.filter(user__email="alice@company.test").order_by("pk")
    return (
        list(threads.values_list("pk", "visibility")),
        list(ThreadLink.objects.order_by("pk").values_list("pk", "state", "rule")),
        BlockedAddress.objects.filter(user__email="alice@company.test").count(),
        EmailMessage.objects.filter(deleted_at__isnull=False).count(),
        EmailMessage.objects.filter(is_read=True).count(),
        list(alice_accounts.values_list("pk", "state", "sync_all_folders", "past_sync_state")),
        list(
            MailSettings.objects.filter(user__email="alice@company.test").values_list(
                "linking_mode", "default_visibility"
            )
        ),
    )


@pytest.mark.parametrize("persona_index", range(4), ids=PERSONAS)
@pytest.mark.parametrize(("name", "thread_key", "expected"), WALK, ids=[f"{w[0]}-{w[1]}" for w in WALK])
def test_privacy_walk(request, world, persona_index, name, thread_key, expected):
    user = request.getfixturevalue(PERSONAS[persona_index])
    before = _alice_mail_state(world)
    response = _request(client_for(user), world, name, thread_key)
    assert response.status_code == expected[persona_index]
    body = b"".join(response.streaming_content) if response.streaming else response.content
    if user.email != "alice@company.test" and (
        thread_key is None or thread_key == "private" or response.status_code >= 400
    ):
        # A refusal (or someone's own page) changes nothing and reveals nothing of Alice's mail.
        assert _alice_mail_state(world) == before
        assert b"Private talk" not in body
        assert b"%PDF" not in body
    if name == "status":  # the admin sees Alice's account state, never her conversations
        assert b"Private talk" not in body and b"Shared talk" not in body and ANN.encode() not in body


def test_outsiders_pages_show_only_their_own_mail(world, bob):
    response = client_for(bob).get(reverse("mailsync:blocked_list"))
    assert b"@spam.example" not in response.content
    response = client_for(bob).get(reverse("mailsync:cleanup"))
    assert response.context["preview_count"] == 0
    client_for(bob).post(reverse("mailsync:cleanup"), {"confirm": "yes"})
    assert not EmailMessage.objects.filter(deleted_at__isnull=False).exists()


# --- Thread page ----------------------------------------------------------------------------------------


def test_thread_page_shows_messages_links_with_reasons_and_suggestions(world, alice):
    thread = world["private"]
    create_message(
        thread,
        sender=alice.email,
        to=[ANN],
        cc=["colleague@company.test"],
        body_html="<p>Hello <b>Ann</b></p>",
    )
    response = client_for(alice).get(reverse("mailsync:thread_detail", args=[thread.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" in html
    assert "Private talk" in html
    # Sanitised HTML is rendered as HTML, inside the sandboxed frame of its message.
    assert any("<p>Hello <b>Ann</b></p>" in document for document in frame_documents(html))
    assert "Cc: colleague@company.test" in strip_tags(html)
    assert "ann@acme.example is Ann Smith&#x27;s address" in html  # the link's reason
    assert "Company deal" in html
    assert reverse("mailsync:thread_accept_suggestion", args=[thread.pk, world["suggestions"][thread].pk]) in html
    assert reverse("mailsync:attachment_download", args=[world["attachments"][thread].pk]) in html
    assert 'name="visibility"' in html


def test_thread_page_escapes_plain_text(world, alice):
    thread = world["private"]
    create_message(thread, sender=ANN, to=[alice.email], body_text="<script>alert(1)</script>")
    html = client_for(alice).get(reverse("mailsync:thread_detail", args=[thread.pk])).content.decode()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_thread_page_htmx_partial_and_wrong_method(world, alice):
    url = reverse("mailsync:thread_detail", args=[world["private"].pk])
    client = client_for(alice)
    partial = client.get(url, headers=HTMX)
    assert partial.status_code == 200
    assert b"<html" not in partial.content and b"Private talk" in partial.content
    # A boosted navigation becomes a full page load, so the page's Content-Security-Policy applies.
    boosted = client.get(url, headers={**HTMX, "HX-Boosted": "true"})
    assert boosted.status_code == 200 and boosted["HX-Redirect"] == url and b"Private talk" not in boosted.content
    assert client.post(url).status_code == 405


def test_non_owner_sees_visibility_without_a_switch(world, bob):
    html = client_for(bob).get(reverse("mailsync:thread_detail", args=[world["shared"].pk])).content.decode()
    assert 'name="visibility"' not in html
    assert "only they can change it" in html
    # Bob cannot see Ann's private thread, and the team deal is visible to him in the links box.
    assert "Team deal" in html


def test_link_and_unlink_by_htmx_return_the_links_box(world, alice):
    thread, deal = world["private"], world["company_deal"]
    client = client_for(alice)
    response = client.post(reverse("mailsync:thread_link", args=[thread.pk]), {"target": target(deal)}, headers=HTMX)
    assert response.status_code == 200
    assert b'id="thread-links"' in response.content and b"<html" not in response.content
    link = ThreadLink.objects.get(thread=thread, deal=deal)
    assert (link.state, link.rule, link.created_by) == (ThreadLink.State.LINKED, "manual", alice)

    response = client.post(reverse("mailsync:thread_unlink", args=[thread.pk]), {"target": target(deal)}, headers=HTMX)
    assert b"Stays unlinked for later replies" in response.content
    link.refresh_from_db()
    assert link.state == ThreadLink.State.UNLINKED


def test_link_redirects_without_htmx_and_refuses_bad_targets(world, alice, charlie):
    thread = world["private"]
    client = client_for(alice)
    url = reverse("mailsync:thread_link", args=[thread.pk])
    response = client.post(url, {"target": target(world["team_deal"])})
    assert response.status_code == 302 and response["Location"] == reverse("mailsync:thread_detail", args=[thread.pk])
    assert client.post(url, {"target": "deal:abc"}).status_code == 302  # a message, nothing linked
    assert client.post(url, {"target": "bogus:1"}, headers=HTMX).status_code == 400
    hidden = DealFactory(owner=charlie, visibility=Visibility.OWNER)
    assert client.post(url, {"target": target(hidden)}).status_code == 404
    assert not ThreadLink.objects.filter(thread=thread, deal=hidden).exists()
    assert client.get(url).status_code == 405


def test_accept_suggestion(world, alice):
    thread = world["private"]
    suggestion = world["suggestions"][thread]
    response = client_for(alice).post(
        reverse("mailsync:thread_accept_suggestion", args=[thread.pk, suggestion.pk]), headers=HTMX
    )
    assert response.status_code == 200
    suggestion.refresh_from_db()
    assert (suggestion.state, suggestion.rule) == (ThreadLink.State.LINKED, "manual")
    # A suggestion of another thread is not reachable through this one.
    other = world["suggestions"][world["shared"]]
    url = reverse("mailsync:thread_accept_suggestion", args=[thread.pk, other.pk])
    assert client_for(alice).post(url).status_code == 404


def test_visibility_switch(world, alice):
    thread = world["private"]
    url = reverse("mailsync:thread_visibility", args=[thread.pk])
    client = client_for(alice)
    response = client.post(url, {"visibility": "shared"}, headers=HTMX)
    assert response.status_code == 200 and b'id="thread-links"' in response.content
    thread.refresh_from_db()
    assert thread.visibility == "shared"
    assert client.post(url, {"visibility": "everyone"}, headers=HTMX).status_code == 400
    thread.refresh_from_db()
    assert thread.visibility == "shared"
    assert client.get(url).status_code == 405


def test_attachment_download(world, alice):
    attachment = world["attachments"][world["private"]]
    response = client_for(alice).get(reverse("mailsync:attachment_download", args=[attachment.pk]))
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"%PDF-1.4 test attachment"
    assert response["Content-Disposition"].startswith('attachment; filename="private.pdf"')
    assert "no-store" in response["Cache-Control"]
    assert client_for(alice).post(reverse("mailsync:attachment_download", args=[attachment.pk])).status_code == 405


def test_missing_attachment_file_is_a_404_not_a_crash(world, alice):
    attachment = world["attachments"][world["private"]]
    attachment.file.delete(save=False)
    response = client_for(alice).get(reverse("mailsync:attachment_download", args=[attachment.pk]))
    assert response.status_code == 404


# --- Blocked addresses ----------------------------------------------------------------------------------


def test_block_preview_then_confirm(alice):
    hidden = create_thread(alice, sender="promo@spam2.example")
    create_thread(alice, sender="promo@spam2.example", cc=["ann@acme.example"])
    client = client_for(alice)
    url = reverse("mailsync:blocked_list")
    assert client.get(url).status_code == 200

    preview = client.post(url, {"pattern": "@SPAM2.example"}, headers=HTMX)
    assert preview.status_code == 200 and b"<html" not in preview.content
    assert preview.context["preview_count"] == 1
    assert b'id="block-preview-count">1<' in preview.content
    assert not BlockedAddress.objects.filter(user=alice).exists()

    done = client.post(url, {"pattern": "@spam2.example", "confirm": "yes"})
    assert done.status_code == 302
    assert BlockedAddress.objects.get(user=alice).pattern == "@spam2.example"
    assert list(EmailMessage.objects.filter(is_blocked=True)) == list(hidden.messages.all())
    assert b"@spam2.example" in client.get(url).content


def test_block_bad_input_keeps_what_was_typed(alice):
    response = client_for(alice).post(reverse("mailsync:blocked_list"), {"pattern": "not a pattern", "confirm": "yes"})
    assert response.status_code == 200
    assert "is neither an email address" in response.content.decode()
    assert 'value="not a pattern"' in response.content.decode()
    assert not BlockedAddress.objects.exists()


def test_unblock(alice):
    message = create_thread(alice, sender="x@spam3.example").messages.get()
    client = client_for(alice)
    client.post(reverse("mailsync:blocked_list"), {"pattern": "x@spam3.example", "confirm": "yes"})
    blocked = BlockedAddress.objects.get()
    assert client.get(reverse("mailsync:blocked_remove", args=[blocked.pk])).status_code == 405
    response = client.post(reverse("mailsync:blocked_remove", args=[blocked.pk]), headers=HTMX)
    assert response.status_code == 200 and b"no longer blocked" in response.content
    message.refresh_from_db()
    assert not message.is_blocked and not BlockedAddress.objects.exists()


# --- Clean-up -------------------------------------------------------------------------------------------


def test_cleanup_preview_confirmation_and_result(world, alice):
    stranger = create_thread(alice, sender="x@newsletter.example")
    client = client_for(alice)
    url = reverse("mailsync:cleanup")
    page = client.get(url)
    assert page.status_code == 200 and page.context["preview_count"] == 1
    assert b'id="cleanup-preview-count">1<' in page.content

    refused = client.post(url, {}, headers=HTMX)
    assert refused.status_code == 400 and b"<html" not in refused.content
    assert not EmailMessage.objects.filter(deleted_at__isnull=False).exists()

    done = client.post(url, {"confirm": "yes"}, headers=HTMX)
    assert done.status_code == 200 and b"1 email not related to contacts removed" in done.content
    assert list(EmailMessage.objects.filter(deleted_at__isnull=False)) == list(stranger.messages.all())
    assert client.get(reverse("mailsync:thread_detail", args=[stranger.pk])).status_code == 404
    assert client.get(reverse("mailsync:thread_detail", args=[world["private"].pk])).status_code == 200
    assert client.put(url).status_code == 405
