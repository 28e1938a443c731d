"""Pure parsing: raw RFC 5322 bytes -> ParsedEmail. No database, no network, and it never raises.

Speed matters (the sync must stay within 1.5x of "fetch + stdlib parse"), so:
- well-formed MIME (most real mail) is split by `_fast_parse` with bytes.find on the boundaries,
  payloads stay bytes slices, enclosed messages are kept byte-exact; anything unusual (bare CRs,
  missing or odd boundaries, uuencode, digests, MIME headers in a preamble ...) raises _Unusual and
  goes to the stdlib parser with the `compat32` policy (2x faster than `email.policy.default` and
  more forgiving). Both paths feed the same body collector; tests check they agree on the corpus.
- what `policy.default` would decode lazily is decoded here, once, with lenient helpers: RFC 2047
  encoded words, RFC 2231 parameters, legacy charsets with aliases and mislabels, 8-bit headers.

Measured on 2,000 generated messages (bench/parse_speed.py): parse_message with everything decoded and
sanitised ~2,800 msg/s, stdlib compat32 tree only ~2,600, policy.default tree only ~740.

Nothing here touches Django, so a process pool can run `parse_message` without setting Django up.
Every string this module returns is safe for PostgreSQL: no NUL characters and no lone surrogates.
"""

from __future__ import annotations

import binascii
import codecs
import contextvars
import email
import email.errors
import email.generator
import email.message
import email.utils
import hashlib
import html as html_lib
import itertools
import mimetypes
import quopri
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache

import charset_normalizer
import nh3
import pybase64

from crm.addresses import normalize_email, plain_addresses
from mailsync.mailboxes.words import message_terms

from .bounces import BounceReport, may_be_bounce, read_bounce

SENT = "sent"
RECEIVED = "received"

SNIPPET_LENGTH = 200
# A message nested deeper than this is kept as an attachment without looking inside: protects against
# "endless" message/rfc822 nesting (a real bounce pattern) without recursion.
MAX_MIME_DEPTH = 40
# Bodies beyond this are cut (the raw message stays on the server / in the raw file): the UI and the
# search index gain nothing from a 50 MB text part.
MAX_BODY_CHARS = 5_000_000
# Folded Subject headers of 100 KB exist (mailgun long-header.eml); nobody reads past this.
MAX_SUBJECT_CHARS = 2_000


@dataclass(slots=True)
class ParsedAttachment:
    filename: str
    content_type: str
    size: int
    content_id: str
    is_inline: bool
    # Decoded bytes; the message tree they came from is dropped once parsing ends, so the payload
    # is the only copy held (besides the raw message the caller owns).
    payload: bytes = field(repr=False)


@dataclass(slots=True)
class ParsedEmail:
    message_id: str
    in_reply_to: str
    references: list[str]
    subject: str
    from_: list[tuple[str, str]]
    sender: list[tuple[str, str]]
    reply_to: list[tuple[str, str]]
    to: list[tuple[str, str]]
    cc: list[tuple[str, str]]
    bcc: list[tuple[str, str]]
    date: datetime | None
    body_text: str
    body_html: str
    has_remote_images: bool
    snippet: str
    attachments: list[ParsedAttachment]
    size: int
    direction: str
    recipient_count: int
    message_key: str
    # Fingerprint of the content (content_fingerprint): with message_key, the message's identity.
    content_hash: str = ""
    parse_error: str = ""
    # Problems that did not stop parsing (missing final boundary, bad base64, ...), for logs/admin.
    defects: list[str] = field(default_factory=list)
    # Delivery status notification (RFC 3464) and the Message-ID of the mail that bounced, if found.
    is_bounce: bool = False
    bounced_message_id: str = ""
    # Sent to a list or in bulk (newsletters, notifications): List-Id, List-Unsubscribe or Precedence.
    is_bulk: bool = False
    # A delivery failure report: its failed recipients and the message that bounced (bounces.read_bounce).
    bounce: BounceReport | None = None
    # The words search finds it by (search_terms_of), filled in by parse_message; None: not computed.
    search_terms: str | None = None

    @property
    def from_name(self) -> str:
        return self.from_[0][0] if self.from_ else ""

    @property
    def from_address(self) -> str:
        return self.from_[0][1] if self.from_ else ""

    @property
    def has_attachments(self) -> bool:
        return any(not att.is_inline for att in self.attachments)

    def participants(self) -> list[tuple[str, str, str]]:
        """(role, name, address) for every address header; roles match MessageParticipant.Role."""
        rows = [("from", name, address) for name, address in self.from_]
        for role, entries in (
            ("sender", self.sender),
            ("reply_to", self.reply_to),
            ("to", self.to),
            ("cc", self.cc),
            ("bcc", self.bcc),
        ):
            if entries:
                rows += [(role, name, address) for name, address in entries]
        return rows

    def addresses(self) -> set[str]:
        return {address for _role, _name, address in self.participants()}

    def thread_ids(self) -> list[str]:
        """Message-IDs this message is known by or refers to: its own, In-Reply-To, References."""
        ids = [self.message_id] if self.message_id else []
        if self.in_reply_to:
            ids.append(self.in_reply_to)
        ids.extend(self.references)
        return list(dict.fromkeys(ids))


# --- public helpers -------------------------------------------------------------------------------


def parse_message(raw: bytes, *, own_addresses: frozenset[str] = frozenset()) -> ParsedEmail:
    """Parse one message. Never raises: on failure returns what could be salvaged with parse_error set."""
    try:
        raw = _as_bytes(raw)
    except Exception as exc:  # a caller passed something that is not bytes-like at all
        raw = b""
        reason = f"input is not bytes: {type(exc).__name__}"
        return _salvage(raw, own_addresses, reason)
    token = _DECODE_LOSSES.set([])
    try:
        parsed = _parse(raw, own_addresses)
    except Exception as exc:  # RecursionError, MemoryError, anything in the stdlib parser
        parsed = _salvage(raw, own_addresses, f"{type(exc).__name__}: {_short(str(exc))}")
    finally:
        _DECODE_LOSSES.reset(token)
    parsed.search_terms = search_terms_of(parsed)
    return parsed


def search_terms_of(parsed: ParsedEmail) -> str:
    """Every distinct search word of a message, space-separated: what the search documents of its list
    rows are built from (mailsync.mailboxes.search), computed here, beside the parsing, so that neither
    the database nor the writing process spends time on it."""
    return message_terms(
        parsed.subject, ((name, address) for _role, name, address in parsed.participants()), parsed.body_text
    )


def parse_many(raws: list[bytes], own_addresses: frozenset[str] = frozenset()) -> list[ParsedEmail]:
    """parse_message over a list; the unit of work a process pool runs (module-level, picklable)."""
    return [parse_message(raw, own_addresses=own_addresses) for raw in raws]


# Precedence values of mail sent to many (RFC 3834 2, and common practice); "junk" is what autoresponders skip.
BULK_PRECEDENCE = frozenset({"bulk", "list", "junk"})


def is_bulk_headers(headers: dict[str, list[str]]) -> bool:
    """A newsletter, a mailing list or a mass notification: a List-Id or List-Unsubscribe header
    (RFC 2919, 2369, 8058), or Precedence: bulk / list / junk. `headers`: values by lower-cased name."""
    if any(value.strip() for name in ("list-id", "list-unsubscribe") for value in headers.get(name, [])):
        return True
    return any(value.strip().lower() in BULK_PRECEDENCE for value in headers.get("precedence", []))


def raw_is_bulk(raw: bytes) -> bool:
    """is_bulk_headers of a stored raw message, reading only its header block (the backfill of mail
    stored before bulk mail had its own list: manage.py rebuild_mailboxes --detect-bulk)."""
    try:
        head, _body = _split_head(_as_bytes(raw))
        return is_bulk_headers(_header_map(email.message_from_bytes(head + b"\n\n")))
    except Exception:  # an unreadable header block is not evidence of bulk mail
        return False


def normalize_message_id(value: str) -> str:
    """'<Abc@Example.COM>' -> 'Abc@example.com' ("" when there is no id)."""
    ids = _extract_ids(value or "")
    return ids[0] if ids else ""


def message_id_key(message_id: str) -> str:
    """sha256 hex of a normalised Message-ID: the message_key, and the key threads are found by."""
    return hashlib.sha256(message_id.encode("utf-8", "surrogatepass")).hexdigest()


def fallback_message_key(*, date_header: str, from_address: str, subject_header: str, size: int) -> str:
    """Identity of a message without Message-ID (notes/imap-sync.md: date + from + subject + size)."""
    material = "\n".join(["no-message-id", date_header, from_address, subject_header, str(size)])
    return hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()


def canonical_size(raw: bytes) -> int:
    """Size as if every line ended in CRLF (as IMAP serves it), so an mbox/Maildir copy (LF) of a
    message gets the same fallback key as the IMAP copy."""
    return len(raw) + raw.count(b"\n") - raw.count(b"\r\n")


