"""Open and click tracking (W5): signed URLs (tampered, unknown, replayed), no open redirect, one row per hit,
rate limits, each class of the people-or-machines classifier, and where the result shows (and to whom)."""

from __future__ import annotations

import email
import email.policy
import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from mailsync.models import EmailMessage, MailSettings, OutgoingMessage, TrackedLink, TrackingEvent
from mailsync.sending import services, tracking
from mailsync.sending.tracking import Hit, MessageFacts, classify
from mailsync.sync.ingest import ingest_raw
from tests.factories import PersonFactory
from tests.mail_factories import EmailAccountFactory, ThreadLinkFactory

Verdict = TrackingEvent.Verdict
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
BODY = '<p>See <a href="https://shop.example/pricing?a=1&amp;b=2">pricing</a> and <a href="http://x.example/">x</a></p>'


@pytest.fixture
def tracked(alice, settings):
    """A tracked message of alice's, queued (links rewritten, pixel added) and then sent, stored like sent mail."""
    settings.CRM_PUBLIC_URL = "https://crm.example.com"
    account = EmailAccountFactory(user=alice)
    draft = services.create_draft(user=alice)
    draft = services.save_draft(
        outgoing=draft, to="bob@customer.example", cc="", bcc="", subject="Offer", body_html=BODY, tracking=True
    )
    queued = services.queue_message(outgoing=draft, sender_ip="198.51.100.7")
    ingest_raw(account, [bytes(queued.mime)])
    sent_copy = EmailMessage.objects.get(message_id=queued.message_id)
    delivered = timezone.now() - timedelta(minutes=5)
    OutgoingMessage.objects.filter(pk=queued.pk).update(
        state=OutgoingMessage.State.SENT, delivered_at=delivered, sent_at=delivered, sent_message=sent_copy
    )
    return OutgoingMessage.objects.get(pk=queued.pk)


def urls_in(outgoing: OutgoingMessage) -> tuple[str, list[str]]:
    html = email.message_from_bytes(bytes(outgoing.mime), policy=email.policy.default).get_body(("html",)).get_content()
    pixel = re.search(r'<img src="([^"]+)"', html).group(1)
    links = re.findall(r'<a href="([^"]+)"', html)
    return pixel, links


def path_of(url: str) -> str:
    return url.removeprefix("https://crm.example.com")


# --- queue time --------------------------------------------------------------------------------------


def test_links_are_rewritten_at_queue_time_and_destinations_stay_on_the_server(tracked):
    pixel, links = urls_in(tracked)
    assert pixel == tracking.open_url(tracked.pk) and pixel.startswith("https://crm.example.com/t/o/")
    assert links == [tracking.click_url(tracked.pk, 0), tracking.click_url(tracked.pk, 1)]
    assert all("shop.example" not in link and "x.example" not in link for link in links)
    stored = list(TrackedLink.objects.filter(outgoing=tracked).values_list("index", "url", "label"))
    assert stored == [(0, "https://shop.example/pricing?a=1&b=2", "pricing"), (1, "http://x.example/", "x")]


def test_untracked_mail_has_no_pixel_and_the_setting_is_the_composer_default(alice):
    EmailAccountFactory(user=alice)
    plain = services.create_draft(user=alice)
    assert plain.tracking is False
    plain = services.save_draft(outgoing=plain, to="bob@customer.example", cc="", bcc="", subject="x", body_html=BODY)
    queued = services.queue_message(outgoing=plain)
    assert b"/t/o/" not in bytes(queued.mime) and b"https://shop.example/pricing" in bytes(queued.mime).replace(
        b"=\r\n", b""
    )
    MailSettings.objects.update_or_create(user=alice, defaults={"track_by_default": True})
    assert services.create_draft(user=alice).tracking is True


# --- the endpoints ------------------------------------------------------------------------------------


def test_signed_open_records_one_classified_row_and_answers_a_gif(client, tracked):
    pixel, _links = urls_in(tracked)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(path_of(pixel), HTTP_USER_AGENT=BROWSER, REMOTE_ADDR="203.0.113.9")
    assert response.status_code == 200 and response["Content-Type"] == "image/gif"
    assert "no-store" in response["Cache-Control"]
    assert len(queries) == 2  # one SELECT, one INSERT
    event = TrackingEvent.objects.get()
    assert (event.kind, event.verdict, event.network) == ("open", Verdict.PERSON, "203.0.113.0/24")


