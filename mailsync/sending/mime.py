"""The bytes of an outgoing message (pure Python: no Django, no database).

`build(...)` returns the Message-ID and the MIME bytes that every attempt sends:
- multipart/alternative text + HTML; inline images as cid: parts of a multipart/related HTML part;
  attachments in multipart/mixed; headers encoded by the email package (RFC 2047 / 2231);
- no header can be injected: subject and display names lose CR, LF and other control characters;
- a reply carries In-Reply-To and References (the first and the last few ids, folded), Thread-Topic and
  Thread-Index (MS-OXOMSG 2.2.1.3, for Outlook's conversation view);
- the HTML is sanitised with nh3 (allow-list) and every block gets dir="auto", so an Arabic or Hebrew
  paragraph reads right to left in the recipient's client (S9).
"""

from __future__ import annotations

import base64
import hashlib
import html as html_lib
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

import nh3

from mailsync.sync.parsing import html_to_text

from .addresses import Recipient, clean_header_text

# References: the thread's first id and the last ones (RFC 5322 3.6.4 allows trimming; clients thread on
# the first and the last few).
MAX_REFERENCES = 10

_TAGS = {
    "a", "b", "blockquote", "br", "code", "div", "em", "h1", "h2", "h3", "hr", "i", "img", "li", "ol", "p",
    "pre", "s", "span", "strong", "sub", "sup", "table", "tbody", "td", "th", "thead", "tr", "u", "ul",
}  # fmt: skip
_ATTRIBUTES = {
    "*": {"dir", "lang", "title"},
    "a": {"href"},
    "img": {"src", "alt", "width", "height"},
    "blockquote": {"type", "cite"},
    "div": {"data-signature"},  # the signature block, so that switching the From account can replace it
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan"},
}
_BLOCK_TAG = re.compile(r"<(p|div|li|blockquote|h1|h2|h3|pre|td|th)(\s[^>]*)?>", re.IGNORECASE)
_REPLY_PREFIX = re.compile(r"^\s*(re|aw|sv|antw|vs)\s*(\[\d+\]|\(\d+\))?\s*:", re.IGNORECASE)
_FORWARD_PREFIX = re.compile(r"^\s*(fwd?|wg|tr|enc|doorst)\s*:", re.IGNORECASE)
_MESSAGE_ID = re.compile(r"<([^<>\s]+)>")


def sanitize_body(html: str) -> str:
    """The editor's HTML -> what may be stored and sent: an allow-list of tags and attributes (no
    scripts, styles, event handlers, forms or frames), links with safe schemes only, dir="auto" on every
    block that has no direction of its own."""
    cleaned = nh3.clean(
        html or "",
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes={"http", "https", "mailto", "cid", "tel"},
        link_rel="noopener noreferrer",
        strip_comments=True,
    )

    def add_dir(match: re.Match) -> str:
        attrs = match.group(2) or ""
        if re.search(r"\sdir\s*=", attrs, re.IGNORECASE):
            return match.group(0)
        return f'<{match.group(1)} dir="auto"{attrs}>'

    return _BLOCK_TAG.sub(add_dir, cleaned).strip()


def reply_subject(subject: str) -> str:
    subject = clean_header_text(subject)
    return subject if _REPLY_PREFIX.match(subject) else f"Re: {subject}".strip()


def forward_subject(subject: str) -> str:
    subject = clean_header_text(subject)
    return subject if _FORWARD_PREFIX.match(subject) else f"Fwd: {subject}".strip()


def message_ids_in(text: str) -> list[str]:
    return _MESSAGE_ID.findall(text or "")


def references_for(parent_references: str, parent_message_id: str) -> list[str]:
    """The parent's References plus the parent, de-duplicated, kept to the first and the last ids."""
    ids: list[str] = []
    for message_id in [*message_ids_in(parent_references), parent_message_id.strip("<> ")]:
        if message_id and message_id not in ids:
            ids.append(message_id)
    if len(ids) > MAX_REFERENCES:
        ids = [ids[0], *ids[-(MAX_REFERENCES - 1) :]]
    return ids


def _filetime(moment: datetime) -> int:
    epoch = datetime(1601, 1, 1, tzinfo=UTC)
    return int((moment - epoch).total_seconds() * 10_000_000)


def thread_index(*, root_id: str, root_date: datetime, now: datetime, reply: bool) -> str:
    """Thread-Index: a 22-byte header block (0x01, the high 40 bits of the conversation's FILETIME, a
    GUID) and, for a reply, a 5-byte child block with the time since then. The GUID comes from the
    thread's first Message-ID, so every reply the CRM sends in one thread shares it."""
    header_time = _filetime(root_date) >> 24
    guid = hashlib.md5(root_id.encode(), usedforsecurity=False).digest()
    value = b"\x01" + header_time.to_bytes(5, "big") + guid
    if reply:
        delta = max(0, _filetime(now) - (header_time << 24))
        code, bits = (0, delta >> 18) if delta < (1 << 49) else (1, delta >> 23)
        word = (code << 31) | (bits & 0x7FFFFFFF)
        value += word.to_bytes(4, "big") + bytes([(secrets.randbelow(16) << 4) | 1])
    return base64.b64encode(value).decode()