# Header fields that say how a copy travelled or where it is kept, not what it says: trace fields
# (RFC 5322 3.6.7) and what delivery agents, filters and mail stores add to their own copy. Two copies
# that differ only in these (and in line endings) are one message.
TRACE_HEADERS = frozenset(
    {
        "received",
        "return-path",
        "delivered-to",
        "x-original-to",
        "x-delivered-to",
        "envelope-to",
        "x-envelope-to",
        "x-envelope-from",
        "x-received",
        "received-spf",
        "authentication-results",
        # mailbox state kept in the message by mbox / Maildir writers and mail clients
        "status",
        "x-status",
        "x-keywords",
        "x-uid",
        "x-imap",
        "x-imapbase",
        "content-length",
        "lines",
        "x-mozilla-status",
        "x-mozilla-status2",
        "x-mozilla-keys",
        "x-gmail-labels",
        "x-gm-thrid",
    }
)
TRACE_HEADER_PREFIXES = (b"arc-", b"x-spam-", b"x-virus-", b"x-ms-exchange-organization-")
_TRACE_NAMES = frozenset(name.encode() for name in TRACE_HEADERS)
_ESCAPED_FROM = re.compile(rb"^>(>*From )", re.M)


def content_fingerprint(raw: bytes) -> str:
    """sha256 of a message's content, ignoring line endings (CRLF, LF, CR), an mbox envelope line and
    its From-quoting, trailing blank lines and the trace / mailbox-state headers above. With the
    Message-ID key it tells a copy of a stored message (same fingerprint) from a different message
    that reuses its Message-ID."""
    return _fingerprint(*_lf_line_ends(raw))


_BARE_CR = re.compile(rb"\r(?!\n)")


def _lf_line_ends(raw: bytes) -> tuple[bytes, bool]:
    """`raw` with CRLF line ends made LF, and whether a CR not followed by LF (a bare CR) is left in it.
    Looking for a bare CR, then deleting every CR is 2.5x faster than bytes.replace on CRLF mail (all
    IMAP mail)."""
    if b"\r" not in raw:
        return raw, False
    if _BARE_CR.search(raw) is None:
        return raw.translate(None, b"\r"), False
    return raw.replace(b"\r\n", b"\n"), True


def _fingerprint(data: bytes, bare_cr: bool) -> str:
    """content_fingerprint of a message given as _lf_line_ends gives it."""
    if bare_cr:
        data = data.replace(b"\r", b"\n")
    if data.startswith(b"From "):
        data = data.partition(b"\n")[2]
    end = data.find(b"\n\n")
    head, start = (data, len(data)) if end < 0 else (data[: end + 1], end + 2)  # the body: data[start:]
    kept: list[bytes] = []
    skipping = False
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        name = line.partition(b":")[0].strip().lower()
        skipping = name in _TRACE_NAMES or name.startswith(TRACE_HEADER_PREFIXES)
        if not skipping and line:
            kept.append(line)
    digest = hashlib.sha256(b"\n".join(kept))
    digest.update(b"\n\n")
    # The body without its trailing blank lines, un-quoted where a line starts with ">...From "; hashed
    # in place (no copy) when no line starts with ">", which the un-quoting needs.
    if _has_quoted_line(data, start):
        digest.update(_ESCAPED_FROM.sub(rb"\1", data[start:]).rstrip(b"\n"))
    else:
        stop = len(data)
        if data.endswith(b"\n" * 64):
            stop = start + len(data[start:].rstrip(b"\n"))
        while stop > start and data[stop - 1] == 10:
            stop -= 1
        digest.update(memoryview(data)[start:stop])
    return digest.hexdigest()


def _has_quoted_line(data: bytes, start: int) -> bool:
    """Whether a line of data[start:] starts with ">" (data[start - 1] is a line break, or start is 0):
    data.startswith(b">", start) or data.find(b"\n>", start) >= 0, answered from the first few ">"
    with one-byte searches (memchr: ~20x faster than a search for two bytes, which reads the whole
    body of most mail to find nothing); after 64 ">" that start no line (HTML), the two-byte search
    takes over from there, so the cost stays linear."""
    position = data.find(b">", start)
    for _ in range(64):
        if position < 0:
            return False
        if position == start or data[position - 1] == 10:
            return True
        position = data.find(b">", position + 1)
    return position >= 0 and data.find(b"\n>", position - 1) >= 0


def message_id_from_header(head: bytes) -> str:
    """The normalised Message-ID parse_message would find, from a header block alone (IMAP BODY[HEADER]
    or HEADER.FIELDS (MESSAGE-ID)); "" when there is none."""
    try:
        msg = email.message_from_bytes(head.rstrip(b"\r\n") + b"\r\n\r\n")
        values = _header_map(msg).get("message-id")
    except Exception:
        return ""
    return normalize_message_id(values[0]) if values else ""


def message_key_from_header(head: bytes) -> str:
    """The message_key parse_message would give, from a header block alone; "" when the header has no
    Message-ID (the key of such a message needs the whole message)."""
    message_id = message_id_from_header(head)
    return message_id_key(message_id) if message_id else ""


# Text decoded with U+FFFD replacements while a message is parsed: (charset label, count). The parser
# turns them into a parse_error, so the raw bytes are kept (DESIGN: nothing is lost silently).
_DECODE_LOSSES: contextvars.ContextVar[list[tuple[str, int]] | None] = contextvars.ContextVar(
    "decode_losses", default=None
)


def _note_loss(label: str | None, text: str) -> None:
    losses = _DECODE_LOSSES.get()
    count = text.count("\ufffd")
    if losses is not None and count:
        losses.append((label or "none", count))


def detect_charset(data: bytes) -> str | None:
    """Python codec name charset-normalizer finds most likely for `data` (None if it finds none)."""
    try:
        best = charset_normalizer.from_bytes(data[:65536]).best()
    except Exception:  # a detector problem must not stop parsing
        return None
    if best is None or not best.encoding:
        return None
    try:
        return codecs.lookup(best.encoding).name
    except LookupError:
        return None


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Bytes in a declared (possibly mislabelled or unknown) charset -> str. Never raises.

    The declared charset (and its usual aliases) first; when none decodes cleanly, the charset
    charset-normalizer detects; only then replacement characters, which are reported to the parser
    (see _DECODE_LOSSES) so that the message keeps its raw bytes."""
    if not data:
        return ""
    candidates = _charset_candidates((charset or "").strip().strip("\"'").lower())
    if candidates is _UNKNOWN_CHARSET:
        return _guess_decode(data, charset)
    for codec in candidates:
        try:
            if codec in _CUSTOM_DECODERS:
                return _CUSTOM_DECODERS[codec](data)
            return data.decode(codec)
        except (UnicodeDecodeError, LookupError):
            continue
    text = data.decode(candidates[0], "replace")
    bad = text.count("\ufffd")
    decoded_non_ascii = len(text) - len(text.encode("ascii", "ignore")) - bad
    # The declared charset mostly works (a stray broken byte in real UTF-8, whose valid multi-byte
    # sequences other text practically never forms): keep it, the replacement noted. Otherwise it is
    # a mislabel: the detected charset, when it decodes cleanly.
    if decoded_non_ascii >= 2 * bad or (candidates[0] == "utf-8" and decoded_non_ascii):
        _note_loss(charset, text)
        return text
    detected = detect_charset(data)
    if detected and detected not in candidates:
        try:
            return data.decode(detected)
        except (UnicodeDecodeError, LookupError):
            pass
    if detected:
        try:
            other = data.decode(detected, "replace")
        except LookupError:
            other = text
        if other.count("\ufffd") < text.count("\ufffd"):
            text = other
    _note_loss(charset, text)
    return text


def _guess_decode(data: bytes, label: str | None = None) -> str:
    """No usable charset label: UTF-8 if the bytes are (mostly) UTF-8, else Windows-1252 / Latin-1."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    text = data.decode("utf-8", "replace")
    bad = text.count("\ufffd")
    decoded_non_ascii = len(text) - len(text.encode("ascii", "ignore")) - bad
    # Real UTF-8 with a stray broken byte still has many valid multi-byte sequences; Windows-1252
    # text almost never forms even one.
    if decoded_non_ascii >= 4 * bad:
        _note_loss(label or "utf-8", text)
        return text
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def decode_header_text(value: str) -> str:
    """Raw header text (compat32 str, possibly with surrogate-escaped 8-bit bytes) -> readable str."""
    return _collapse_ws(decode_rfc2047(_fix_8bit(value)))


