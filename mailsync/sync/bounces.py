"""Pure: is this message a delivery failure report (a bounce), and for whom, how final, and of which message?

Runs inside `parsing.parse_message`, so in the parse worker processes: no Django, never raises (a
malformed report is just "not recognised", the message is stored as usual).

Cheap for ordinary mail: `may_be_bounce` looks only at headers parsing has already read (the content
type, the sender, the subject, X-Failed-Recipients, an empty Return-Path). Only a candidate is read in
full by `read_bounce`, in this order:
1. the RFC 3464 `message/delivery-status` part: one recipient per block (Original-Recipient, else
   Final-Recipient), its Action, Status and Diagnostic-Code;
2. the human-readable report of the many non-standard formats (qmail, Exim, Exchange 2003, Domino,
   Yahoo, Zoho, InterScan, ...): the addresses the report names before the copy of the original
   message, less the report's own parties (X-Failed-Recipients, when present, names them instead);
3. flufl.bounce (GNU Mailman's detectors) for what is left.
Permanent or temporary: a per-recipient enhanced status (5.x.x permanent, 4.x.x temporary) decides;
without one, the report's words ("permanent error", "given up" / "will retry", "Warning"), then the
SMTP reply code near the address; a report that says nothing more is a final failure (permanent).
Nothing here is specific to one file or one provider's sample: the rules are the formats' own.

The original message is found by its embedded copy (message/rfc822, text/rfc822-headers, or the
headers quoted after "Original message follows" and the like): Message-ID, Subject and To, so
ingestion can match the report to the sent mail (mailsync.sync.delivery_reports).
"""

from __future__ import annotations

import email
import email.header
import email.message
import email.utils
import quopri
import re
from dataclasses import dataclass, field

from flufl.bounce._scan import _DETECTORS as FLUFL_DETECTORS

from crm.addresses import normalize_email, plain_addresses

# Senders of bounce reports (local parts): MTAs' daemons and postmasters.
_DAEMON_LOCALPARTS = frozenset(
    {
        "mailer-daemon",
        "mailerdaemon",
        "mailer_daemon",
        "mail-daemon",
        "maildaemon",
        "postmaster",
        "post_master",
        "mail.delivery.system",
        "mail-delivery-system",
        "mdaemon",
    }
)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|not\s+(?:be\s+)?delivered|delivery\s+(?:status\s+notification|failure|failed|"
    r"problem|has\s+failed|error)|failure\s+notice|returned\s+mail|mail\s+delivery\s+(?:failed|failure|system)|"
    r"could\s+not\s+send|delivery\s+notification|non[- ]?remis|unzustellbar|mail\s+system\s+error|"
    r"error\s+sending|message\s+delivery|rejected|エラー|不達|配信できません|送信できません",
    re.I,
)
# Out-of-office answers also come from the null sender; they are no delivery report.
_AUTO_REPLY_SUBJECT = re.compile(
    r"out\s+of\s+(?:the\s+)?office|automatic\s+reply|auto(?:matic)?[- ]?reply|autoreply|vacation|abwesen|absence",
    re.I,
)
_FAILURE_WORDS = re.compile(
    r"undeliver|not\s+(?:be\s+)?delivered|could\s+not|unable\s+to\s+deliver|deliver\w*\s+(?:to\s+the\s+following\s+"
    r"recipient\w*\s+)?failed|delivery\s+failure|failed|failure|rejected|user\s+unknown|unknown\s+user|"
    r"no\s+such\s+user|mailbox|not\s+listed|error|did\s+not\s+reach|aborted|invalid|not\s+a\s+member",
    re.I,
)
_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_BASIC = re.compile(r"(?<![\d.:/-])([245])\d\d(?![\d.])")
# Where the copy of the original message starts in a plain-text report.
_ORIGINAL_MARKER = re.compile(
    r"^[ \t>]*[-=*_ ]*(?:"
    r"(?:original|returned|unsent)\s+(?:message|mail)(?!\s+was\s+received)(?!\s+sent)\b"
    r"|below\s+this\s+line\s+is\s+a\s+copy|this\s+is\s+a\s+copy\s+of\s+the\s+message|enclosed\s+is\s+a\s+copy"
    r"|included\s+is\s+a\s+copy|the\s+header\s+of\s+the\s+original|message\s+headers\s+follow"
    r"|original\s+mail\s+info|unsent\s+message\s+follows"
    r")",
    re.I | re.M,
)
# Lines whose addresses are the sender's or a helpdesk's, never a failed recipient.
_NOT_RECIPIENT_LINE = re.compile(
    r"^\s*(?:from|reply-to|sender|return-path|original\s+sender|message-id|in-reply-to|references|cc|bcc|"
    r"received|delivered-to|x-original-to|dkim-signature|list-[a-z]+)\s*:"
    r"|^\s+(?:by|with|id|for)\s+\S"  # continuation lines of a quoted Received header
    r"|mail\s+from\s*:|envelope-from|\b(?:contact|assistance)\b",
    re.I,
)
_PERMANENT_WORDS = re.compile(
    r"permanent|fatal\s+error|given\s+up|giving\s+up|no\s+further\s+(?:delivery\s+)?attempts", re.I
)
_TEMPORARY_WORDS = re.compile(
    r"temporar|will\s+(?:continue|keep)\s+(?:trying|to\s+try)|will\s+(?:be\s+)?retr|still\s+(?:be\s+)?(?:trying|retrying)|"
    r"\bwarning\b|\bdelayed\b|\bdeferred\b|could\s+not\s+send\s+mail\s+for\s+past|not\s+yet\s+been\s+delivered",
    re.I,
)
_NOT_FAILED_ACTIONS = frozenset({"delivered", "relayed", "expanded"})
MAX_RECIPIENTS = 100
MAX_DIAGNOSTIC = 500
MAX_SCAN_CHARS = 200_000
MAX_HEADER_CHARS = 1_000