def new_content_id() -> str:
    """A fresh Content-ID (without <>) for an inline image of an outgoing message."""
    return f"{secrets.token_hex(8)}@crm"


def new_message_id(from_address: str) -> str:
    """A fresh Message-ID (without <>) in the sender's domain."""
    domain = from_address.rpartition("@")[2].encode("idna").decode() or "localhost"
    return f"{secrets.token_hex(12)}.{int(datetime.now(UTC).timestamp())}@{domain}"


@dataclass(frozen=True)
class Part:
    filename: str
    content_type: str
    data: bytes
    content_id: str = ""  # inline images: referenced as cid:<content_id> in the HTML


@dataclass
class Draft:
    """Everything build() needs; the service fills it from an OutgoingMessage."""

    from_address: str
    from_name: str
    to: list[Recipient]
    cc: list[Recipient] = field(default_factory=list)
    subject: str = ""
    html: str = ""  # sanitised, inline images already as cid:
    quoted_html: str = ""
    quote_header: str = ""  # "On <date>, <name> wrote:" / "Forwarded message"
    attachments: list[Part] = field(default_factory=list)
    inline: list[Part] = field(default_factory=list)
    in_reply_to: str = ""
    references: list[str] = field(default_factory=list)
    thread_root_id: str = ""
    thread_root_date: datetime | None = None


def _address(recipient: Recipient) -> Address:
    local, _, domain = recipient.address.rpartition("@")
    return Address(
        display_name=clean_header_text(recipient.name), username=local, domain=domain.encode("idna").decode()
    )


def body_with_quote(html: str, *, quoted_html: str = "", quote_header: str = "") -> str:
    """The HTML body as sent: what was written, then the quoted original of a reply or forward."""
    body = html or ""
    if quoted_html:
        header = html_lib.escape(quote_header)
        body += (
            f'<br><div dir="auto">{header}</div>'
            f'<blockquote type="cite" dir="auto" style="margin:0 0 0 .8ex;border-left:1px solid #ccc;'
            f'padding-left:1ex">{quoted_html}</blockquote>'
        )
    return body


def full_html(draft: Draft) -> str:
    body = body_with_quote(draft.html, quoted_html=draft.quoted_html, quote_header=draft.quote_header)
    return f'<!DOCTYPE html><html><head><meta charset="utf-8"></head><body><div dir="auto">{body}</div></body></html>'


def full_text(draft: Draft) -> str:
    text = html_to_text(draft.html)
    if draft.quoted_html:
        quoted = "\n".join(f"> {line}" if line else ">" for line in html_to_text(draft.quoted_html).splitlines())
        text += f"\n\n{draft.quote_header}\n{quoted}"
    return text + "\n"


def build(draft: Draft, *, message_id: str, now: datetime) -> bytes:
    """The MIME bytes (CRLF line ends, 7-bit clean: every part is quoted-printable or base64)."""
    msg = EmailMessage(policy=policy.SMTP)
    msg["Date"] = format_datetime(now)
    msg["From"] = _address(Recipient(address=draft.from_address, name=draft.from_name))
    msg["To"] = [_address(recipient) for recipient in draft.to]
    if draft.cc:
        msg["Cc"] = [_address(recipient) for recipient in draft.cc]
    subject = clean_header_text(draft.subject)
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{message_id}>"
    if draft.in_reply_to:
        msg["In-Reply-To"] = f"<{draft.in_reply_to}>"
    if draft.references:
        msg["References"] = " ".join(f"<{ref}>" for ref in draft.references)
    msg["Thread-Topic"] = subject
    root_id = draft.thread_root_id or message_id
    msg["Thread-Index"] = thread_index(
        root_id=root_id, root_date=draft.thread_root_date or now, now=now, reply=bool(draft.in_reply_to)
    )
    msg["MIME-Version"] = "1.0"
    msg.set_content(full_text(draft), subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(full_html(draft), subtype="html", charset="utf-8", cte="quoted-printable")
    if draft.inline:
        html_part = msg.get_payload()[1]
        for part in draft.inline:
            maintype, _, subtype = part.content_type.partition("/")
            html_part.add_related(
                part.data, maintype, subtype or "octet-stream", cid=f"<{part.content_id}>", filename=part.filename,
                disposition="inline",
            )  # fmt: skip
    for part in draft.attachments:
        maintype, _, subtype = part.content_type.partition("/")
        msg.add_attachment(part.data, maintype, subtype or "octet-stream", filename=part.filename)
    for part in msg.walk():
        if part is not msg:
            del part["MIME-Version"]  # the email package stamps every part it creates; only the top needs it
    return msg.as_bytes(policy=policy.SMTP)