def decode_rfc2047(text: str) -> str:
    """Decode =?charset?B|Q?...?= words leniently (unknown charsets, bad padding, words split inside a
    multi-byte character, encoded words inside quotes)."""
    if "=?" not in text:
        return text
    out: list[str] = []
    pending = bytearray()
    pending_charset: str | None = None
    pos = 0
    for match in _ENCODED_WORD.finditer(text):
        gap = text[pos : match.start()]
        if gap and not (pending_charset is not None and gap.isspace()):
            if pending_charset is not None:
                out.append(decode_bytes(bytes(pending), pending_charset))
                pending.clear()
                pending_charset = None
            out.append(gap)
        charset, encoding, payload = match.group(1).lower(), match.group(2), match.group(3)
        data = _b_decode(payload) if encoding in "Bb" else _q_decode(payload)
        if pending_charset is not None and charset != pending_charset:
            out.append(decode_bytes(bytes(pending), pending_charset))
            pending.clear()
        pending_charset = charset
        pending += data
        pos = match.end()
    if pending_charset is not None:
        out.append(decode_bytes(bytes(pending), pending_charset))
    out.append(text[pos:])
    return "".join(out)


def clean_markup(html: str) -> str:
    """The nh3 pass of sanitize_html alone (no remote-image parking): for HTML that already went through
    sanitize_html once and was changed on purpose (the thread view restoring remote image URLs)."""
    return _HTML_CLEANER.clean(html)


def sanitize_html(html: str) -> tuple[str, bool]:
    """Email HTML -> (safe HTML, has_remote_images).

    No scripts, event handlers, forms, frames, objects or dangerous URLs (nh3 / ammonia); styles keep
    only properties that cannot load anything; links open in a new tab without referrer; remote
    images are not loaded: their URL moves to data-remote-src (the view may restore it on request);
    cid: images stay so the thread view can point them at the inline attachment.
    """
    if not html:
        return "", False
    cleaned = _HTML_CLEANER.clean(html)
    lowered = cleaned.lower()
    if "url(" in lowered or "expression" in lowered or "\\" in cleaned or "image" in lowered or "@import" in lowered:
        cleaned = _STYLE_ATTR.sub(_drop_unsafe_style, cleaned)
    if "<img" not in lowered:
        return cleaned, False
    remote = False

    def block_remote(match: re.Match) -> str:
        nonlocal remote
        tag = match.group(0)
        src = _IMG_SRC.search(tag)
        if not src:
            return tag
        url = html_lib.unescape(src.group(2)).strip().lower()
        if url.startswith("cid:"):
            return tag
        remote = remote or url.startswith(("http:", "https:", "//"))
        # Anything that is not cid: is either remote (kept for "show images") or useless: never load it.
        return tag[: src.start()] + f' data-remote-src="{src.group(2)}"' + tag[src.end() :]

    cleaned = _IMG_TAG.sub(block_remote, cleaned)
    return cleaned, remote


def html_to_text(html: str) -> str:
    """Readable plain text of an HTML body (for snippets and search when there is no text part)."""
    if not html:
        return ""
    marked = _BLOCK_BOUNDARY.sub(lambda m: m.group(0) + "\n", html)
    text = html_lib.unescape(_TEXT_ONLY_CLEANER.clean(marked))
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def make_snippet(text: str, length: int = SNIPPET_LENGTH) -> str:
    """First ~length characters of the new text: quoted lines ("> ...") skipped, whitespace collapsed."""
    if not text:
        return ""
    head = text[: length * 20]
    kept: list[str] = []
    total = 0
    for line in head.splitlines():
        words = line.split()
        if not words or words[0].startswith(">"):
            continue
        kept.append(" ".join(words))
        total += len(kept[-1]) + 1
        if total > length:
            break
    snippet = " ".join(kept) or _collapse_ws(head)
    if len(snippet) > length:
        snippet = snippet[: length - 1].rstrip() + "\u2026"
    return snippet


# --- implementation -------------------------------------------------------------------------------

_ENCODED_WORD = re.compile(r"=\?([^?\s*]+)(?:\*[^?\s]*)?\?([QqBb])\?([^?]*?)\?=")
_MSG_ID = re.compile(r"<([^<>\s]+)>")
_SPACES = re.compile(r"[ \t\u00a0\u200b\f\v]+")
_WS = re.compile(r"\s+")
_BLANK_LINES = re.compile(r"\n{3,}")
_FOLD = re.compile(r"\r\n|\r|\n")
_BLOCK_BOUNDARY = re.compile(r"<(?:br|hr|/p|/div|/tr|/li|/h[1-6]|/table|/blockquote|/pre|/dt|/dd)\b[^>]*>", re.I)
_META_CHARSET = re.compile(rb"<meta[^>]+charset\s*=\s*[\"']?\s*([A-Za-z0-9_.:-]+)", re.I)
_IMG_TAG = re.compile(r"<img\b(?:\s+[^\s=>/]+(?:=\"[^\"]*\")?)*\s*/?>")
_IMG_SRC = re.compile(r" (src)=\"([^\"]*)\"")
_CID_SRC = re.compile(r" src=\"cid:([^\"]*)\"", re.I)
_STYLE_ATTR = re.compile(r" style=\"([^\"]*)\"")
_UNSAFE_CSS = re.compile(r"url\s*\(|expression|\\|image|@import|behavior|binding", re.I)
_ADDRESS_LIKE = re.compile(r"[^\s<>()\[\],;:\"']+@[^\s<>()\[\],;:\"']+\.[^\s<>()\[\],;:\"'.]+")
_VALID_ADDRESS = re.compile(r"^[^\s<>()\[\],;:\"\\]+@[^\s<>()\[\],;:\"\\@]+$")

# WHATWG-style aliases: labels mail clients actually send -> the Python codec(s) to try, in order.
_CHARSET_ALIASES: dict[str, tuple[str, ...]] = {
    "gb2312": ("gb18030",),
    "gbk": ("gb18030",),
    "x-gbk": ("gb18030",),
    "cp936": ("gb18030",),
    "euc-cn": ("gb18030",),
    "csgb2312": ("gb18030",),
    "chinese": ("gb18030",),
    "gb_2312-80": ("gb18030",),
    "hz-gb-2312": ("hz", "gb18030"),
    "big5": ("big5hkscs", "cp950"),
    "x-x-big5": ("big5hkscs", "cp950"),
    "cn-big5": ("big5hkscs", "cp950"),
    "csbig5": ("big5hkscs", "cp950"),
    "big5-hkscs": ("big5hkscs",),
    "ks_c_5601-1987": ("cp949",),
    "ks_c_5601": ("cp949",),
    "ks_c_5601-1989": ("cp949",),
    "ksc5601": ("cp949",),
    "ksc_5601": ("cp949",),
    "korean": ("cp949",),
    "euc-kr": ("cp949",),
    "cseuckr": ("cp949",),
    "x-windows-949": ("cp949",),
    "windows-949": ("cp949",),
    "shift_jis": ("cp932", "shift_jis_2004"),
    "shift-jis": ("cp932", "shift_jis_2004"),
    "sjis": ("cp932", "shift_jis_2004"),
    "x-sjis": ("cp932", "shift_jis_2004"),
    "ms_kanji": ("cp932",),
    "csshiftjis": ("cp932",),
    "windows-31j": ("cp932",),
    "x-ms-cp932": ("cp932",),
    "euc-jp": ("euc_jis_2004", "euc_jp"),
    "x-euc-jp": ("euc_jis_2004", "euc_jp"),
    "iso-2022-jp": ("iso2022_jp_2", "iso2022_jp_ext", "x-iso2022jp-cp932"),
    "csiso2022jp": ("iso2022_jp_2", "iso2022_jp_ext", "x-iso2022jp-cp932"),
    "iso-2022-jp-1": ("iso2022_jp_1", "iso2022_jp_2"),
    "iso-2022-jp-2": ("iso2022_jp_2", "iso2022_jp_ext"),
    "iso-2022-kr": ("iso2022_kr", "cp949"),
    "iso-8859-1": ("cp1252", "latin-1"),
    "iso8859-1": ("cp1252", "latin-1"),
    "iso_8859-1": ("cp1252", "latin-1"),
    "latin1": ("cp1252", "latin-1"),
    "latin-1": ("cp1252", "latin-1"),
    "l1": ("cp1252", "latin-1"),
    "iso-8859-9": ("cp1254", "iso8859_9"),
    "latin5": ("cp1254", "iso8859_9"),
    "iso-8859-11": ("cp874",),
    "tis-620": ("cp874",),
    "tis620": ("cp874",),
    "windows-874": ("cp874",),
    "x-windows-874": ("cp874",),
    "iso-8859-8-i": ("iso8859_8",),
    "iso-8859-8-e": ("iso8859_8",),
    "iso-8859-6-i": ("iso8859_6",),
    "iso-8859-6-e": ("iso8859_6",),
    "logical": ("iso8859_8",),
    "visual": ("iso8859_8",),
    "x-mac-cyrillic": ("mac_cyrillic",),
    "x-mac-ukrainian": ("mac_cyrillic",),
    "x-mac-roman": ("mac_roman",),
    "macintosh": ("mac_roman",),
    "mac": ("mac_roman",),
    "x-mac-ce": ("mac_latin2",),
    "x-mac-greek": ("mac_greek",),
    "x-mac-turkish": ("mac_turkish",),
    "x-mac-icelandic": ("mac_iceland",),
    "unicode-1-1-utf-7": ("utf-7",),
    "x-unicode20utf8": ("utf-8",),
    "unicode-1-1-utf-8": ("utf-8",),
    "unicode-2-0-utf-8": ("utf-8",),
    "utf8": ("utf-8",),
    "x-utf8": ("utf-8",),
    "koi8": ("koi8_r",),
    "koi": ("koi8_r",),
    "x-koi8-r": ("koi8_r",),
    "cskoi8r": ("koi8_r",),
    "koi8-ru": ("koi8_u",),
    "x-cp1250": ("cp1250",),
    "x-cp1251": ("cp1251",),
}