@dataclass(slots=True, frozen=True)
class FailedRecipient:
    """One recipient the report says the message did not reach (yet)."""

    address: str
    permanent: bool
    status: str = ""  # enhanced status code, e.g. "5.1.1"; "" when the report gives none
    action: str = ""  # "failed", "delayed" (RFC 3464), or "" for a non-standard report
    diagnostic: str = ""
    final_address: str = ""  # Final-Recipient when it differs from the address the sender used


@dataclass(slots=True)
class BounceReport:
    recipients: list[FailedRecipient]
    original_message_id: str = ""
    original_subject: str = ""
    original_to: list[str] = field(default_factory=list)
    # How it was read: "delivery-status" (RFC 3464), "text" (the report's words) or "flufl".
    method: str = ""


def may_be_bounce(headers: dict[str, list[str]], content_type: str, report_type: str = "", raw: bytes = b"") -> bool:
    """Cheap test on headers already parsed (lower-case names), and one substring search of the raw
    bytes: could this be a bounce report? Only a candidate is read in full (read_bounce)."""
    if content_type == "multipart/report":
        return report_type.lower() in ("", "delivery-status")
    if headers.get("x-failed-recipients"):
        return True
    sender = (headers.get("from") or [""])[0][:MAX_HEADER_CHARS]  # parseaddr is slow on huge headers
    address = sender_address(sender)
    local = address.rsplit("@", 1)[0] if address else sender.strip().strip("<>").lower()
    if local in _DAEMON_LOCALPARTS or "mailer-daemon" in sender.lower() or not local:
        return True  # a daemon, a postmaster, or the null sender "<>"
    if raw.find(b"elivery-status", 0, MAX_SCAN_CHARS) >= 0:  # [Dd]elivery-status, without copying the bytes
        return True  # an RFC 3464 part in a report that is not multipart/report
    subject = (headers.get("subject") or [""])[0][:MAX_HEADER_CHARS]  # decoding is slow on huge headers
    if "=?" in subject:
        subject = _decode_subject(subject)
    if _AUTO_REPLY_SUBJECT.search(subject):
        return False
    return_path = (headers.get("return-path") or [""])[-1].strip()
    if return_path == "<>":
        return True  # the null envelope sender: kept for delivery reports and other notifications
    if not _BOUNCE_SUBJECT.search(subject):
        return False
    auto = (headers.get("auto-submitted") or [""])[0].lower()
    no_reply = local.replace("-", "").replace("_", "") in ("noreply", "donotreply")
    return return_path == "" or auto.startswith("auto-") or no_reply


def sender_address(value: str) -> str:
    """email.utils.parseaddr(value)[1].lower(): the first address of a From value, without the stdlib's
    character-by-character lexer when the value is plain (a fifth of a bounce check's time)."""
    plain = plain_addresses(value)
    if plain:
        return plain[0][1].lower()
    return email.utils.parseaddr(value)[1].lower()