def test_tampered_unknown_and_borrowed_tokens_get_a_plain_404_and_no_row(client, tracked):
    pixel, links = urls_in(tracked)
    good = path_of(links[0])
    token = good.rstrip("/").rsplit("/", 1)[1]
    tampered = good[:-1] + ("A" if good[-1] != "A" else "B")
    other_index = good.replace(f"/{tracked.pk}/0/", f"/{tracked.pk}/1/")  # index 1 with link 0's token
    unknown_message = good.replace(f"/t/c/{tracked.pk}/", f"/t/c/{tracked.pk + 1000}/")
    open_with_click_token = f"/t/o/{tracked.pk}/{token}.gif"
    for path in (tampered, other_index, unknown_message, open_with_click_token, path_of(pixel)[:-8] + "x.gif"):
        response = client.get(path, HTTP_USER_AGENT=BROWSER)
        assert response.status_code == 404, path
        assert "Location" not in response and response["Content-Type"].startswith("text/plain")
    assert not TrackingEvent.objects.exists()


def test_click_redirects_only_to_the_stored_destination(client, tracked):
    _pixel, links = urls_in(tracked)
    response = client.get(path_of(links[0]), HTTP_USER_AGENT=BROWSER, REMOTE_ADDR="203.0.113.9")
    assert response.status_code == 302 and response["Location"] == "https://shop.example/pricing?a=1&b=2"
    event = TrackingEvent.objects.get()
    assert event.kind == "click" and event.link.label == "pricing" and event.verdict == Verdict.PERSON
    # A destination that is not http(s) (a row changed behind the CRM's back) is never redirected to.
    TrackedLink.objects.filter(outgoing=tracked, index=1).update(url="javascript:alert(1)")
    assert client.get(path_of(links[1]), HTTP_USER_AGENT=BROWSER).status_code == 404


def test_replayed_urls_count_again_until_the_rate_limit(client, tracked, settings):
    settings.MAILSYNC_TRACKING_RATE_LIMIT = 3
    pixel, _links = urls_in(tracked)
    for _ in range(5):
        response = client.get(path_of(pixel), HTTP_USER_AGENT=BROWSER, REMOTE_ADDR="203.0.113.9")
        assert response.status_code == 200  # answered alike, over the limit too
    assert TrackingEvent.objects.count() == 3
    client.get(path_of(pixel), HTTP_USER_AGENT=BROWSER, REMOTE_ADDR="203.0.113.10")  # another address
    assert TrackingEvent.objects.count() == 4


def test_a_draft_or_untracked_message_has_no_live_pixel(client, tracked):
    pixel, _links = urls_in(tracked)
    OutgoingMessage.objects.filter(pk=tracked.pk).update(tracking=False)
    assert client.get(path_of(pixel)).status_code == 404
    assert not TrackingEvent.objects.exists()


def test_the_senders_own_open_is_told_apart(client, alice, bob, tracked):
    pixel, _links = urls_in(tracked)
    client.force_login(alice)
    client.get(path_of(pixel), HTTP_USER_AGENT=BROWSER, REMOTE_ADDR="203.0.113.9")
    client.force_login(bob)  # a colleague showing the images of the sent copy in the CRM
    client.get(path_of(pixel), HTTP_USER_AGENT=BROWSER, REMOTE_ADDR="203.0.113.11")
    client.logout()
    client.get(path_of(pixel), HTTP_USER_AGENT=BROWSER, REMOTE_ADDR="198.51.100.7")  # where alice sent it from
    assert list(TrackingEvent.objects.values_list("verdict", flat=True)) == [Verdict.SENDER] * 3


# --- the classifier, one class at a time ----------------------------------------------------------------

NOW = timezone.now()
FACTS = MessageFacts(delivered_at=NOW - timedelta(hours=1), sender_ip="198.51.100.7")