def _iso2022jp_via_cp932(data: bytes) -> str:
    """ISO-2022-JP as Windows sends it (CP50220: NEC and IBM extensions such as No. and circled
    digits, half-width katakana): map each JIS X 0208 pair to Shift_JIS and decode with cp932."""
    out = bytearray()
    mode = "ascii"
    index = 0
    length = len(data)
    while index < length:
        byte = data[index]
        if byte == 0x1B:
            sequence = data[index : index + 3]
            if sequence in (b"\x1b$B", b"\x1b$@"):
                mode = "jis"
            elif sequence in (b"\x1b(B", b"\x1b(J"):
                mode = "ascii"
            elif sequence == b"\x1b(I":
                mode = "kana"
            else:
                raise UnicodeDecodeError("iso-2022-jp", data, index, index + 3, "unsupported escape")
            index += 3
            continue
        if byte == 0x0E:  # SO / SI: half-width katakana shifts used by some senders
            mode = "kana"
            index += 1
            continue
        if byte == 0x0F:
            mode = "ascii"
            index += 1
            continue
        if mode == "jis" and byte not in (0x0A, 0x0D) and index + 1 < length:
            first, second = byte, data[index + 1]
            lead = ((first + 1) >> 1) + (0x70 if first <= 0x5E else 0xB0)
            trail = second + (0x1F + (1 if second >= 0x60 else 0) if first & 1 else 0x7E)
            out += bytes((lead & 0xFF, trail & 0xFF))
            index += 2
            continue
        if byte >= 0x80:  # ISO-2022-JP is 7-bit: 8-bit bytes are another charset (EUC-JP, Shift_JIS)
            raise UnicodeDecodeError("iso-2022-jp", data, index, index + 1, "8-bit byte")
        out.append(byte + 0x80 if mode == "kana" and 0x21 <= byte <= 0x5F else byte)
        index += 1
    return bytes(out).decode("cp932")


_CUSTOM_DECODERS = {"x-iso2022jp-cp932": _iso2022jp_via_cp932}
# Codecs whose text could be valid UTF-8 by construction, or that are UTF-8: no UTF-8-first guess.
_MULTIBYTE_CODECS = frozenset(
    {
        "utf-8",
        "utf-7",
        "utf-16",
        "utf-16-le",
        "utf-16-be",
        "utf-32",
        "gb18030",
        "gbk",
        "gb2312",
        "hz",
        "big5",
        "big5hkscs",
        "cp950",
        "cp949",
        "euc_kr",
        "johab",
        "iso2022_kr",
        "cp932",
        "shift_jis",
        "shift_jis_2004",
        "shift_jisx0213",
        "euc_jp",
        "euc_jis_2004",
        "euc_jisx0213",
        "iso2022_jp",
        "iso2022_jp_1",
        "iso2022_jp_2",
        "iso2022_jp_2004",
        "iso2022_jp_3",
        "iso2022_jp_ext",
        "x-iso2022jp-cp932",
    }
)

# Labels that say nothing about the bytes: guess UTF-8, then Windows-1252, then Latin-1 (never fails).
_UNKNOWN_CHARSET = ("utf-8", "cp1252", "latin-1")
_UNKNOWN_LABELS = frozenset(
    {
        "",
        "us-ascii",
        "ascii",
        "us",
        "ansi_x3.4-1968",
        "iso646-us",
        "unknown",
        "unknown-8bit",
        "x-unknown",
        "x-user-defined",
        "default",
        "charset",
        "8bit",
        "7bit",
        "none",
        "binary",
        "x-binaryenc",
        "_autodetect_all",
        "_iso-2022-jp$esc",
    }
)


@lru_cache(maxsize=512)
def _charset_candidates(label: str) -> tuple[str, ...]:
    candidates = _declared_candidates(label)
    if candidates is _UNKNOWN_CHARSET or candidates[0] in _MULTIBYTE_CODECS:
        return candidates
    # A single-byte label (Latin-1, Windows-125x, KOI8, Mac ...) on bytes that are valid UTF-8 is a
    # mislabel (web forms, copy-paste): real single-byte text practically never forms valid UTF-8
    # multi-byte sequences, so UTF-8 is tried first; ASCII decodes the same either way.
    return ("utf-8", *candidates)


def _declared_candidates(label: str) -> tuple[str, ...]:
    if label in _UNKNOWN_LABELS:
        return _UNKNOWN_CHARSET
    if label in _CHARSET_ALIASES:
        return _CHARSET_ALIASES[label]
    for variant in (label, label.removeprefix("x-"), label.replace("_", "-"), label.replace("cp-", "cp")):
        if variant in _CHARSET_ALIASES:
            return _CHARSET_ALIASES[variant]
        try:
            info = codecs.lookup(variant)
        except (LookupError, ValueError, TypeError):
            continue
        # Refuse bytes-to-bytes codecs (zlib, base64, rot13 ...): a charset label must name a text codec.
        if getattr(info, "_is_text_encoding", True):
            return (info.name, "latin-1") if info.name == "cp1252" else (info.name,)
    return _UNKNOWN_CHARSET


def _as_bytes(raw) -> bytes:
    if isinstance(raw, bytes):
        return raw
    if isinstance(raw, str):
        return raw.encode("utf-8", "surrogateescape")
    return bytes(raw)


def _short(text: str, limit: int = 300) -> str:
    text = _collapse_ws(_clean(text))
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _clean(text: str) -> str:
    """Make a str storable in PostgreSQL: no NUL, no lone surrogates."""
    if not text:
        return ""
    if "\x00" in text:
        text = text.replace("\x00", "")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _fix_8bit(value) -> str:
    """compat32 headers keep raw 8-bit bytes as surrogate escapes; decode them (UTF-8 per RFC 6532,
    else Windows-1252) and unfold."""
    if value is None:
        return ""
    if not isinstance(value, str):
        value = str(value)  # email.header.Header for some malformed input
    if not value.isascii():
        try:
            value = decode_bytes(value.encode("ascii", "surrogateescape"), None)
        except UnicodeEncodeError:
            value = _clean(value)
    if "\n" in value or "\r" in value:
        value = _FOLD.sub("", value)
    return value


def _collapse_ws(value: str) -> str:
    return " ".join(value.split())


def _b_decode(payload: str) -> bytes:
    data = payload.encode("ascii", "ignore")
    try:
        return binascii.a2b_base64(data + b"=" * (-len(data) % 4))
    except binascii.Error:
        data = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
        data = data[: len(data) - len(data) % 4]
        try:
            return binascii.a2b_base64(data)
        except binascii.Error:
            return b""


def _q_decode(payload: str) -> bytes:
    return binascii.a2b_qp(payload.encode("utf-8", "surrogateescape"), header=True)


def _extract_ids(value: str) -> list[str]:
    value = _fix_8bit(value)
    found = _MSG_ID.findall(value)
    if not found:
        # Some mailers omit the angle brackets: accept bare id-like tokens.
        tokens = [token.strip("<>\"'") for token in re.split(r"[\s,]+", value.strip())]
        found = [token for token in tokens if "@" in token]
        if not found and len(tokens) == 1 and tokens[0] and len(tokens[0]) < 250:
            found = tokens
    ids = []
    for item in found:
        local, at, domain = item.rpartition("@")
        normalized = _clean(f"{local}@{domain.lower()}" if at else item)[:998]
        if normalized and normalized not in ids:
            ids.append(normalized)
    return ids


def _parse_addresses(values: list[str] | None, defects: list[str], header: str) -> list[tuple[str, str]]:
    if not values:
        return []
    result: dict[str, str] = {}
    for value in values:
        text = _fix_8bit(value)
        if not text.strip():
            continue
        pairs = _getaddresses(text)
        if not any(address for _name, address in pairs) and "=?" in text:
            # The whole header was encoded, address included (seen from broken mailers).
            pairs = _getaddresses(decode_rfc2047(text))
        found = False
        for name, address in pairs:
            address = _normalize_address(address)
            if not address:
                continue
            found = True
            if address not in result:
                name = _collapse_ws(decode_rfc2047(name)).strip("\"' ")
                result[address] = _clean(name)[:300]
        if not found and "@" in text:
            # Salvage: pull anything address-shaped out of an unparseable header.
            salvaged = [_normalize_address(m) for m in _ADDRESS_LIKE.findall(decode_rfc2047(text))]
            for address in salvaged:
                if address and address not in result:
                    result[address] = ""
            defects.append(f"unparseable {header} header")
    return [(name, address) for address, name in result.items()]


