"""The thread view in real Chromium: a hostile HTML email runs nothing, remote images load only after
"Show images", inline images show, right-to-left text is laid out right to left (S8, S9)."""

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import browser_login
from tests.mail_factories import EmailAccountFactory
from tests.mail_samples import PIXEL_PNG, hostile_email, ingest, inline_image_email, rtl_email

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


class TrackerServer:
    """A stand-in for a sender's tracking server: records every image request it gets."""

    def __init__(self):
        self.hits: list[str] = []
        self.referers: list[str | None] = []
        hits, referers = self.hits, self.referers

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                referers.append(self.headers.get("Referer"))
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(PIXEL_PNG)))
                self.end_headers()
                self.wfile.write(PIXEL_PNG)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def tracker():
    with TrackerServer() as server:
        yield server


@pytest.fixture
def account(alice):
    return EmailAccountFactory(user=alice)


def pwned_everywhere(page) -> list:
    """window.__pwned in the page and in every frame, read from inside each frame and from the page."""
    values = [page.evaluate("window.__pwned")]
    for frame in page.frames:
        values.append(frame.evaluate("window.__pwned"))
    values.extend(
        page.evaluate(
            "Array.from(document.querySelectorAll('iframe')).map(f => f.contentWindow && f.contentWindow.__pwned)"
        )
    )
    return values


def test_a_script_payload_does_not_run_and_the_text_shows(page, alice, account, tracker):
    thread = ingest(account, hostile_email(to=alice.email, remote_image_url=f"{tracker.url}/open.gif"))
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    browser_login(page, alice)

    response = page.goto(thread.get_absolute_url())
    assert "script-src 'self'" in response.headers["content-security-policy"]
    body = page.frame_locator("iframe.message-frame").locator("text=Quarterly numbers are attached.")
    body.wait_for()
    assert body.is_visible()
    # Sized to its content by the page's own script (not left at the fixed fallback height).
    content_height = page.evaluate(
        "document.querySelector('iframe.message-frame').contentDocument.documentElement.getBoundingClientRect().height"
    )
    frame_height = page.locator("iframe.message-frame").bounding_box()["height"]
    assert content_height > 50 and 0 <= frame_height - content_height <= 12, (frame_height, content_height)

    page.frame_locator("iframe.message-frame").locator("text=Open the report").click()  # the javascript: link
    page.wait_for_timeout(500)
    assert pwned_everywhere(page) == [None] * len(pwned_everywhere(page))
    assert len(page.frames) >= 2  # the checks above did look inside the message frame
    assert dialogs == []
    assert tracker.hits == []  # the remote image was not loaded: the sender cannot tell the mail was opened
    assert "Remote images are hidden to protect your privacy" in page.inner_text("#thread")

    page.click("text=Show images")
    page.wait_for_url("**?images=*")
    page.frame_locator("iframe.message-frame").locator("img[alt=tracker]").wait_for(state="attached")
    page.wait_for_function(
        "document.querySelector('iframe.message-frame').contentDocument.querySelector('img[alt=tracker]').complete"
    )
    assert tracker.hits == ["/open.gif"]
    assert tracker.referers == [None]  # the sender does not learn which CRM page showed the mail
    assert pwned_everywhere(page) == [None] * len(pwned_everywhere(page))
    assert dialogs == []