def read_bounce(raw: bytes) -> BounceReport | None:
    """The report in these bytes, or None when it names no failed recipient. Never raises."""
    try:
        return _read(raw)
    except Exception:  # a malformed report is "not recognised"; the message is kept as it is
        return None


def is_permanent_status(status: str) -> bool | None:
    """5.x.x -> True, 4.x.x -> False, anything else -> None."""
    if status[:2] == "5.":
        return True
    if status[:2] == "4.":
        return False
    return None


# --- internals ------------------------------------------------------------------------------------


def _read(raw: bytes) -> BounceReport | None:
    data = re.sub(rb"\r\n?", b"\n", raw)
    if data.startswith(b"From "):  # an mbox separator line
        data = data.split(b"\n", 1)[-1]
    msg = email.message_from_bytes(data.lstrip(b"\n"))
    own = _own_addresses(msg)
    parts = list(_report_parts(msg))
    original = _original(msg, parts)

    recipients = _from_delivery_status(
        [_part_text(part) for part in parts if part.get_content_type() == "message/delivery-status"]
    )
    if not recipients:  # RFC 3464 fields pasted into the text of a report that is not multipart/report
        recipients = _from_delivery_status([_part_text(part) for part in parts if _is_text(part)])
    method = "delivery-status"
    if not recipients:
        text = _report_text(parts)
        recipients = _from_text(msg, text, own)
        method = "text"
        if not recipients:
            recipients = _from_flufl(msg, text, own)
            method = "flufl"
    if not recipients:
        return None
    return BounceReport(
        recipients=recipients[:MAX_RECIPIENTS],
        original_message_id=original[0],
        original_subject=original[1],
        original_to=original[2],
        method=method,
    )


def _own_addresses(msg: email.message.Message) -> set[str]:
    """The report's own parties: its sender and the original sender it is addressed to."""
    values = []
    for name in ("from", "to", "cc", "reply-to", "sender", "return-path"):
        values.extend(str(value) for value in msg.get_all(name, []))
    return {address.lower() for _name, address in email.utils.getaddresses(values) if "@" in address}


def _report_parts(msg: email.message.Message):
    """Leaf parts of the report, not descending into an enclosed message (a bounce may enclose another)."""
    stack = [msg]
    seen = 0
    while stack and seen < 200:
        part = stack.pop(0)
        seen += 1
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global", "text/rfc822-headers", "message/rfc822-headers"):
            yield part
            continue
        payload = part.get_payload()
        if part.is_multipart() and isinstance(payload, list) and ctype != "message/delivery-status":
            stack[0:0] = [child for child in payload if isinstance(child, email.message.Message)]
            continue
        yield part


def _part_text(part: email.message.Message) -> str:
    payload = part.get_payload()
    if part.get_content_maintype() == "multipart" and isinstance(payload, str):
        return payload[:MAX_SCAN_CHARS]
    if isinstance(payload, list):  # message/delivery-status: header blocks
        text = "\n".join(block.as_string() for block in payload if isinstance(block, email.message.Message))
        if (part.get("content-transfer-encoding") or "").strip().lower() == "quoted-printable":
            text = quopri.decodestring(text.encode("latin-1", "replace")).decode("utf-8", "replace")
        return text
    data = part.get_payload(decode=True)
    if data is None:
        data = str(payload).encode("utf-8", "replace")
    charset = part.get_content_charset() or "utf-8"
    try:
        text = data.decode(charset, "replace")
    except LookupError:
        text = data.decode("utf-8", "replace")
    if part.get_content_type() == "text/html":
        text = re.sub(r"<[^>]+>", " ", text.replace("<br", "\n<br").replace("</p", "\n</p"))
    return text[:MAX_SCAN_CHARS]