@pytest.mark.parametrize(
    ("hit", "facts", "verdict"),
    [
        (Hit("open", "17.58.63.10", BROWSER, NOW), FACTS, Verdict.APPLE_PROXY),
        (Hit("open", "104.28.30.1", "Mozilla/5.0", NOW), FACTS, Verdict.APPLE_PROXY),
        (
            Hit(
                "open",
                "66.249.84.1",
                "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
                NOW,
            ),
            FACTS,
            Verdict.GOOGLE_PROXY,
        ),
        (Hit("click", "40.107.1.2", BROWSER, NOW), FACTS, Verdict.SCANNER),  # Exchange Online Protection
        (Hit("click", "203.0.113.9", "python-requests/2.32", NOW), FACTS, Verdict.SCANNER),
        (Hit("open", "203.0.113.9", "", NOW), FACTS, Verdict.SCANNER),
        (Hit("click", "203.0.113.9", BROWSER, NOW), MessageFacts(NOW - timedelta(seconds=3), None), Verdict.SCANNER),
        (Hit("open", "203.0.113.9", BROWSER, NOW, signed_in_as_sender=True), FACTS, Verdict.SENDER),
        (Hit("open", "198.51.100.7", BROWSER, NOW), FACTS, Verdict.SENDER),
        (Hit("open", "203.0.113.9", BROWSER, NOW, signed_in_as_colleague=True), FACTS, Verdict.SENDER),
        (Hit("open", "203.0.113.9", BROWSER, NOW), MessageFacts(NOW - timedelta(seconds=3), None), Verdict.PERSON),
        (Hit("click", "203.0.113.9", BROWSER, NOW), FACTS, Verdict.PERSON),
    ],
)
def test_each_class_of_the_classifier_with_its_reason(hit, facts, verdict):
    got, reason = classify(hit, facts)
    assert got == verdict and reason


# --- where it shows, and to whom ----------------------------------------------------------------------


def test_thread_sent_list_and_dashboard_show_people_apart_from_machines(client, alice, charlie, tracked):
    pixel, links = urls_in(tracked)
    client.get(path_of(pixel), HTTP_USER_AGENT="Mozilla/5.0", REMOTE_ADDR="17.58.1.1")  # Apple's proxy
    client.get(path_of(pixel), HTTP_USER_AGENT=BROWSER, REMOTE_ADDR="203.0.113.9")  # the recipient
    client.get(path_of(pixel), HTTP_USER_AGENT="Mozilla/5.0 GoogleImageProxy", REMOTE_ADDR="66.249.84.1")
    client.get(path_of(links[0]), HTTP_USER_AGENT=BROWSER, REMOTE_ADDR="203.0.113.9")
    expected = "Opened 3 times (1 likely by a person), clicked &#x27;pricing&#x27;"
    client.force_login(alice)
    thread_html = client.get(reverse("mailsync:thread_detail", args=[tracked.sent_message.thread_id])).content.decode()
    assert expected in thread_html and "Apple Mail Privacy Protection" in thread_html  # the reasons, on hover
    sent_html = client.get(reverse("mailsync:sent")).content.decode()
    assert expected in sent_html
    home_html = client.get(reverse("home")).content.decode()
    assert "Recent activity on your mail" in home_html and "Clicked" in home_html and "Offer" in home_html
    # The timeline of a record the conversation is linked to.
    person = PersonFactory(owner=alice)
    ThreadLinkFactory(thread=tracked.sent_message.thread, person=person)
    assert expected in client.get(person.get_absolute_url()).content.decode()
    # The thread is private: an outsider sees neither it nor its tracking.
    client.force_login(charlie)
    assert client.get(reverse("mailsync:thread_detail", args=[tracked.sent_message.thread_id])).status_code == 404
    assert "Recent activity on your mail" not in client.get(reverse("home")).content.decode()


def test_settings_save_the_tracking_default(client, alice):
    client.force_login(alice)
    response = client.post(
        reverse("mailsync:preferences"),
        {
            "linking_mode": "automatic",
            "default_visibility": "private",
            "email_link_preference": "crm",
            "track_by_default": "on",
        },
    )
    assert response.status_code in (200, 302)
    assert MailSettings.objects.get(user=alice).track_by_default is True