def _getaddresses(text: str) -> list[tuple[str, str]]:
    simple = plain_addresses(text)
    if simple is not None:
        return simple
    try:
        return email.utils.getaddresses([text])
    except Exception:
        return []


def _normalize_address(address: str) -> str:
    address = normalize_email(_clean(address))
    if not address or len(address) > 320 or not _VALID_ADDRESS.match(address):
        return ""
    return address


def _parse_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parts = email.utils.parsedate_tz(_fix_8bit(value))
    except Exception:
        return None
    if not parts:
        return None
    try:
        year = parts[0]
        if year < 1900 or year > 9000:
            return None
        offset = parts[9] or 0
        if abs(offset) >= 24 * 3600:
            offset = 0
        naive = datetime(year, parts[1], parts[2], parts[3], parts[4], min(parts[5], 59))
        return naive.replace(tzinfo=timezone(timedelta(seconds=offset))).astimezone(UTC)
    except (ValueError, TypeError, OverflowError, IndexError):
        return None


def _date_from_received(values: list[str] | None) -> datetime | None:
    for value in values or []:
        _, sep, stamp = _fix_8bit(value).rpartition(";")
        if sep:
            parsed = _parse_date(stamp.strip())
            if parsed:
                return parsed
    return None


def _header_map(msg: email.message.Message) -> dict[str, list[str]]:
    """Raw header values by lower-cased name. raw_items() keeps 8-bit bytes as surrogate escapes,
    where get() would hand back a Header object that already replaced them with U+FFFD."""
    headers: dict[str, list[str]] = {}
    try:
        for name, value in msg.raw_items():
            headers.setdefault(str(name).strip().lower(), []).append(value if isinstance(value, str) else str(value))
    except Exception:  # a header the stdlib cannot even list: keep the ones read so far
        return headers
    return headers


def _get(msg: email.message.Message, name: str) -> str:
    if type(msg) is _FastPart:  # the same first value, without building the map
        return _first_header(msg._headers, name.lower()) or ""
    values = _get_all(msg, name)
    return values[0] if values else ""


def _get_all(msg: email.message.Message, name: str) -> list[str]:
    return _header_map(msg).get(name.lower(), [])


class _Unusual(Exception):
    """The input needs the stdlib's forgiving parser (the fast path only takes well-formed mail)."""


class _FastPart:
    """A MIME part found by the fast splitter. It offers the subset of email.message.Message that the
    body collector uses, with compat32 semantics; payloads are bytes slices of the input."""

    __slots__ = ("_headers", "_params", "_payload", "body_bytes", "content_type", "defects")

    def __init__(self, headers: list[tuple[str, str]], default_type: str = "text/plain"):
        self._headers = headers
        self._payload: bytes | list = b""
        self.body_bytes: bytes | None = None
        self.defects: list = []
        value = _first_header(headers, "content-type")
        if value is None:
            self.content_type, self._params = default_type, {}
        else:
            if not value.isascii():
                raise _Unusual
            main = value.partition(";")[0].strip().lower()
            self.content_type = main if main.count("/") == 1 else "text/plain"
            self._params = _params(value)

    def raw_items(self):
        return iter(self._headers)

    def keys(self) -> list[str]:
        return [name for name, _value in self._headers]

    def get_content_type(self) -> str:
        return self.content_type

    def get_param(self, name: str, failobj=None):
        return self._params.get(name, failobj)

    def get_content_charset(self, failobj=None):
        charset = self._params.get("charset")
        if not charset or not charset.isascii():
            return failobj
        return charset.lower()

    def get_content_disposition(self) -> str | None:
        value = _first_header(self._headers, "content-disposition")
        return None if value is None else value.partition(";")[0].strip().lower()

    def get_payload(self, decode: bool = False):
        return self._payload