def test_inline_image_and_right_to_left_text(page, alice, account):
    logo_thread = ingest(account, inline_image_email(to=alice.email))
    rtl_thread = ingest(account, rtl_email(to=alice.email))
    browser_login(page, alice)

    page.goto(logo_thread.get_absolute_url())
    frame = page.frame_locator("iframe.message-frame")
    frame.locator("text=See our new logo").wait_for()
    page.wait_for_function(
        "(() => { const img = document.querySelector('iframe.message-frame').contentDocument.querySelector('img');"
        " return img && img.complete && img.naturalWidth === 1; })()"
    )  # served by the access-checked download, with the viewer's session
    assert page.locator("a", has_text="quote.pdf").is_visible()

    page.goto(rtl_thread.get_absolute_url())
    page.frame_locator("iframe.message-frame").locator("text=תודה, דנה").wait_for()
    direction = page.evaluate(
        "getComputedStyle(document.querySelector('iframe.message-frame').contentDocument.body).direction"
    )
    assert direction == "rtl"
    assert page.evaluate("getComputedStyle(document.querySelector('#thread h1')).direction") == "rtl"

    # On a record's timeline the Hebrew subject keeps to itself: the date after it is not pulled into
    # its right-to-left run (it once read "23 · <subject> Nov 2026").
    from mailsync.models import ThreadLink
    from tests.factories import PersonFactory

    dana = PersonFactory(owner=alice, first_name="Dana", last_name="Levi")
    ThreadLink.objects.create(thread=rtl_thread, person=dana, state=ThreadLink.State.LINKED, rule="manual")
    page.goto(dana.get_absolute_url())
    item = page.locator("#timeline li").first
    item.locator("time").wait_for()
    subject_box = item.locator("strong").bounding_box()
    time_box = item.locator("time").bounding_box()
    assert time_box["x"] >= subject_box["x"] + subject_box["width"] - 1, (subject_box, time_box)
    assert item.locator("div.muted[dir=auto]").count() == 1


def test_opening_a_thread_from_a_boosted_link_loads_it_as_its_own_document(page, alice, account):
    from mailsync.models import ThreadLink
    from tests.factories import PersonFactory

    thread = ingest(account, hostile_email(to=alice.email))
    ann = PersonFactory(owner=alice, first_name="Mallory", last_name="Evil")
    ThreadLink.objects.create(thread=thread, person=ann, state=ThreadLink.State.LINKED, rule="manual")
    browser_login(page, alice)
    page.goto(ann.get_absolute_url())
    responses = []
    page.on("response", lambda response: responses.append(response))
    page.click("#timeline >> text=Quarterly numbers")  # hx-boost on <body> turns this into an ajax request
    # The timeline's link says where "Back" leads.
    opened = f"{thread.get_absolute_url()}?back={ann.get_absolute_url()}"
    page.wait_for_url(f"**{opened}")
    page.frame_locator("iframe.message-frame").locator("text=Quarterly numbers are attached.").wait_for()

    # The server answered the boosted request with HX-Redirect; the browser then loaded the page itself,
    # so its Content-Security-Policy is in force (a swapped-in body would keep the person page's policy).
    navigation = page.evaluate("performance.getEntriesByType('navigation')[0].name")
    assert navigation.endswith(opened)
    documents = [r for r in responses if r.url.endswith(opened) and r.request.is_navigation_request()]
    assert documents and "script-src 'self'" in documents[-1].headers["content-security-policy"]
    assert pwned_everywhere(page) == [None] * len(pwned_everywhere(page))

    # Leaving by a boosted link: htmx keeps no copy of the private mail in its history cache (this htmx
    # keeps it in sessionStorage; older versions used localStorage).
    page.click("nav >> text=People")
    page.wait_for_url(re.compile(r"/people/$"))  # the list (the thread's own URL says ?back=/people/1/)
    caches = page.evaluate(
        "[sessionStorage.getItem('htmx-history-cache') || '', localStorage.getItem('htmx-history-cache') || '']"
    )
    assert not any("Quarterly numbers" in cache for cache in caches)

    # Back: the browser loads the thread again as a document of its own, with its policy.
    responses.clear()
    page.go_back()
    page.wait_for_url(f"**{opened}")
    page.frame_locator("iframe.message-frame").locator("text=Quarterly numbers are attached.").wait_for()
    documents = [r for r in responses if r.url.endswith(opened) and r.request.is_navigation_request()]
    assert documents and "script-src 'self'" in documents[-1].headers["content-security-policy"]
    assert page.evaluate("sessionStorage.getItem('htmx-history-cache')") is None