def _dsn_fields(text: str) -> list[dict[str, str]]:
    """RFC 3464 field blocks (unfolded, names lower-case), separated by blank lines."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for line in text.split("\n"):
        if not line.strip():
            if current:
                blocks.append(current)
            current, last = {}, ""
            continue
        if line[:1] in (" ", "\t") and last:
            current[last] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep or " " in name.strip():
            continue
        last = name.strip().lower()
        if last in ("final-recipient", "original-recipient") and last in current:
            blocks.append(current)  # the next recipient's block without a blank line between
            current = {}
        current.setdefault(last, value.strip())
    if current:
        blocks.append(current)
    return blocks


def _dsn_address(value: str) -> str:
    value = value.split(";", 1)[1] if ";" in value else value
    match = _ADDRESS.search(value)
    return _clean_address(match.group(0)) if match else ""


def _from_delivery_status(texts: list[str]) -> list[FailedRecipient]:
    found: dict[str, FailedRecipient] = {}
    for text in texts:
        for block in _dsn_fields(text):
            final = _dsn_address(block.get("final-recipient", ""))
            original = _dsn_address(block.get("original-recipient", ""))
            address = original or final
            if not address:
                continue
            action = block.get("action", "").split()[0].lower() if block.get("action", "").split() else ""
            if action in _NOT_FAILED_ACTIONS:
                continue
            diagnostic = block.get("diagnostic-code", "")
            diagnostic = diagnostic.split(";", 1)[1].strip() if ";" in diagnostic[:20] else diagnostic.strip()
            status_match = _ENHANCED.search(block.get("status", ""))
            status = ".".join(status_match.groups()) if status_match else ""
            permanent = is_permanent_status(status)
            if permanent is None:
                code = _ENHANCED.search(diagnostic) or _BASIC.search(diagnostic)
                if code and code.group(1) in "45":
                    permanent = code.group(1) == "5"
                    if not status and code.re is _ENHANCED:
                        status = ".".join(code.groups())
            if permanent is None:
                if status[:2] == "2.":
                    continue
                permanent = action != "delayed"
            if address not in found:
                found[address] = FailedRecipient(
                    address=address,
                    permanent=permanent,
                    status=status,
                    action=action,
                    diagnostic=diagnostic[:MAX_DIAGNOSTIC],
                    final_address=final if final and final != address else "",
                )
    return list(found.values())


def _is_text(part: email.message.Message) -> bool:
    """A readable part of the report: text, or a multipart whose boundary was lost (read as text)."""
    if part.get_content_disposition() == "attachment":
        return False
    if part.get_content_type() in ("text/plain", "text/html"):
        return True
    return part.get_content_maintype() == "multipart" and isinstance(part.get_payload(), str)


def _report_text(parts) -> str:
    """The human-readable report: its text parts up to the copy of the original message."""
    texts = []
    for part in parts:
        if _is_text(part):
            texts.append(_part_text(part))
    text = "\n".join(texts)
    marker = _ORIGINAL_MARKER.search(text)
    return text[: marker.start()] if marker else text


def _from_text(msg: email.message.Message, text: str, own: set[str]) -> list[FailedRecipient]:
    subject = str(msg.get("subject", ""))
    failed_header = " ".join(str(value) for value in msg.get_all("x-failed-recipients", []))
    if failed_header:
        addresses = list(dict.fromkeys(_clean_address(a) for a in _ADDRESS.findall(failed_header)))
    else:
        if not (_FAILURE_WORDS.search(text) or _FAILURE_WORDS.search(subject)):
            return []
        addresses = []
        for line in text.split("\n"):
            if _NOT_RECIPIENT_LINE.search(line):
                continue
            for match in _ADDRESS.finditer(line):
                if line[max(0, match.start() - 1) : match.start()] in ("/", "=", "?", "&"):
                    continue  # part of a URL
                address = _clean_address(match.group(0))
                if address and address not in own and not address.startswith("mailer-daemon@"):
                    addresses.append(address)
        addresses = list(dict.fromkeys(addresses))
    addresses = [a for a in addresses if a][:MAX_RECIPIENTS]
    return [_judge(address, text, subject) for address in addresses]


def _judge(address: str, text: str, subject: str) -> FailedRecipient:
    """Permanent or temporary for one address of a plain-text report, with the line that says why."""
    lines = text.split("\n")
    lowered = [line.lower() for line in lines]
    windows = []
    for index, line in enumerate(lowered):
        if address in line:
            windows.append(lines[index : index + 4])
    for window in windows:
        for line in window:
            code = _ENHANCED.search(line)
            if code and code.group(1) in "45":
                return FailedRecipient(
                    address=address,
                    permanent=code.group(1) == "5",
                    status=".".join(code.groups()),
                    diagnostic=line.strip()[:MAX_DIAGNOSTIC],
                )
    diagnostic = _diagnostic_line(windows, address)
    whole = subject + "\n" + text
    if _PERMANENT_WORDS.search(whole):
        return FailedRecipient(address=address, permanent=True, diagnostic=diagnostic)
    for window in windows:
        for line in window:
            code = _BASIC.search(line.replace(address, ""))
            if code and code.group(1) in "45":
                return FailedRecipient(
                    address=address, permanent=code.group(1) == "5", diagnostic=line.strip()[:MAX_DIAGNOSTIC]
                )
    if _TEMPORARY_WORDS.search(whole):
        return FailedRecipient(address=address, permanent=False, diagnostic=diagnostic)
    return FailedRecipient(address=address, permanent=True, diagnostic=diagnostic)


def _diagnostic_line(windows: list[list[str]], address: str) -> str:
    for window in windows:
        for line in window[1:]:
            if line.strip() and address not in line.lower():
                return line.strip()[:MAX_DIAGNOSTIC]
    return ""


def _from_flufl(msg: email.message.Message, text: str, own: set[str]) -> list[FailedRecipient]:
    # flufl.bounce.all_failures stops (and logs a traceback) at the first detector that trips on odd
    # input; its own loop over the same detectors (the version is pinned), each one guarded, does not.
    temporary, permanent = set(), set()
    for detector in FLUFL_DETECTORS:
        try:
            temporary, permanent = detector().process(msg)
        except Exception:  # noqa: S112 (one heuristic failing on odd input; the next may still know it)
            continue
        if temporary or permanent:
            break
    subject = str(msg.get("subject", ""))
    result = []
    for raw_address, is_permanent in [(a, True) for a in permanent] + [(a, False) for a in temporary]:
        address = _clean_address(
            raw_address.decode("utf-8", "replace") if isinstance(raw_address, bytes) else raw_address
        )
        if not address or address in own or address in {r.address for r in result}:
            continue
        judged = _judge(address, text, subject)
        result.append(
            FailedRecipient(
                address=address,
                permanent=judged.permanent if judged.status else is_permanent,
                status=judged.status,
                diagnostic=judged.diagnostic,
            )
        )
    return result[:MAX_RECIPIENTS]


def _original(msg: email.message.Message, parts) -> tuple[str, str, list[str]]:
    """(Message-ID, Subject, To addresses) of the message that bounced, from its enclosed copy."""
    for part in parts:
        ctype = part.get_content_type()
        headers = None
        if ctype in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            inner = payload[0] if isinstance(payload, list) and payload else None
            if isinstance(inner, email.message.Message):
                headers = inner
        elif ctype in ("text/rfc822-headers", "message/rfc822-headers"):
            headers = email.message_from_string(_part_text(part).lstrip("\n"))
        if headers is not None and (headers.get("message-id") or headers.get("subject")):
            return _original_fields(headers)
    # Plain-text reports quote the original after a marker ("Original message follows", ...).
    text = "\n".join(_part_text(part) for part in parts if part.get_content_maintype() == "text")
    marker = _ORIGINAL_MARKER.search(text)
    if marker:
        quoted = text[marker.end() :].split("\n", 1)[-1].lstrip("\n")
        headers = email.message_from_string(quoted)
        if headers.get("message-id") or headers.get("subject"):
            return _original_fields(headers)
    match = re.search(r"^message-id:\s*(<[^>\s]+>)", text, re.I | re.M)
    return (_message_id(match.group(1)) if match else "", "", [])


def _original_fields(headers: email.message.Message) -> tuple[str, str, list[str]]:
    message_id = _message_id(str(headers.get("message-id", "")))
    subject = _decode_subject(str(headers.get("subject", "")))
    to = [
        _clean_address(address)
        for _name, address in email.utils.getaddresses(
            [str(v) for v in headers.get_all("to", []) + headers.get_all("cc", [])]
        )
    ]
    return message_id, subject, [address for address in to if address]


def _message_id(value: str) -> str:
    match = re.search(r"<([^<>\s]+)>", value)
    return match.group(1).strip() if match else value.strip().strip("<>").strip()


def _decode_subject(value: str) -> str:
    try:
        return str(email.header.make_header(email.header.decode_header(value))).strip()
    except Exception:
        return value.strip()


def _clean_address(value: str) -> str:
    address = value.strip().strip("<>\"'()[],;:.").lower()
    if address.count("@") != 1:
        return ""
    return normalize_email(address) or address
