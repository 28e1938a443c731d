"""The thread view with real emails (ingested through parsing + the nh3 sanitiser): hostile HTML, remote
images blocked until allowed, inline images, right-to-left text (S9), attachments (S8), read state."""

import re
from html.parser import HTMLParser

import pytest
from django.urls import NoReverseMatch, reverse

from conftest import client_for
from crm.models import Visibility
from mailsync.models import Attachment, EmailMessage, EmailThread, MailSettings, ThreadLink
from mailsync.workspace import display
from tests.factories import DealFactory
from tests.mail_factories import AttachmentFactory, EmailAccountFactory, create_message, create_thread
from tests.mail_samples import PIXEL_PNG, hostile_email, ingest, inline_image_email, rtl_email

pytestmark = pytest.mark.django_db

TRACKER = "https://tracker.example/open.gif?id=42"


@pytest.fixture(autouse=True)
def media_in_tmp(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path


@pytest.fixture
def account(alice):
    return EmailAccountFactory(user=alice)


class Page(HTMLParser):
    """The parts of a thread page the tests look at: frames (sandbox, srcdoc) and elements with dir."""

    def __init__(self, html: str):
        super().__init__()
        self.frames: list[dict] = []
        self.dir_auto: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "iframe":
            self.frames.append(attributes)
        if attributes.get("dir") == "auto":
            self.dir_auto.append(tag)


def body_of(document: str) -> str:
    """The mail's part of a frame document (after our own head)."""
    return document.split('<body dir="auto">', 1)[1]


def loads_tracker(document: str) -> bool:
    """A live src (not the parked data-remote-src) pointing at the tracker."""
    return re.search(r'(?<![-\w])src="https://tracker\.example', document) is not None


def open_thread(user, thread, query: str = ""):
    response = client_for(user).get(reverse("mailsync:thread_detail", args=[thread.pk]) + query)
    assert response.status_code == 200
    return response, Page(response.content.decode())


def test_hostile_html_is_shown_without_anything_that_runs(alice, account):
    thread = ingest(account, hostile_email(to=alice.email))
    response, page = open_thread(alice, thread)

    assert len(page.frames) == 1
    frame = page.frames[0]
    assert "allow-scripts" not in frame["sandbox"]
    document = frame["srcdoc"]
    assert "Quarterly numbers are attached." in document
    lowered = body_of(document).lower()
    for needle in ("<script", "onerror", "onload", "javascript:", "<iframe", "<object", "<form", "<meta", "url("):
        assert needle not in lowered, needle
    assert "evil.example" not in lowered  # the <base>, the form target and the CSS image are all gone
    # Nothing of the payload reaches the page itself either.
    assert "__pwned" not in response.content.decode().replace(document, "")

    policy = response["Content-Security-Policy"]
    script_src = re.search(r"script-src ([^;]*)", policy).group(1)
    assert script_src.strip() == "'self'"
    assert "img-src 'self' data:;" in policy + ";"
    assert "frame-ancestors 'none'" in policy
    assert response["Referrer-Policy"] == "same-origin"  # nothing to other sites; Origin for its own forms


def test_remote_images_are_blocked_until_the_viewer_allows_them(alice, account):
    thread = ingest(account, hostile_email(to=alice.email, remote_image_url=TRACKER))
    message = thread.messages.get()
    assert message.has_remote_images

    response, page = open_thread(alice, thread)
    document = page.frames[0]["srcdoc"]
    assert not loads_tracker(document) and 'data-remote-src="https://tracker.example' in document
    assert "Remote images are hidden to protect your privacy" in response.content.decode()
    assert "https:" not in response["Content-Security-Policy"]

    response, page = open_thread(alice, thread, f"?images={message.pk}")
    document = page.frames[0]["srcdoc"]
    assert ' src="https://tracker.example/open.gif?id=42"' in document
    assert "<script" not in document.lower() and "onerror" not in document.lower()
    assert "Remote images are hidden" not in response.content.decode()
    assert "img-src 'self' data: https: http:" in response["Content-Security-Policy"]

    # "all" works too; a message id of another thread changes nothing here.
    assert loads_tracker(open_thread(alice, thread, "?images=all")[1].frames[0]["srcdoc"])
    other = ingest(account, hostile_email(to=alice.email, remote_image_url=TRACKER + "&other"))
    assert not loads_tracker(open_thread(alice, other, f"?images={message.pk}")[1].frames[0]["srcdoc"])


def test_allowing_images_sanitises_again():
    # What the sanitiser stores never carries a dangerous URL; if it ever did, "show images" would not
    # turn it into a live one.
    body = '<img data-remote-src="javascript:alert(1)"><img data-remote-src="https://ok.example/a.png" onerror="x()">'
    shown = display.allow_remote_images(body)
    assert "javascript:" not in shown and "onerror" not in shown
    assert 'src="https://ok.example/a.png"' in shown


def test_inline_image_points_to_the_attachment_and_is_served_only_to_who_may_see(
    alice, bob, charlie, admin_user, account
):
    thread = ingest(account, inline_image_email(to=alice.email))
    logo = Attachment.objects.get(message__thread=thread, filename="logo.png")
    assert logo.is_inline
    url = reverse("mailsync:attachment_download", args=[logo.pk])

    response, page = open_thread(alice, thread)
    assert f'<img src="{url}" alt="logo">' in page.frames[0]["srcdoc"]
    html = response.content.decode()
    assert "quote.pdf" in html and "logo.png" not in html  # inline images are shown, not listed
    assert b"".join(client_for(alice).get(url).streaming_content) == PIXEL_PNG
    for other in (bob, charlie, admin_user):  # a private thread: nobody else, admins included
        assert client_for(other).get(url).status_code == 404


def test_an_unknown_content_id_loads_nothing(alice, account):
    thread = create_thread(alice, sender="ann@acme.example", body_html='<p>x</p><img src="cid:missing@x" alt="gone">')
    _response, page = open_thread(alice, thread)
    assert "cid:" not in page.frames[0]["srcdoc"] and "src=" not in body_of(page.frames[0]["srcdoc"])


def test_right_to_left_message_has_dir_auto(alice, account):
    thread = ingest(account, rtl_email(to=alice.email))
    response, page = open_thread(alice, thread)
    html = response.content.decode()
    assert '<h1 dir="auto">הצעת מחיר לשנה הבאה</h1>' in html
    document = page.frames[0]["srcdoc"]
    assert '<body dir="auto"><p>שלום, מצורפת הצעת המחיר.</p>' in document
    assert "<bdi>דנה</bdi>" in html  # the sender's name keeps its direction among left-to-right text

    text_only = create_thread(alice, sender="x@example.org", body_text="مرحبا، هذا عرض السعر")
    _response, page = open_thread(alice, text_only)
    assert not page.frames and "div" in page.dir_auto


def test_attachment_download_headers_and_safe_name(alice, bob, charlie, admin_user, account):
    thread = create_thread(alice, sender="ann@acme.example")
    attachment = AttachmentFactory(
        message=thread.messages.get(),
        filename='../../etc/pass"wd\r\n.html',
        content_type="text/html",
        file__data=b"<script>alert(1)</script>",
    )
    url = reverse("mailsync:attachment_download", args=[attachment.pk])
    response = client_for(alice).get(url)
    assert response.status_code == 200
    disposition = response["Content-Disposition"]
    assert disposition.startswith("attachment;")
    assert "/" not in disposition and "\r" not in disposition and "\n" not in disposition
    assert response["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in response["Content-Security-Policy"]
    for other in (bob, charlie, admin_user):
        assert client_for(other).get(url).status_code == 404


def test_shared_thread_attachment_for_a_teammate_who_can_see_the_record(alice, bob, charlie):
    thread = create_thread(alice, sender="ann@acme.example", visibility=EmailThread.Visibility.SHARED)
    deal = DealFactory(owner=alice, visibility=Visibility.TEAM)
    ThreadLink.objects.create(thread=thread, deal=deal, state=ThreadLink.State.LINKED, rule="manual")
    attachment = AttachmentFactory(message=thread.messages.get())
    url = reverse("mailsync:attachment_download", args=[attachment.pk])
    assert client_for(bob).get(url).status_code == 200
    assert client_for(charlie).get(url).status_code == 404
    assert f'href="{url}"' in client_for(bob).get(thread.get_absolute_url()).content.decode()


def test_opening_marks_read_for_the_owner_only(alice, bob):
    thread = create_thread(alice, sender="ann@acme.example", visibility=EmailThread.Visibility.SHARED)
    deal = DealFactory(owner=alice, visibility=Visibility.TEAM)
    ThreadLink.objects.create(thread=thread, deal=deal, state=ThreadLink.State.LINKED, rule="manual")
    create_message(thread, sender="ann@acme.example", to=[alice.email])
    assert EmailMessage.objects.filter(thread=thread, is_read=False).count() == 2

    open_thread(bob, thread)
    assert EmailMessage.objects.filter(thread=thread, is_read=False).count() == 2
    open_thread(alice, thread)
    assert not EmailMessage.objects.filter(thread=thread, is_read=False).exists()


def test_addresses_follow_the_email_link_preference(alice):
    thread = create_thread(alice, sender="ann@acme.example")
    MailSettings.objects.create(user=alice, email_link_preference=MailSettings.LinkPreference.MAILTO)
    html = open_thread(alice, thread)[0].content.decode()
    assert 'href="mailto:ann@acme.example"' in html

    MailSettings.objects.filter(user=alice).update(email_link_preference=MailSettings.LinkPreference.CRM)
    html = open_thread(alice, thread)[0].content.decode()
    try:
        compose = reverse("mailsync:compose_new")
    except NoReverseMatch:  # the mail workspace is not installed: mailto: is the fallback
        assert 'href="mailto:ann@acme.example"' in html
    else:
        # The CRM's composer, To filled in (W6).
        assert f'href="{compose}?to=ann%40acme.example"' in html
        assert 'href="mailto:ann@acme.example"' not in html


def test_message_subjects_and_names_are_escaped(alice):
    thread = create_thread(
        alice,
        sender="ann@acme.example",
        subject="<img src=x onerror=alert(1)>",
        from_name="<b>Ann</b>",
        body_text="plain",
    )
    html = open_thread(alice, thread)[0].content.decode()
    assert "<img src=x onerror=alert(1)>" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<b>Ann</b>" not in html


def test_a_reply_shows_its_own_subject_only_when_it_says_something_new(alice):
    thread = create_thread(alice, sender="ann@acme.example", subject="Anvils for 2027", body_text="first")
    create_message(thread, sender="ann@acme.example", subject="RE: Anvils for 2027", body_text="second")
    create_message(thread, sender="ann@acme.example", subject="Re: Anvils for 2027 (revised price)", body_text="3")
    html = open_thread(alice, thread)[0].content.decode()
    assert "RE: Anvils for 2027" not in html  # just a reply prefix: no extra line
    assert "Re: Anvils for 2027 (revised price)" in html


def test_show_images_in_every_message_when_several_hide_some(alice):
    parked = '<p>Hi</p><img data-remote-src="https://tracker.example/a.gif" alt="a">'
    thread = create_thread(alice, sender="ann@acme.example", body_html=parked, has_remote_images=True)
    assert "Show images in every message" not in open_thread(alice, thread)[0].content.decode()
    create_message(thread, sender="ann@acme.example", to=[alice.email], body_html=parked, has_remote_images=True)
    response, page = open_thread(alice, thread)
    assert 'href="?images=all"' in response.content.decode()
    assert response.content.decode().count("Remote images are hidden") == 2
    response, page = open_thread(alice, thread, "?images=all")
    assert "Show images in every message" not in response.content.decode()
    assert all(loads_tracker(frame["srcdoc"]) for frame in page.frames) and len(page.frames) == 2


def test_thread_page_queries_do_not_grow_with_messages(alice):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    thread = create_thread(alice, sender="ann@acme.example", body_html="<p>first</p>")
    client = client_for(alice)

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(thread.get_absolute_url()).status_code == 200
        return len(captured)

    def add_messages(count: int) -> None:
        for _ in range(count):
            message = create_message(thread, sender="ann@acme.example", to=[alice.email], cc=["bo@acme.example"])
            AttachmentFactory(message=message)

    add_messages(2)
    queries()  # the first request marks the thread read; measure the steady state
    few = queries()
    add_messages(10)
    queries()
    assert queries() == few


@pytest.mark.dovecot
def test_opening_a_synced_thread_marks_it_read_on_the_server_too(
    alice, dovecot, mail_user, django_capture_on_commit_callbacks
):
    from mailsync.sync import engine
    from tests.mailservers import make_message
    from tests.test_sync import make_account

    account = make_account(alice, mail_user, dovecot)
    uid = dovecot.append(mail_user, make_message("Read me"))
    engine.sync_account(account.pk)
    message = EmailMessage.objects.get(account=account, subject="Read me")
    assert not message.is_read and "\\Seen" not in dovecot.flags(mail_user, uid)

    with django_capture_on_commit_callbacks(execute=True):  # Celery is eager in the test suite
        open_thread(alice, message.thread)
    message.refresh_from_db()
    assert message.is_read
    assert "\\Seen" in dovecot.flags(mail_user, uid)  # read state is two-way: the next sync keeps it read
    engine.sync_account(account.pk)
    message.refresh_from_db()
    assert message.is_read