def _first_header(headers: list[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


_HEADER_NAME = re.compile(rb"[!-9;-~]+:")
_PASSTHROUGH_CTE = frozenset({"", "7bit", "8bit", "binary"})
_CLEAN_BOUNDARY = re.compile(r';\s*boundary\s*=\s*(?:"[^"]*"|[^";\s]+)\s*(?:;|$)', re.I)
# In a preamble, a MIME header or a "--" line means a damaged structure whose first part would be lost.
_MIME_IN_PREAMBLE = re.compile(rb"^(?:content-[a-z-]+:|--)", re.I | re.M)


def _fast_parse(raw: bytes, *, bare_cr: bool) -> _FastPart:
    """Split well-formed MIME with bytes.find instead of the stdlib's line-by-line feed parser (about
    4x faster on real mail, most of which is base64). Anything unusual raises _Unusual and the caller
    uses the stdlib parser, so odd mail gets the same treatment as before. `bare_cr`: `raw` holds a CR
    not followed by LF (_lf_line_ends)."""
    if bare_cr:
        raise _Unusual  # bare CRs are line breaks to the stdlib; leave those messages to it
    start = 0
    if raw.startswith(b"From "):  # mbox envelope line, as the stdlib skips it
        newline = raw.find(b"\n")
        if newline < 0:
            raise _Unusual
        start = newline + 1
    return _fast_part(raw, start, len(raw), 0, "text/plain")


# The splitter works on offsets into the message (start, end) and copies only what it keeps (header
# blocks, leaf payloads, enclosed messages): slicing each level's body copied most of the message once
# per level of nesting.


def _fast_part(data: bytes, start: int, end: int, depth: int, default_type: str) -> _FastPart:
    """The part in data[start:end]."""
    if depth > MAX_MIME_DEPTH:
        raise _Unusual
    head, body_start = _fast_split_head(data, start, end)
    part = _FastPart(_fast_headers(head), default_type)
    ctype = part.content_type
    cte = (_first_header(part._headers, "content-transfer-encoding") or "").strip().lower()
    if ctype.startswith("multipart/"):
        boundary = part.get_param("boundary")
        if not boundary or ctype == "multipart/digest" or cte not in _PASSTHROUGH_CTE or not boundary.isascii():
            raise _Unusual
        if not _CLEAN_BOUNDARY.search(_FOLD.sub(" ", _first_header(part._headers, "content-type") or "")):
            raise _Unusual  # e.g. 'boundary="x"junk': the stdlib reads such values differently
        part._payload = [
            _fast_part(data, chunk_start, chunk_end, depth + 1, "text/plain")
            for chunk_start, chunk_end in _fast_split_multipart(data, body_start, end, boundary.encode())
        ]
    elif ctype.startswith("message/"):
        if cte not in _PASSTHROUGH_CTE:
            raise _Unusual
        body = data[body_start:end]
        if ctype in ("message/rfc822", "message/global", "message/news"):
            inner = _FastPart(_fast_headers(_fast_split_head(body, 0, len(body))[0]))
            inner._payload = body
            part._payload = [inner]
        elif ctype in _STATUS_TYPES:
            part._payload = [_FastPart([])]
        else:
            raise _Unusual
        part.body_bytes = body
    else:
        if "uu" in cte:
            raise _Unusual
        part._payload = data[body_start:end]
    return part


def _fast_split_head(data: bytes, start: int, end: int) -> tuple[bytes, int]:
    """(the header block of the part in data[start:end], where its body starts)."""
    if start < end and data[start] in (10, 13):
        raise _Unusual  # no header block: the stdlib's salvage rules apply
    crlf = data.find(b"\n\r\n", start, end)
    # An LF-only blank line counts only before the first CRLF one: looked for there alone, not in the
    # whole of a CRLF part's body (where it never is, and the search would read every byte).
    lf = data.find(b"\n\n", start, crlf + 1) if crlf >= 0 else data.find(b"\n\n", start, end)
    if lf < 0 and crlf < 0:
        return data[start:end], end
    if crlf < 0 or (0 <= lf < crlf):
        return data[start : lf + 1], lf + 2
    return data[start : crlf + 1], crlf + 3


def _fast_headers(head: bytes) -> list[tuple[str, str]]:
    """compat32 header semantics: the value keeps its folding, minus leading blanks and the final EOL."""
    headers: list[tuple[str, str]] = []
    name = b""
    first = b""  # the value on the header's own line
    folded: list[bytes] = []  # its continuation lines
    lines = head.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for line in lines:
        if line.find(b"\r", 0, len(line) - 1) >= 0:
            raise _Unusual  # CR-only line ends
        if line[:1] in (b" ", b"\t"):
            if not name:
                raise _Unusual
            folded.append(line)
            continue
        match = _HEADER_NAME.match(line)
        if not match:
            raise _Unusual
        if name:
            headers.append(_fast_header(name, first, folded))
        name = line[: match.end() - 1]
        first = line[match.end() :].lstrip(b" \t")
        folded = []
    if name:
        headers.append(_fast_header(name, first, folded))
    return headers


def _fast_header(name: bytes, first: bytes, folded: list[bytes]) -> tuple[str, str]:
    value = b"\n".join((first, *folded)) if folded else first
    return name.decode("ascii"), value.rstrip(b"\r\n").decode("ascii", "surrogateescape")


def _fast_split_multipart(body: bytes, start: int, length: int, boundary: bytes) -> list[tuple[int, int]]:
    """(start, end) of the parts of the multipart body in body[start:length], between delimiter lines
    ("--boundary", then optional "--", blanks, end of line). The line break before a delimiter belongs
    to it (RFC 2046). No opening or closing delimiter: _Unusual."""
    delimiter = b"--" + boundary
    marks: list[tuple[int, int, bool]] = []  # (line start, start of the next line, closing?)
    position = start
    while True:
        index = body.find(delimiter, position, length)
        if index < 0:
            break
        position = index + len(delimiter)
        if index > start and body[index - 1] != 10:  # not at the start of a line
            continue
        cursor = position
        closing = body.startswith(b"--", cursor, length)
        if closing:
            cursor += 2
        while cursor < length and body[cursor] in (32, 9):
            cursor += 1
        if cursor < length and body[cursor] == 13:
            cursor += 1
        if cursor < length and body[cursor] != 10:
            continue  # the boundary is only the start of a longer line
        marks.append((index, min(cursor + 1, length), closing))
        if closing:
            break
    if not marks or marks[0][2] or not marks[-1][2]:
        raise _Unusual
    if _MIME_IN_PREAMBLE.search(body, start, marks[0][0]):
        raise _Unusual  # MIME headers before the first delimiter: a broken structure, not a preamble
    parts = []
    for (_start, content_start, _closing), (next_start, _next_content, _next_closing) in itertools.pairwise(marks):
        end = next_start
        if end > content_start and body[end - 1] == 10:
            end -= 1
            if end > content_start and body[end - 1] == 13:
                end -= 1
        parts.append((content_start, end))
    return parts


def _strip_leading_junk(raw: bytes) -> bytes:
    """Drop whitespace-only lines before the first header (seen in the wild; the stdlib would treat the
    whole message as body)."""
    if raw[:1] in (b" ", b"\t", b"\r", b"\n"):
        stripped = raw.lstrip(b" \t\r\n")
        if stripped[:1] and re.match(rb"[!-9;-~]+:", stripped[:200]):
            return stripped
    return raw


def _parse(raw: bytes, own_addresses: frozenset[str], *, fast: bool = True) -> ParsedEmail:
    msg = None
    lf_data, bare_cr = _lf_line_ends(raw)
    if fast:
        try:
            msg = _fast_parse(raw, bare_cr=bare_cr)
        except Exception:  # _Unusual, or anything the fast splitter did not foresee: use the stdlib
            msg = None
    if msg is None:
        msg = email.message_from_bytes(_strip_leading_junk(raw))
    defects: list[str] = [type(defect).__name__ for defect in msg.defects]
    headers_missing = not msg.keys()
    if headers_missing:
        defects.append("no headers")

    headers = _header_map(msg)

    def first(name: str) -> str:
        values = headers.get(name)
        return values[0] if values else ""

    message_id = normalize_message_id(first("message-id"))
    in_reply_to_ids = _extract_ids(first("in-reply-to"))
    references = []
    for value in headers.get("references", []):
        references.extend(_extract_ids(value))
    references = [ref for ref in dict.fromkeys(references) if ref != message_id][:500]

    subject_header = first("subject")
    subject = _clean(decode_header_text(subject_header))
    if len(subject) > MAX_SUBJECT_CHARS:
        subject = subject[: MAX_SUBJECT_CHARS - 1] + "\u2026"
        defects.append("subject truncated")
    date_header = first("date")
    date = _parse_date(date_header) or _date_from_received(headers.get("received"))

    from_ = _parse_addresses(headers.get("from"), defects, "From")
    sender = _parse_addresses(headers.get("sender"), defects, "Sender")
    reply_to = _parse_addresses(headers.get("reply-to"), defects, "Reply-To")
    to = _parse_addresses(headers.get("to"), defects, "To")
    cc = _parse_addresses(headers.get("cc"), defects, "Cc")
    bcc = _parse_addresses(headers.get("bcc"), defects, "Bcc")

    bounce = _bounce_report(msg, headers, raw)
    body = _BodyCollector(defects)
    body.collect(msg)
    msg = None  # drop the tree now: only the decoded bodies and payloads are kept from here on

    body_html, has_remote_images = sanitize_html(body.html)
    body_text = body.text or html_to_text(body_html)
    if len(body_text) > MAX_BODY_CHARS:
        body_text = body_text[:MAX_BODY_CHARS]
        defects.append("text body truncated")
    if len(body_html) > MAX_BODY_CHARS:
        body_html, has_remote_images = "", False
        defects.append("HTML body too large, kept as text only")
    # Inline = an image the HTML body shows through cid:; anything else is listed as an attachment.
    referenced_cids = (
        {html_lib.unescape(cid).strip().lower() for cid in _CID_SRC.findall(body_html)}
        if "cid:" in body_html
        else set()
    )
    for attachment in body.attachments:
        attachment.is_inline = bool(attachment.content_id) and attachment.content_id.lower() in referenced_cids

    problems = list(dict.fromkeys(body.lost))
    losses = _DECODE_LOSSES.get() or []
    if losses:
        labels = ", ".join(dict.fromkeys(label for label, _count in losses))
        replaced = sum(count for _label, count in losses)
        problems.append(
            f"{replaced} character(s) could not be decoded (declared charset {labels}): original bytes kept"
        )
    if body.boundary_lost:
        problems.insert(0, "multipart boundary not found: the body is shown as raw text")
    if headers_missing:
        problems.insert(0, "no header block found")
    parse_error = "; ".join(problems)

    from_address = from_[0][1] if from_ else ""
    if message_id:
        key = message_id_key(message_id)
    elif date_header or from_address or subject_header:
        key = fallback_message_key(
            date_header=_collapse_ws(_fix_8bit(date_header)),
            from_address=from_address,
            subject_header=_collapse_ws(_fix_8bit(subject_header)),
            size=canonical_size(raw),
        )
    else:
        key = _raw_key(raw)
    recipients = {address for _, address in to} | {address for _, address in cc} | {address for _, address in bcc}
    return ParsedEmail(
        message_id=message_id,
        in_reply_to=in_reply_to_ids[0] if in_reply_to_ids else "",
        references=list(dict.fromkeys(references + in_reply_to_ids[1:])),
        subject=subject,
        from_=from_,
        sender=sender,
        reply_to=reply_to,
        to=to,
        cc=cc,
        bcc=bcc,
        date=date,
        body_text=_clean(body_text),
        body_html=_clean(body_html),
        has_remote_images=has_remote_images,
        snippet=_clean(make_snippet(body_text)),
        attachments=body.attachments,
        size=len(raw),
        direction=SENT if any(address in own_addresses for _, address in from_) else RECEIVED,
        recipient_count=len(recipients),
        message_key=key,
        content_hash=_fingerprint(lf_data, bare_cr),
        parse_error=parse_error,
        defects=list(dict.fromkeys(defects)),
        is_bounce=body.is_bounce or bounce is not None,
        bounced_message_id=body.bounced_message_id or (bounce.original_message_id if bounce else ""),
        is_bulk=is_bulk_headers(headers) and bounce is None,
        bounce=bounce,
    )


def _bounce_report(msg, headers: dict[str, list[str]], raw: bytes) -> BounceReport | None:
    """The delivery failure report this message is, if it is one. Ordinary mail costs a look at its headers;
    a candidate is read again, fully, with the stdlib (rare). A failure here never costs the message."""
    try:
        report_type = str(_safe(lambda: msg.get_param("report-type")) or "")
        if may_be_bounce(headers, msg.get_content_type(), report_type, raw):
            return read_bounce(raw)
    except Exception:  # the message is stored as it is, only not recognised as a report
        return None
    return None


def _raw_key(raw: bytes) -> str:
    return hashlib.sha256(b"raw\n" + raw.replace(b"\r\n", b"\n")).hexdigest()


class _BodyCollector:
    """Walks the MIME tree iteratively (no recursion), collecting body text/HTML and attachments."""

    def __init__(self, defects: list[str]):
        self.defects = defects
        self.text_parts: list[str] = []
        self.html_parts: list[str] = []
        self.attachments: list[ParsedAttachment] = []
        self.boundary_lost = False
        # Reasons content was left out: the message then counts as not parsed properly (raw is kept).
        self.lost: list[str] = []
        self.is_bounce = False
        self.bounced_message_id = ""

    @property
    def text(self) -> str:
        return "\n".join(self.text_parts).strip("\n")

    @property
    def html(self) -> str:
        return "\n".join(self.html_parts)

    def collect(self, root: email.message.Message) -> None:
        if root.get_content_type() == "multipart/report":
            self.is_bounce = (root.get_param("report-type") or "").lower() == "delivery-status"
        stack: list[tuple[email.message.Message, int, bool]] = [(root, 0, False)]
        while stack:
            part, depth, in_alternative = stack.pop()
            try:
                self._visit(part, depth, in_alternative, stack)
            except Exception as exc:  # one broken part must not lose the rest of the message
                self.lost.append(f"a MIME part could not be read ({type(exc).__name__})")

    def _visit(self, part, depth: int, in_alternative: bool, stack: list) -> None:
        ctype = part.get_content_type()
        maintype = ctype.split("/", 1)[0]
        payload = getattr(part, "_payload", None)
        if maintype == "multipart":
            if isinstance(payload, list):
                children = [(child, depth + 1, ctype == "multipart/alternative") for child in payload]
                if depth + 1 > MAX_MIME_DEPTH:
                    self.lost.append("MIME nesting too deep")
                    return
                stack.extend(reversed(children))
                return
            recovered = _reparse_with_guessed_boundary(part, ctype)
            if recovered is not None and depth + 1 <= MAX_MIME_DEPTH:
                self.defects.append("multipart boundary guessed from the body")
                stack.extend((child, depth + 1, ctype == "multipart/alternative") for child in reversed(recovered))
                return
            # The boundary never appeared: keep the text so nothing is lost.
            self.boundary_lost = True
            self.text_parts.append(_normalize_newlines(decode_bytes(_payload_bytes(part), part.get_content_charset())))
            return
        if ctype in ("message/rfc822", "message/global") or isinstance(payload, list):
            self._attach_message(part, ctype)
            return
        disposition = _safe(part.get_content_disposition) or ""
        filename = self._filename(part)
        if ctype in ("text/plain", "text/html") and disposition != "attachment" and not filename:
            data = _payload_bytes(part)
            charset = _safe(part.get_content_charset)
            if ctype == "text/html":
                if not charset:
                    meta = _META_CHARSET.search(data[:4096])
                    charset = meta.group(1).decode("ascii", "replace").lower() if meta else None
                self.html_parts.append(decode_bytes(data, charset))
            else:
                self.text_parts.append(_normalize_newlines(decode_bytes(data, charset)))
            return
        if ctype == "text/rfc822-headers" and not self.bounced_message_id:
            data = _payload_bytes(part)
            match = re.search(rb"^message-id:\s*(.+)$", data, re.I | re.M)
            if match:
                self.bounced_message_id = normalize_message_id(match.group(1).decode("ascii", "replace"))
        data = _payload_bytes(part)
        self.attachments.append(
            ParsedAttachment(
                filename=filename or _default_filename(ctype, len(self.attachments) + 1),
                content_type=_clean(ctype)[:200],
                size=len(data),
                content_id=_content_id(part),
                is_inline=False,
                payload=data,
            )
        )

    def _attach_message(self, part, ctype: str) -> None:
        payload = getattr(part, "_payload", None)
        blocks = payload if isinstance(payload, list) else []
        inner = blocks[0] if blocks and hasattr(blocks[0], "raw_items") else None
        if inner is not None and self.is_bounce and not self.bounced_message_id:
            self.bounced_message_id = normalize_message_id(_get(inner, "Message-ID"))
        body = getattr(part, "body_bytes", None)
        if body is not None:
            data = body  # fast path: the enclosed message (or status report) exactly as received
        elif ctype in _STATUS_TYPES or inner is None or len(blocks) > 1:
            # Header-only blocks (delivery status, disposition notification): keep them as text.
            data = b"\n".join(_safe_bytes(block) for block in blocks)
        else:
            try:
                data = _flatten(inner)
            except Exception as exc:  # deep nesting or headers the generator cannot write
                self.defects.append(f"enclosed message not kept: {type(exc).__name__}")
                data = b""
        filename = self._filename(part)
        if not filename and inner is not None and ctype not in _STATUS_TYPES:
            subject = decode_header_text(_get(inner, "Subject"))
            filename = (_safe_filename_text(subject) or "message") + ".eml"
        self.attachments.append(
            ParsedAttachment(
                filename=filename or _default_filename(ctype, len(self.attachments) + 1),
                content_type=_clean(ctype)[:200],
                size=len(data),
                content_id=_content_id(part),
                is_inline=False,
                payload=data,
            )
        )

    def _filename(self, part) -> str:
        name = _params(_get(part, "Content-Disposition")).get("filename")
        if not name:
            # The fast splitter's parts have read their Content-Type parameters already.
            type_params = part._params if type(part) is _FastPart else _params(_get(part, "Content-Type"))
            name = type_params.get("name") or ""
        # Keep only the last path component: names like "../../etc/passwd" or "C:\\x\\y.doc" occur.
        name = _collapse_ws(name).replace("\\", "/").rsplit("/", 1)[-1].strip(". ")
        return _clean(name)[:255]


_STATUS_TYPES = frozenset({"message/delivery-status", "message/disposition-notification", "message/feedback-report"})


_PARAM = re.compile(r';\s*([^\s=;"]+)\s*=\s*("(?:[^"\\]|\\.)*"?|[^;]*)')


def _params(raw_value: str) -> dict[str, str]:
    """Parameters of a raw Content-Type / Content-Disposition value, decoded: RFC 2231 (charset and
    continuations), RFC 2047 words inside quotes (not allowed, very common), raw 8-bit bytes."""
    if not raw_value or ";" not in raw_value:
        return {}
    pairs = []
    for name, value in _PARAM.findall(_FOLD.sub("", raw_value)):
        value = value.strip()
        if value.startswith('"'):
            value = value[1:-1] if value.endswith('"') and len(value) > 1 else value[1:]
            if "\\" in value:
                value = re.sub(r"\\(.)", r"\1", value)
        pairs.append((name.lower(), value))
    if all(_plain_param(name, value) for name, value in pairs):
        result = {}
        for name, value in pairs:  # what the decoding below gives for them, 2x faster
            result.setdefault(name, value)
        return result
    try:
        decoded = email.utils.decode_params([("", ""), *pairs])[1:]
    except Exception:
        decoded = pairs
    result: dict[str, str] = {}
    for name, value in decoded:
        if isinstance(value, tuple):  # RFC 2231: (charset, language, %-decoded text as latin-1)
            charset, _language, text = value
            text = decode_bytes(email.utils.unquote(text).encode("latin-1", "replace"), charset or None)
        else:
            text = decode_rfc2047(_fix_8bit(email.utils.unquote(value) if value.startswith('"') else value))
        result.setdefault(name.lower(), text)
    return result


def _plain_param(name: str, value: str) -> bool:
    """A parameter the decoding in _params leaves as it is: not RFC 2231 (no "*"), no encoded word,
    ASCII, nothing unquote() would take off (quotes, backslashes, <...>), no line break."""
    return (
        "*" not in name
        and value.isascii()
        and "=?" not in value
        and '"' not in value
        and "\\" not in value
        and "\n" not in value
        and "\r" not in value
        and not (value.startswith("<") and value.endswith(">"))
    )


_DELIMITER_LINE = re.compile(rb"^--([ -~]{1,70}?)[ \t]*\r?$", re.M)


def _reparse_with_guessed_boundary(part: email.message.Message, ctype: str) -> list | None:
    """A multipart whose boundary parameter is missing or wrong (e.g. folded onto an unindented line)
    usually still has delimiter lines: take the first one as the boundary if it occurs at least twice."""
    data = _payload_bytes(part).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    match = _DELIMITER_LINE.search(data[:20_000])
    if not match:
        return None
    boundary = match.group(1)
    if data.count(b"\n--" + boundary) + data.startswith(b"--" + boundary) < 2:
        return None
    header = f'Content-Type: {ctype}; boundary="'.encode() + boundary.replace(b'"', b"") + b'"\n\n'
    reparsed = email.message_from_bytes(header + data)
    payload = getattr(reparsed, "_payload", None)
    return payload if isinstance(payload, list) and payload else None


def _content_id(part) -> str:
    return _clean(_fix_8bit(_get(part, "Content-ID")).strip().strip("<>").strip())[:500]


def _safe(func):
    try:
        return func()
    except Exception:
        return None


def _safe_bytes(block) -> bytes:
    try:
        return _flatten(block)
    except Exception:
        return b""


class _RawHeaderGenerator(email.generator.BytesGenerator):
    """BytesGenerator that writes header values as they arrived instead of refolding them (refolding
    was most of the cost of keeping an enclosed message, and changes its bytes)."""

    def _write_headers(self, msg):
        for name, value in msg.raw_items():
            text = value if isinstance(value, str) else str(value)
            self._fp.write(f"{name}: {text}".encode("ascii", "surrogateescape") + self._NL.encode("ascii"))
        self._fp.write(self._NL.encode("ascii"))


def _flatten(msg: email.message.Message) -> bytes:
    import io

    buffer = io.BytesIO()
    _RawHeaderGenerator(buffer, mangle_from_=False).flatten(msg, linesep="\n")
    return buffer.getvalue()


def _safe_filename_text(text: str) -> str:
    return re.sub(r"[\\/:*?\"<>|\x00-\x1f]+", "_", text).strip(" ._")[:120]


def _default_filename(ctype: str, number: int) -> str:
    special = {
        "message/delivery-status": "delivery-status.txt",
        "message/disposition-notification": "disposition-notification.txt",
        "message/feedback-report": "feedback-report.txt",
        "text/rfc822-headers": "original-headers.txt",
        "text/calendar": "invite.ics",
        "message/rfc822": "message.eml",
    }
    if ctype in special:
        return special[ctype]
    extension = mimetypes.guess_extension(ctype, strict=False) or ".bin"
    return f"attachment-{number}{extension}"


def _normalize_newlines(text: str) -> str:
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def _payload_bytes(part: email.message.Message) -> bytes:
    """Decoded payload bytes of a leaf part, tolerant of odd Content-Transfer-Encoding values."""
    # The stored payload, not get_payload(): for 8-bit content compat32's get_payload() re-decodes the
    # surrogate-escaped bytes with the declared charset and "replace", which loses them.
    payload = getattr(part, "_payload", None)
    if payload is None or isinstance(payload, list):
        return b""
    if isinstance(payload, str):
        data = payload.encode("ascii", "surrogateescape")
    else:
        data = payload if isinstance(payload, bytes) else bytes(payload)
    cte = _get(part, "Content-Transfer-Encoding").strip().strip("\"'").lower()
    if not cte or cte in ("7bit", "8bit", "binary", "7-bit", "8-bit"):
        return data
    if "base64" in cte:
        return _lenient_base64(data)
    if "quoted-printable" in cte or cte in ("qp", "quoted_printable"):
        return quopri.decodestring(data.replace(b"\r\n", b"\n").replace(b"\r", b"\n"))
    if "uue" in cte or "uuencode" in cte:
        try:
            decoded = part.get_payload(decode=True)
            return decoded if isinstance(decoded, bytes) else data
        except Exception:
            return data
    return data


def _lenient_base64(data: bytes) -> bytes:
    """Decoded base64 body, as binascii.a2b_base64 decodes it (characters outside the alphabet skipped,
    decoding stops at the first padding); what it rejects is decoded from its alphabet characters alone,
    and what cannot be decoded at all is kept as it came.

    Well-formed MIME base64 (lines of the alphabet, padding only at the end) is decoded by pybase64's
    SIMD decoder in strict mode, about 3x faster including the removal of the line breaks: a strictly
    valid input has exactly one decoding, so both give the same bytes; anything strict mode refuses
    (spaces, stray characters, padding inside) goes to binascii as before."""
    try:
        return pybase64.b64decode(data.translate(None, b"\r\n"), validate=True)
    except ValueError:  # binascii.Error: not strictly valid
        pass
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:
        cleaned = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
        cleaned = cleaned[: len(cleaned) - len(cleaned) % 4]
        try:
            return binascii.a2b_base64(cleaned)
        except binascii.Error:
            return data


def _drop_unsafe_style(match: re.Match) -> str:
    return "" if _UNSAFE_CSS.search(html_lib.unescape(match.group(1))) else match.group(0)


def _salvage(raw: bytes, own_addresses: frozenset[str], reason: str) -> ParsedEmail:
    """Last resort after the parser failed: headers from the header block if possible, raw text body."""
    defects: list[str] = []
    message_id = subject = date_header = subject_header = ""
    from_: list[tuple[str, str]] = []
    to: list[tuple[str, str]] = []
    cc: list[tuple[str, str]] = []
    date = None
    head, body = _split_head(raw)
    try:
        headers = email.message_from_bytes(head + b"\n\n")
        message_id = normalize_message_id(_get(headers, "Message-ID"))
        subject_header = _get(headers, "Subject")
        subject = _clean(decode_header_text(subject_header))
        date_header = _get(headers, "Date")
        date = _parse_date(date_header)
        from_ = _parse_addresses(_get_all(headers, "From"), defects, "From")
        to = _parse_addresses(_get_all(headers, "To"), defects, "To")
        cc = _parse_addresses(_get_all(headers, "Cc"), defects, "Cc")
    except Exception as exc:
        defects.append(f"headers not salvaged: {type(exc).__name__}")
    try:
        body_text = _normalize_newlines(decode_bytes(body[:MAX_BODY_CHARS], None))
    except Exception:
        body_text = ""
    from_address = from_[0][1] if from_ else ""
    if message_id:
        key = message_id_key(message_id)
    elif date_header or from_address or subject_header:
        key = fallback_message_key(
            date_header=_collapse_ws(_fix_8bit(date_header)),
            from_address=from_address,
            subject_header=_collapse_ws(_fix_8bit(subject_header)),
            size=canonical_size(raw),
        )
    else:
        key = _raw_key(raw)
    return ParsedEmail(
        message_id=message_id,
        in_reply_to="",
        references=[],
        subject=subject,
        from_=from_,
        sender=[],
        reply_to=[],
        to=to,
        cc=cc,
        bcc=[],
        date=date,
        body_text=_clean(body_text),
        body_html="",
        has_remote_images=False,
        snippet=_clean(make_snippet(body_text)),
        attachments=[],
        size=len(raw),
        direction=SENT if any(address in own_addresses for _, address in from_) else RECEIVED,
        recipient_count=len({address for _, address in to} | {address for _, address in cc}),
        message_key=key,
        content_hash=content_fingerprint(raw),
        parse_error=_short(reason) or "unparseable message",
        defects=defects,
    )


def _split_head(raw: bytes) -> tuple[bytes, bytes]:
    match = re.search(rb"\r?\n\r?\n|\r\r", raw)
    if not match:
        return raw, b""
    return raw[: match.start()], raw[match.end() :]


# --- sanitiser configuration ----------------------------------------------------------------------

_ALLOWED_TAGS = (set(nh3.ALLOWED_TAGS) | {"font", "center", "big", "small", "u", "s", "strike", "tfoot", "th"}) - {
    "map",
    "area",
}
_GENERIC_ATTRIBUTES = {"dir", "lang", "title", "align", "valign", "style"}
_ALLOWED_ATTRIBUTES: dict[str, set[str]] = {
    "*": _GENERIC_ATTRIBUTES,
    "a": {"href", "hreflang", "name"},
    "img": {"src", "alt", "width", "height", "border", "hspace", "vspace"},
    "table": {"width", "height", "border", "cellpadding", "cellspacing", "bgcolor", "summary"},
    "td": {"width", "height", "colspan", "rowspan", "bgcolor", "nowrap", "headers"},
    "th": {"width", "height", "colspan", "rowspan", "bgcolor", "nowrap", "headers", "scope"},
    "tr": {"bgcolor", "height"},
    "col": {"span", "width"},
    "colgroup": {"span", "width"},
    "font": {"color", "face", "size"},
    "ol": {"start", "type", "reversed"},
    "ul": {"type"},
    "li": {"value"},
    "hr": {"size", "width", "noshade"},
    "blockquote": {"cite", "type"},
    "q": {"cite"},
    "del": {"cite", "datetime"},
    "ins": {"cite", "datetime"},
    "time": {"datetime"},
    "bdo": {"dir"},
}
# CSS properties that cannot fetch anything (no url(), image-set(), fonts ...). Declarations with
# suspicious values are removed afterwards anyway (_UNSAFE_CSS), since ammonia checks names only.
_SAFE_CSS_PROPERTIES = {
    "color",
    "background-color",
    "font",
    "font-family",
    "font-size",
    "font-style",
    "font-variant",
    "font-weight",
    "text-align",
    "text-decoration",
    "text-indent",
    "text-transform",
    "letter-spacing",
    "word-spacing",
    "line-height",
    "white-space",
    "word-break",
    "word-wrap",
    "overflow-wrap",
    "direction",
    "unicode-bidi",
    "vertical-align",
    "display",
    "width",
    "height",
    "max-width",
    "min-width",
    "max-height",
    "min-height",
    "margin",
    "margin-top",
    "margin-right",
    "margin-bottom",
    "margin-left",
    "padding",
    "padding-top",
    "padding-right",
    "padding-bottom",
    "padding-left",
    "border",
    "border-top",
    "border-right",
    "border-bottom",
    "border-left",
    "border-color",
    "border-style",
    "border-width",
    "border-radius",
    "border-collapse",
    "border-spacing",
    "table-layout",
    "text-overflow",
}
_HTML_CLEANER = nh3.Cleaner(
    tags=_ALLOWED_TAGS,
    clean_content_tags={"script", "style", "title", "noscript", "template", "xmp", "noembed", "noframes"},
    attributes=_ALLOWED_ATTRIBUTES,
    url_schemes={"http", "https", "mailto", "tel", "cid"},
    url_relative="deny",
    link_rel="noopener noreferrer",
    set_tag_attribute_values={"a": {"target": "_blank"}},
    filter_style_properties=_SAFE_CSS_PROPERTIES,
    strip_comments=True,
)
_TEXT_ONLY_CLEANER = nh3.Cleaner(
    tags=set(),
    clean_content_tags={"script", "style", "title", "noscript", "template", "head"},
    attributes={},
    strip_comments=True,
)
