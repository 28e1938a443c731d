"""How a stored message body is shown in the thread view (SPEC S8, S9).

The stored body_html is already sanitised (parsing.sanitize_html: no scripts, no handlers, remote image
URLs parked in data-remote-src). Here, for one viewer:
- remote images stay blocked unless the viewer asked to see them; then data-remote-src becomes src and
  the result goes through the same sanitiser again, so only http(s) image URLs survive;
- inline images (src="cid:...") point at the access-checked attachment download of the matching
  Attachment (Content-ID), so they show inline and only for people who may see the thread;
- the body becomes the srcdoc document of a sandboxed iframe (no allow-scripts), written right-to-left
  or left-to-right by the browser (dir="auto").
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from urllib.parse import unquote

from django.urls import reverse

from mailsync.models import Attachment, EmailMessage
from mailsync.sync import parsing

_REMOTE_SRC = re.compile(r' data-remote-src="([^"]*)"')
_CID_SRC = re.compile(r' src="cid:([^"]*)"', re.IGNORECASE)

# Never allow-scripts. allow-same-origin lets inline images load with the viewer's session (a frame of an
# opaque origin gets no SameSite cookies) and lets the page size the frame to its content; with scripts
# off in the frame nothing in the mail can use that origin. Links open in a new, unsandboxed tab.
FRAME_SANDBOX = "allow-same-origin allow-popups allow-popups-to-escape-sandbox"

FRAME_CSS = (
    "html{color-scheme:light}"
    "body{margin:0;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1f2328;"
    "overflow-wrap:anywhere}"
    "img{max-width:100%;height:auto}"
    "table{max-width:100%}"
    "pre{white-space:pre-wrap}"
    "blockquote{margin:0 0 0 .5rem;padding-inline-start:.75rem;border-inline-start:3px solid #e3e6ea;color:#555}"
)


def normalize_content_id(value: str) -> str:
    """ "<Part1.ABC@x>", "part1.abc@x" and the %-encoded form of a cid: URL (RFC 2392) compare equal."""
    return unquote(html.unescape(value)).strip().strip("<>").strip().lower()


def inline_image_urls(attachments: Iterable[Attachment]) -> dict[str, str]:
    """Content-ID -> download URL of the message's attachments that have one."""
    urls: dict[str, str] = {}
    for attachment in attachments:
        if attachment.content_id:
            key = normalize_content_id(attachment.content_id)
            urls.setdefault(key, reverse("mailsync:attachment_download", args=[attachment.pk]))
    return urls


def allow_remote_images(body_html: str) -> str:
    """Restore the remote image URLs the sanitiser parked, and sanitise again (only http(s) survive)."""
    restored = _REMOTE_SRC.sub(lambda match: f' src="{match.group(1)}"', body_html)
    # The same policy parsing uses; sanitize_html itself would park the URLs again.
    return parsing.clean_markup(restored)


def point_inline_images(body_html: str, urls: dict[str, str]) -> str:
    """cid: image sources -> the attachment download URL; an unknown Content-ID loads nothing."""
    if "cid:" not in body_html.lower():
        return body_html

    def replace(match: re.Match) -> str:
        url = urls.get(normalize_content_id(match.group(1)))
        return f' src="{html.escape(url)}"' if url else ""

    return _CID_SRC.sub(replace, body_html)


def body_for_viewer(message: EmailMessage, *, show_remote_images: bool) -> str:
    """The message's HTML body as this viewer sees it (still sanitised; inline images resolved)."""
    body = message.body_html
    if not body:
        return ""
    if show_remote_images and message.has_remote_images:
        body = allow_remote_images(body)
    return point_inline_images(body, inline_image_urls(message.attachments.all()))


def frame_document(body_html: str) -> str:
    """The srcdoc of the message frame. The template escapes it into the attribute."""
    return (
        '<!doctype html><html><head><meta charset="utf-8"><base target="_blank">'
        f"<style>{FRAME_CSS}</style></head>"
        f'<body dir="auto">{body_html}</body></html>'
    )


def content_security_policy(*, remote_images: bool) -> str:
    """The thread page's policy. A srcdoc frame inherits it: no script runs there even if the sanitiser
    missed one, and images load only from this site (inline attachments) unless the viewer allowed
    remote images on this page load."""
    images = "'self' data: https: http:" if remote_images else "'self' data:"
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self' 'unsafe-inline'",
            f"img-src {images}",
            "object-src 'none'",
            "base-uri 'self'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )
