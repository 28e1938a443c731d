"""mailsync.sync.parsing: bytes -> ParsedEmail, on the real-world corpus and on crafted edge cases."""
# ruff: noqa: RUF001  (the test data is deliberately multilingual: dashes, Hebrew, full-width commas)

import base64
import binascii
import email
import email.utils
import hashlib
import random
import re
import string
from datetime import UTC, datetime
from pathlib import Path

import pytest

from crm.addresses import plain_addresses
from mailsync.mailboxes.words import CJK_RUN_RE, SEARCH_WORD_CHARS, distinct_terms, search_words
from mailsync.sync.parsing import (
    RECEIVED,
    SENT,
    ParsedEmail,
    _fast_headers,
    _fast_parse,
    _fix_8bit,
    _has_quoted_line,
    _lenient_base64,
    _lf_line_ends,
    _parse,
    _Unusual,
    canonical_size,
    decode_bytes,
    decode_rfc2047,
    html_to_text,
    make_snippet,
    message_id_key,
    normalize_message_id,
    parse_many,
    parse_message,
    sanitize_html,
    search_terms_of,
)

CORPUS = Path("/work/shared/corpus")
CORPUS_FILES = sorted(
    path
    for path in CORPUS.rglob("*")
    if path.is_file() and not path.name.startswith(("LICENSE", "SOURCES", ".")) and path.suffix != ".md"
)


def corpus(relative: str) -> bytes:
    path = CORPUS / relative
    if not path.exists():
        pytest.skip(f"corpus file {relative} not present")
    return path.read_bytes()


def build(
    *,
    subject="Hello",
    sender="Ann Example <ann@example.com>",
    to="alice@company.test",
    extra_headers="",
    body="Hi there",
    content_type="text/plain; charset=utf-8",
    message_id="<m1@example.com>",
    date="Tue, 04 Mar 2025 10:00:00 +0100",
    cte="8bit",
) -> bytes:
    headers = [f"From: {sender}", f"To: {to}", f"Subject: {subject}"]
    if date is not None:
        headers.append(f"Date: {date}")
    if message_id is not None:
        headers.append(f"Message-ID: {message_id}")
    headers += ["MIME-Version: 1.0", f"Content-Type: {content_type}", f"Content-Transfer-Encoding: {cte}"]
    text = "\r\n".join(headers) + "\r\n" + extra_headers + "\r\n" + body
    return text.encode("utf-8")


def assert_storable(parsed: ParsedEmail) -> None:
    """Every string can go into PostgreSQL (no NUL, valid UTF-8) and the key looks like sha256."""
    strings = [parsed.subject, parsed.body_text, parsed.body_html, parsed.snippet, parsed.message_id]
    strings += [parsed.in_reply_to, parsed.parse_error, *parsed.references]
    for _role, name, address in parsed.participants():
        strings += [name, address]
    for attachment in parsed.attachments:
        strings += [attachment.filename, attachment.content_type, attachment.content_id]
        assert attachment.size == len(attachment.payload)
    for value in strings:
        assert isinstance(value, str)
        assert "\x00" not in value
        value.encode("utf-8")
    assert re.fullmatch(r"[0-9a-f]{64}", parsed.message_key)


# --- the corpus -----------------------------------------------------------------------------------


def test_corpus_is_present():
    assert len(CORPUS_FILES) > 250


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: str(p.relative_to(CORPUS)))
def test_every_corpus_message_parses_without_raising(path):
    raw = path.read_bytes()
    parsed = parse_message(raw, own_addresses=frozenset({"kijitora@example.jp"}))
    assert_storable(parsed)
    assert parsed.size == len(raw)
    # Either it parsed, or it says why and still salvaged something to show.
    assert parsed.parse_error or parsed.from_ or parsed.subject or parsed.body_text or parsed.attachments


def comparable(parsed: ParsedEmail) -> dict:
    """Everything but defect notes; enclosed messages are kept byte-exact by the fast path and
    re-serialised by the stdlib path, so only their presence is compared."""
    result = {name: getattr(parsed, name) for name in parsed.__slots__ if name not in ("defects", "attachments")}
    result["attachments"] = [
        (
            a.filename,
            a.content_type,
            a.content_id,
            a.is_inline,
            None if a.content_type.startswith("message/") else a.payload,
        )
        for a in parsed.attachments
    ]
    return result


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: str(p.relative_to(CORPUS)))
def test_fast_mime_path_gives_the_same_result_as_the_stdlib_path(path):
    raw = path.read_bytes()
    assert comparable(_parse(raw, frozenset(), fast=True)) == comparable(_parse(raw, frozenset(), fast=False))


def test_fast_mime_path_handles_most_real_mail():
    taken = 0
    for path in CORPUS_FILES:
        try:
            raw = path.read_bytes()
            _fast_parse(raw, bare_cr=_lf_line_ends(raw)[1])
            taken += 1
        except Exception:
            continue
    assert taken > 0.75 * len(CORPUS_FILES)


def test_fast_path_leaves_odd_structures_to_the_stdlib():
    odd = [
        build(content_type='multipart/mixed; boundary="b"junk', body="--b\r\n\r\nx\r\n--b--\r\n"),
        build(content_type='multipart/mixed; boundary="b"', body="--b\r\n\r\nno closing delimiter"),
        build(content_type='multipart/mixed; boundary="b"', body="Content-Type: text/plain\r\n\r\n--b--\r\n"),
        build(body="bare\rcarriage return"),
        build(cte="x-uuencode", body="begin 644 a\r\n`\r\nend\r\n"),
    ]
    for raw in odd:
        with pytest.raises(_Unusual):
            _fast_parse(raw, bare_cr=_lf_line_ends(raw)[1])
        stdlib = _parse(raw, frozenset(), fast=False)
        stdlib.search_terms = search_terms_of(stdlib)  # parse_message adds them to what either path parsed
        assert comparable(parse_message(raw)) == comparable(stdlib)


def _random_mime_body(rng: random.Random, depth: int) -> tuple[str, str]:
    """(Content-Type value, body) of a random MIME structure: nested multiparts, enclosed messages,
    empty parts, preambles and epilogues, delimiters with trailing blanks, parts without headers."""
    kinds = ["text", "text", "html", "base64", "multipart", "multipart", "message"]
    kind = rng.choice(kinds if depth < 4 else ["text"])
    if kind == "text":
        return "text/plain; charset=utf-8", rng.choice(["", "plain words", "line one\r\nline two\r\n", "--x-ish"])
    if kind == "html":
        return 'text/html; charset="utf-8"', "<p>Hello <b>there</b></p>"
    if kind == "base64":
        data = base64.encodebytes(rng.randbytes(rng.randrange(0, 120))).decode().replace("\n", "\r\n")
        return 'application/octet-stream; name="f.bin"', "Content-Transfer-Encoding: base64\r\n\r\n" + data
    if kind == "message":
        inner_type, inner_body = _random_mime_body(rng, depth + 1)
        return "message/rfc822", f"Subject: inner\r\nContent-Type: {inner_type}\r\n\r\n{inner_body}"
    boundary = f"b{depth}{rng.randrange(1000)}"
    subtype = rng.choice(["mixed", "alternative", "related"])
    chunks = [rng.choice(["", "preamble text\r\n"])]
    for _ in range(rng.randrange(1, 4)):
        if rng.random() < 0.15:
            chunks.append(f"--{boundary}{rng.choice(['', ' ', chr(9)])}\r\n\r\n")  # a part with no headers
            continue
        part_type, part_body = _random_mime_body(rng, depth + 1)
        separator = "" if part_body.startswith("Content-Transfer-Encoding") else "\r\n"  # its own header
        chunks.append(f"--{boundary}\r\nContent-Type: {part_type}\r\n{separator}{part_body}\r\n")
    chunks.append(f"--{boundary}--" + rng.choice(["", "\r\n", "\r\nepilogue\r\n"]))
    return f'multipart/{subtype}; boundary="{boundary}"', "".join(chunks)


def test_fast_mime_path_gives_the_same_result_as_the_stdlib_path_on_random_structures():
    rng = random.Random(1848)
    fast_taken = 0
    for _ in range(400):
        content_type, body = _random_mime_body(rng, 0)
        cte = "8bit"
        if body.startswith("Content-Transfer-Encoding: base64"):
            cte, body = "base64", body.split("\r\n\r\n", 1)[1]
        raw = build(content_type=content_type, body=body, cte=cte)
        if rng.random() < 0.2:
            raw = b"From ann@example.com Tue Mar  4 10:00:00 2025\r\n" + raw  # an mbox envelope line
        try:
            _fast_parse(raw, bare_cr=False)
            fast_taken += 1
        except _Unusual:
            pass
        fast, stdlib = _parse(raw, frozenset(), fast=True), _parse(raw, frozenset(), fast=False)
        assert comparable(fast) == comparable(stdlib), raw
    assert fast_taken > 300  # the structures are well-formed: the fast path takes nearly all of them


def test_fast_header_block_reading_matches_the_stdlib_on_random_blocks():
    rng = random.Random(1850)
    taken = 0
    values = ["", " ", "plain", "two  words ", "caf\xc3\xa9", "=?utf-8?q?x?=", "a:b", "\t", "x\r"]
    for _ in range(1000):
        lines = []
        for index in range(rng.randrange(1, 6)):
            lines.append(
                f"X-H{index}:{rng.choice(['', ' ', '  ', chr(9)])}".encode() + rng.choice(values).encode("latin-1")
            )
            for _fold in range(rng.choice((0, 0, 1, 2))):
                lines.append(rng.choice((b" ", b"\t", b"  ")) + rng.choice(values).encode("latin-1"))
        head = b"".join(line + b"\r\n" for line in lines)
        expected = list(email.message_from_bytes(head + b"\r\n").raw_items())
        try:
            fast = _fast_headers(head)
        except _Unusual:  # the fast path may decline (a CR inside a line); it must never differ
            continue
        assert fast == expected, head
        taken += 1
    assert taken > 500


def test_quoted_line_check_matches_the_two_byte_search():
    rng = random.Random(1851)
    for _ in range(3000):
        data = bytes(rng.choice(b"ab>>\n \r") for _ in range(rng.randrange(0, 400)))
        if rng.random() < 0.3:
            data = b"x>" * rng.randrange(60, 70) + data  # past the 64 ">" the one-byte search looks at
        start = rng.randrange(0, len(data) + 1)
        expected = data.startswith(b">", start) or data.find(b"\n>", start) >= 0
        assert _has_quoted_line(data, start) is expected, (data, start)


def test_legacy_iso_2022_jp_with_windows_extensions_is_decoded():
    # "ЖД№41 от 28.09.2016": the № is an NEC extension only CP50220 decoders know.
    parsed = parse_message(corpus("php-mime-mail-parser/issue116"))
    assert parsed.subject == "ЖД№41 от 28.09.2016"


@pytest.mark.parametrize(
    ("relative", "subject", "body_part"),
    [
        ("mikel-mail/plain_emails/raw_email.eml", "NOTE: 한국말로 하는 것", "제 이름은 Jamis입니다."),  # euc-kr
        ("mikel-mail/multi_charset/japanese_shift_jis.eml", "test", "このメールはテスト用のメールです。"),
        ("mikel-mail/multi_charset/japanese_iso_2022.eml", "まみむめも", "すみません。"),
        ("php-mime-mail-parser/failure.eml", "", "次の受信者またはグループへの配信に失敗しました"),  # gb2312
    ],
)
def test_legacy_charsets_subject_and_body(relative, subject, body_part):
    parsed = parse_message(corpus(relative))
    assert parsed.subject == subject
    assert body_part in parsed.body_text
    assert not parsed.parse_error


def test_ks_c_5601_attachment_name_is_decoded():
    parsed = parse_message(corpus("php-mime-mail-parser/m0018"))
    assert "사진.JPG" in [attachment.filename for attachment in parsed.attachments]


def test_attachment_with_rfc2231_filename_and_content():
    parsed = parse_message(corpus("mikel-mail/attachment_emails/attachment_with_quoted_filename.eml"))
    (attachment,) = parsed.attachments
    assert attachment.filename == "Eelanalüüsi päring.jpg"
    assert attachment.content_type == "image/jpeg"
    assert attachment.payload[:3] == b"\xff\xd8\xff"  # a JPEG, decoded from base64
    assert parsed.has_attachments


def test_pdf_attachment_keeps_bytes():
    parsed = parse_message(corpus("mikel-mail/attachment_emails/attachment_pdf.eml"))
    (attachment,) = parsed.attachments
    assert attachment.filename == "broken.pdf"
    assert attachment.content_type == "application/pdf"
    assert attachment.payload.startswith(b"%PDF")
    assert not attachment.is_inline


def test_inline_cid_image_is_inline_and_referenced_by_the_html():
    parsed = parse_message(corpus("php-mime-mail-parser/issue115"))
    logo = next(a for a in parsed.attachments if a.filename == "logo.jpg")
    text = next(a for a in parsed.attachments if a.filename == "attachment.txt")
    assert logo.is_inline and logo.content_id
    assert f'src="cid:{logo.content_id}"' in parsed.body_html
    assert not text.is_inline
    assert parsed.has_attachments


def test_bounce_is_recognised_with_the_bounced_message_id():
    parsed = parse_message(corpus("mailgun-flanker/bounce/mailbox-full.eml"))
    assert parsed.is_bounce
    assert parsed.bounced_message_id == "4E326A95.3010907@example.com"
    assert "delivery" in parsed.body_text.lower()
    assert {a.content_type for a in parsed.attachments} >= {"message/delivery-status", "text/rfc822-headers"}


def test_missing_boundary_is_flagged_and_the_text_salvaged():
    parsed = parse_message(corpus("mailgun-flanker/mailformed-headers.eml"))
    assert "boundary" in parsed.parse_error
    assert "Hello" in parsed.body_text
    assert parsed.from_address == "headers@gmail.com"


def test_missing_final_boundary_still_parses():
    parsed = parse_message(corpus("mailgun-flanker/missing-final-boundary.eml"))
    assert not parsed.parse_error
    assert parsed.body_text


def test_huge_header_is_decoded_and_capped():
    raw = corpus("mailgun-flanker/long-header.eml")
    assert len(raw) > 100_000
    parsed = parse_message(raw)
    assert parsed.subject.startswith("Die heiße Zypernsonne quälte Max")
    assert len(parsed.subject) <= 2000
    assert parsed.body_text == "test"


def test_endless_nesting_does_not_crash():
    parsed = parse_message(corpus("mailgun-flanker/enclosed-endless.eml"))
    assert parsed.subject == "Wow"
    assert_storable(parsed)


def test_cr_only_line_endings_parse():
    parsed = parse_message(corpus("sisimai-set-of-emails/mac/lhost-domino-01.eml"))
    assert parsed.from_address == "postmaster@example.jp"
    assert "not listed in Domino Directory" in parsed.subject
    assert "kijitora@example.jp" in parsed.body_text


def test_rfc6532_utf8_headers():
    parsed = parse_message(corpus("mikel-mail/rfc6532/utf8_headers.eml"))
    assert parsed.subject == "Säying Hello"
    assert parsed.from_name == "Jöhn Doe"


def test_mislabelled_utf8_text_is_read_as_utf8():
    # Declared x-mac-cyrillic, but the bytes are UTF-8: decoding them as Mac Cyrillic gives mojibake.
    parsed = parse_message(corpus("php-mime-mail-parser/issue230"))
    assert "–¢–µ–Ї" in parsed.body_text
    assert "вАУ" not in parsed.body_text


# --- crafted messages -----------------------------------------------------------------------------


def test_header_fields_and_normalisation():
    raw = build(
        subject="=?UTF-8?B?UmU6IE9mZmVy?= =?UTF-8?Q?_f=C3=BCr_Sie?=",
        sender='"Ann, Example" <Ann@Example.COM>',
        to="bob@CUSTOMER.example, =?utf-8?q?Ren=C3=A9?= <rene@customer.example>, undisclosed-recipients:;",
        extra_headers=(
            "Cc: not an address, carol@customer.example\r\n"
            "Bcc: <secret@company.test>\r\nReply-To: replies@example.com\r\n"
            "In-Reply-To: <Parent@Example.COM>\r\nReferences: <root@example.com>\r\n <Parent@Example.COM>\r\n"
        ),
        message_id="<ABC.123@Mail.Example.COM>",
    )
    parsed = parse_message(raw)
    assert parsed.subject == "Re: Offer für Sie"
    assert parsed.from_ == [("Ann, Example", "ann@example.com")]
    assert parsed.to == [("", "bob@customer.example"), ("René", "rene@customer.example")]
    assert parsed.cc == [("", "carol@customer.example")]
    assert parsed.bcc == [("", "secret@company.test")]
    assert parsed.reply_to == [("", "replies@example.com")]
    assert parsed.message_id == "ABC.123@mail.example.com"
    assert parsed.in_reply_to == "Parent@example.com"
    assert parsed.references == ["root@example.com", "Parent@example.com"]
    assert parsed.recipient_count == 4
    assert parsed.date == datetime(2025, 3, 4, 9, 0, tzinfo=UTC)
    assert parsed.thread_ids() == ["ABC.123@mail.example.com", "Parent@example.com", "root@example.com"]


def test_large_recipient_lists_are_kept_whole():
    recipients = ", ".join(f"Person {n} <p{n}@customer.example>" for n in range(250))
    parsed = parse_message(build(to=recipients, extra_headers=f"Bcc: {recipients.replace('p', 'b')}\r\n"))
    assert len(parsed.to) == 250
    assert len(parsed.bcc) == 250
    assert parsed.recipient_count == 500


def test_direction_follows_own_addresses():
    own = frozenset({"alice@company.test"})
    assert parse_message(build(sender="Alice <Alice@Company.test>"), own_addresses=own).direction == SENT
    assert parse_message(build(sender="ann@example.com"), own_addresses=own).direction == RECEIVED


def test_message_key_is_the_hash_of_the_normalised_message_id():
    first = parse_message(build(message_id="<id-1@Example.COM>"))
    second = parse_message(build(message_id="id-1@example.com", subject="other"))
    assert first.message_key == second.message_key == hashlib.sha256(b"id-1@example.com").hexdigest()
    assert message_id_key("id-1@example.com") == first.message_key


def test_message_key_without_message_id_uses_date_from_subject_size():
    crlf = build(message_id=None)
    lf = crlf.replace(b"\r\n", b"\n")
    assert parse_message(crlf).message_key == parse_message(lf).message_key  # IMAP copy == mbox copy
    assert canonical_size(lf) == len(crlf)
    assert parse_message(build(message_id=None, subject="Other")).message_key != parse_message(crlf).message_key
    other_date = build(message_id=None, date="Wed, 05 Mar 2025 10:00:00 +0100")
    assert parse_message(other_date).message_key != parse_message(crlf).message_key
    # Same headers, different body length: different messages.
    assert parse_message(build(message_id=None, body="Hi there!")).message_key != parse_message(crlf).message_key


def test_garbage_date_falls_back_to_received_header():
    raw = build(
        date="yesterday-ish",
        extra_headers="Received: from x by y; Mon, 03 Mar 2025 08:30:00 +0000\r\n",
    )
    assert parse_message(raw).date == datetime(2025, 3, 3, 8, 30, tzinfo=UTC)
    assert parse_message(build(date="not a date")).date is None


def test_html_only_message_gets_text_and_snippet():
    html = "<html><head><style>p{color:red}</style><title>T</title></head><body><p>Hello&nbsp;<b>World</b></p>"
    html += "<p>Second   line</p><script>alert(1)</script></body></html>"
    parsed = parse_message(build(content_type="text/html; charset=utf-8", body=html))
    assert parsed.body_text == "Hello World\nSecond line"
    assert parsed.snippet == "Hello World Second line"
    assert "<script" not in parsed.body_html and "alert" not in parsed.body_html


def test_rtl_text_is_preserved():
    html = '<div dir="rtl" lang="he">שלום עולם</div><p dir="rtl">مرحبا بالعالم</p>'
    parsed = parse_message(build(content_type="text/html; charset=utf-8", body=html, subject="سلام دنیا"))
    assert parsed.subject == "سلام دنیا"
    assert '<div dir="rtl" lang="he">שלום עולם</div>' in parsed.body_html
    assert "مرحبا بالعالم" in parsed.body_text
    plain = parse_message(build(body="اردو میں متن\nשורה שנייה", content_type="text/plain; charset=utf-8"))
    assert plain.body_text == "اردو میں متن\nשורה שנייה"


def test_snippet_skips_quoted_lines_and_is_short():
    text = "Thanks, see below.\n\n> old quoted text\n> more\n" + "word " * 200
    snippet = make_snippet(text)
    assert snippet.startswith("Thanks, see below. word word")
    assert "quoted" not in snippet
    assert len(snippet) <= 200


def test_base64_text_in_windows_1252_and_quoted_printable_utf8():
    body = "Q2Fm6SBjcuhtZQ=="  # "Café crème" in windows-1252
    parsed = parse_message(build(content_type="text/plain; charset=windows-1252", cte="base64", body=body))
    assert parsed.body_text == "Café crème"
    qp = parse_message(build(cte="quoted-printable ", body="Gr=C3=BC=C3=9Fe=\r\n aus K=C3=B6ln"))
    assert qp.body_text == "Grüße aus Köln"


def _binascii_only_base64(data: bytes) -> bytes:
    """_lenient_base64 before pybase64: binascii alone (the reference the fast path must agree with)."""
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:
        cleaned = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
        cleaned = cleaned[: len(cleaned) - len(cleaned) % 4]
        try:
            return binascii.a2b_base64(cleaned)
        except binascii.Error:
            return data


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"JVBERi0xLjQK",
        b"JVBERi0xLjQK\r\n",
        b"SGVsbG8=\r\n",
        b"SGVsbG8=\r\nV29ybGQ=\r\n",  # two padded chunks glued: binascii stops at the first padding
        b"SGVs bG8=",  # a space inside
        b"SGVsbG8",  # padding missing
        b"SGVsbG8===",
        b"S",
        b"SGVs\x00bG8=",
        b"SGVs-bG8_",  # URL-safe characters
        b"not base64 at all!",
        b"=SGVsbG8",
        b"SGVsbG8=trailing",
        b"\r\n\r\nSGVsbG8=\r\n\r\n",
        b"SGVs\rbG8=\n",  # bare CR and bare LF line breaks
    ],
)
def test_base64_bodies_decode_as_binascii_decodes_them(data):
    assert _lenient_base64(data) == _binascii_only_base64(data)


def test_base64_bodies_decode_as_binascii_decodes_them_random():
    rng = random.Random(1818)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
    for _ in range(3000):
        payload = rng.randbytes(rng.randrange(0, 300))
        encoded = bytearray(base64.encodebytes(payload).replace(b"\n", b"\r\n"))
        for _ in range(rng.choice((0, 0, 1, 2))):  # some left intact, others damaged in one or two places
            where = rng.randrange(len(encoded) + 1)
            change = rng.choice((b" ", b"=", b"\n", b"\r", b"-", b"\x00", bytes([rng.choice(alphabet)])))
            if rng.random() < 0.5 and where < len(encoded):
                encoded[where : where + 1] = change
            else:
                encoded[where:where] = change
        data = bytes(encoded)
        assert _lenient_base64(data) == _binascii_only_base64(data), data


def test_attachment_from_multipart_message():
    body = (
        "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee attached\r\n"
        '--b1\r\nContent-Type: application/octet-stream; name="=?utf-8?B?w6nDqS5wZGY=?="\r\n'
        "Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment\r\n\r\nJVBERi0xLjQK\r\n--b1--\r\n"
    )
    parsed = parse_message(build(content_type='multipart/mixed; boundary="b1"', body=body))
    assert parsed.body_text == "See attached"
    (attachment,) = parsed.attachments
    assert attachment.filename == "éé.pdf"
    assert attachment.payload == b"%PDF-1.4\n"
    assert attachment.size == 9


def test_attachment_path_components_are_dropped():
    body = (
        "--b1\r\nContent-Type: text/plain\r\n\r\nx\r\n--b1\r\nContent-Type: text/plain\r\n"
        'Content-Disposition: attachment; filename="../../etc/passwd"\r\n\r\nroot\r\n--b1--\r\n'
    )
    parsed = parse_message(build(content_type='multipart/mixed; boundary="b1"', body=body))
    assert [a.filename for a in parsed.attachments] == ["passwd"]


def test_parse_many_matches_parse_message():
    raws = [build(message_id=f"<m{n}@example.com>") for n in range(3)]
    assert [p.message_key for p in parse_many(raws)] == [parse_message(r).message_key for r in raws]


# --- HTML sanitising ------------------------------------------------------------------------------


def test_sanitizer_removes_active_content():
    html = (
        '<p onclick="steal()">Hi <a href="javascript:alert(1)">x</a> <img src="x" onerror="alert(2)">'
        '<script>alert(3)</script><iframe src="https://evil.example"></iframe><object data="x"></object>'
        '<form action="https://evil.example"><input name="pw"></form><embed src="x"><svg onload="x"></svg></p>'
    )
    safe, _remote = sanitize_html(html)
    for forbidden in ("onclick", "javascript:", "onerror", "<script", "alert(3)", "<iframe", "<object", "<form"):
        assert forbidden not in safe
    assert "<input" not in safe and "<embed" not in safe and "onload" not in safe


def test_sanitizer_blocks_remote_images_but_keeps_cid_images():
    html = '<img src="https://tracker.example/open.gif?u=1&amp;v=2" alt="a > b"><img src="cid:logo@x">'
    safe, remote = sanitize_html(html)
    assert remote
    assert ' src="https://tracker.example' not in safe
    assert 'data-remote-src="https://tracker.example/open.gif?u=1&amp;v=2"' in safe
    assert 'src="cid:logo@x"' in safe
    assert sanitize_html('<img src="cid:only@x">') == ('<img src="cid:only@x">', False)


def test_sanitizer_links_open_safely():
    safe, _ = sanitize_html('<a href="https://example.com/a?b=1" target="_self">link</a>')
    assert 'href="https://example.com/a?b=1"' in safe
    assert 'target="_blank"' in safe
    assert 'rel="noopener noreferrer"' in safe


def test_sanitizer_styles_keep_only_harmless_properties():
    safe, _ = sanitize_html('<p style="color: red; position: fixed; font-weight: bold">x</p>')
    assert 'style="color:red;font-weight:bold"' in safe
    loader, _ = sanitize_html('<p style="background-color: url(https://tracker.example/x)">x</p>')
    assert "tracker" not in loader


def test_html_to_text_keeps_line_structure():
    assert html_to_text("<p>One</p><p>Two<br>Three</p><ul><li>a</li><li>b</li></ul>") == "One\nTwo\nThree\na\nb"


# --- decoding helpers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "charset", "expected"),
    [
        ("你好，世界".encode("gb18030"), "gb2312", "你好，世界"),
        ("한국어".encode("cp949"), "ks_c_5601-1987", "한국어"),
        ("שלום".encode("iso8859_8"), "iso-8859-8-i", "שלום"),
        ("สวัสดี".encode("cp874"), "windows-874", "สวัสดี"),
        ("Привет".encode("mac_cyrillic"), "x-mac-cyrillic", "Привет"),
        ("Привет".encode("koi8_r"), "koi8-r", "Привет"),
        ("naïve".encode(), "unknown-8bit", "naïve"),
        ("naïve".encode("latin-1"), "unknown-8bit", "naïve"),
        ("€5".encode("cp1252"), "iso-8859-1", "€5"),
        (b"ok", "no-such-charset", "ok"),
        (b"caf\xc3\xa9", "zlib", "café"),  # a bytes codec is not a charset
        ("日本語".encode(), "us-ascii", "日本語"),
    ],
)
def test_decode_bytes_with_legacy_and_wrong_labels(data, charset, expected):
    assert decode_bytes(data, charset) == expected


def test_decode_rfc2047_joins_split_multibyte_words_and_survives_garbage():
    assert decode_rfc2047("=?utf-8?B?4pyI?= =?utf-8?B?8J+Ogw==?=") == "✈🎃"
    # A UTF-8 character split across two encoded words.
    assert decode_rfc2047("=?UTF-8?Q?caf=C3?= =?UTF-8?Q?=A9?=") == "café"
    assert decode_rfc2047("=?x-unknown?Q?abc?= plain") == "abc plain"
    assert decode_rfc2047("=?utf-8?B?not base64!!?=")  # does not raise


def test_normalize_message_id():
    assert normalize_message_id(" <Local.Part@EXAMPLE.Com> ") == "Local.Part@example.com"
    assert normalize_message_id("no-brackets@Example.com") == "no-brackets@example.com"
    assert normalize_message_id("") == ""


# --- robustness -----------------------------------------------------------------------------------


def test_random_bytes_never_raise():
    rng = random.Random(20250304)
    for _ in range(300):
        assert_storable(parse_message(rng.randbytes(rng.randint(0, 3000))))


def test_mutated_corpus_messages_never_raise():
    rng = random.Random(7)
    sources = [path.read_bytes()[:100_000] for path in CORPUS_FILES[::5]]
    inserts = [b"\r\n", b"\n\n", b"--", b"=?utf-8?B?", b"?=", b"\x00", b"<", b'"', b"=\n", b"\xff\xfe"]
    for _ in range(300):
        raw = bytearray(rng.choice(sources))
        for _ in range(rng.randint(1, 20)):
            if not raw:
                break
            position = rng.randrange(len(raw))
            choice = rng.random()
            if choice < 0.4:
                raw[position] = rng.randrange(256)
            elif choice < 0.7:
                raw[position:position] = rng.choice(inserts)
            else:
                del raw[position : position + rng.randint(1, 300)]
        assert_storable(parse_message(bytes(raw)))


def test_pathological_nesting_is_salvaged():
    deep = b"From: a@b.example\nSubject: deep\n" + b"Content-Type: message/rfc822\n\nSubject: x\n" * 5000
    parsed = parse_message(deep + b"\nhello\n")
    assert parsed.subject == "deep"
    assert parsed.from_address == "a@b.example"
    assert_storable(parsed)


def test_non_bytes_input_is_handled():
    parsed = parse_message("From: a@b.example\nSubject: str input\n\nbody")  # type: ignore[arg-type]
    assert parsed.subject == "str input"
    assert parse_message(None).parse_error  # type: ignore[arg-type]


# --- identity and decoding (issue 9) ----------------------------------------------------------------


def test_line_ends_are_made_lf_and_bare_crs_found_as_by_replace_and_count():
    rng = random.Random(18)
    pieces = [b"\r", b"\n", b"\r\n", b"\r\r\n", b"\n\r", b"a", b"From x", b" "]
    samples = [path.read_bytes() for path in CORPUS_FILES[:60]]
    samples += [b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 40))) for _ in range(2000)]
    for raw in samples:
        assert _lf_line_ends(raw) == (raw.replace(b"\r\n", b"\n"), raw.count(b"\r") != raw.count(b"\r\n")), raw


def test_content_fingerprint_ignores_line_endings_trace_headers_and_mbox_quoting():
    from mailsync.sync.parsing import content_fingerprint

    raw = (
        b"From: a@example.org\r\nTo: b@example.org\r\nSubject: Hi\r\nMessage-ID: <fp@example.org>\r\n\r\n"
        b"Line one\r\nFrom the start\r\n"
    )
    base = content_fingerprint(raw)
    assert content_fingerprint(raw.replace(b"\r\n", b"\n")) == base
    assert content_fingerprint(raw.replace(b"\r\n", b"\r")) == base
    traced = (
        b"Return-Path: <a@example.org>\r\nReceived: from mx.example.org\r\n\tby mail.test; Tue, 4 Mar 2025\r\n"
        b"Delivered-To: b@example.org\r\nX-Original-To: b@example.org\r\n" + raw + b"\r\n\r\n"
    )
    assert content_fingerprint(traced) == base
    mbox = b"From a@example.org Tue Mar  4 09:00:00 2025\n" + raw.replace(b"\r\n", b"\n").replace(
        b"\nFrom the", b"\n>From the"
    ).replace(b"Subject: Hi\n", b"Subject: Hi\nStatus: RO\nX-Status: F\n")
    assert content_fingerprint(mbox) == base
    assert content_fingerprint(raw.replace(b"Line one", b"Line 1")) != base
    assert content_fingerprint(raw.replace(b"Subject: Hi", b"Subject: Hello")) != base
    assert parse_message(raw).content_hash == base


def test_message_key_from_the_header_alone_matches_the_parser_on_the_corpus():
    from mailsync.sync.parsing import message_key_from_header

    checked = 0
    for path in sorted(CORPUS.rglob("*")):
        if not path.is_file() or path.name.startswith(("LICENSE", "SOURCES")):
            continue
        raw = path.read_bytes()
        parsed = parse_message(raw)
        if not parsed.message_id:
            continue
        head = raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
        assert message_key_from_header(head) == parsed.message_key, path
        checked += 1
    assert checked > 200


def test_a_mislabelled_charset_is_decoded_with_the_detected_one():
    text = "お見積もりの件、ありがとうございます。来週の打ち合わせでご説明いたします。" * 2
    raw = (
        b"From: a@example.jp\r\nSubject: x\r\nMessage-ID: <m@example.jp>\r\n"
        b"Content-Type: text/plain; charset=iso-2022-jp\r\n\r\n" + text.encode("euc_jp")
    )
    parsed = parse_message(raw)
    assert parsed.body_text.strip() == text
    assert parsed.parse_error == ""


def test_text_left_with_replacement_characters_is_flagged_so_the_raw_is_kept():
    raw = (
        b"From: a@example.org\r\nSubject: x\r\nMessage-ID: <r@example.org>\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + "Café déjà vu ".encode() + b"\xff\xfe end"
    )
    parsed = parse_message(raw)
    assert "\ufffd" in parsed.body_text and "Café déjà vu" in parsed.body_text
    assert "2 character(s) could not be decoded (declared charset utf-8)" in parsed.parse_error


# --- search words (mailsync.mailboxes.words), computed with the parsing ---------------------------------


def test_search_terms_are_the_distinct_words_of_subject_participants_and_text():
    raw = build(subject="Quote for ACME", body="Quote attached: quote_v2.pdf\r\n" + "x" * 150 + "\r\n")
    parsed = parse_message(raw)
    terms = parsed.search_terms.split(" ")
    assert len(terms) == len(set(terms))  # each once
    assert {"quote", "for", "acme", "attached", "v2", "pdf"} <= set(terms)
    assert "x" * 150 not in terms  # an encoded blob is not a word anyone types
    for _role, name, address in parsed.participants():
        assert set(search_words(f"{name} {address}")) <= set(terms)


def test_search_words_ascii_shortcut_matches_the_unicode_rule():
    text = "Re: Offer #42 for ACME_Corp (v3.1) -- see https://acme.example/x?y=1 & e-mail bob@acme.example"
    assert distinct_terms(text).split(" ") == list(dict.fromkeys(search_words(text)))
    assert distinct_terms(text + " Zürich").split(" ") == list(dict.fromkeys(search_words(text + " Zürich")))


def test_search_words_ascii_shortcut_matches_the_unicode_rule_on_random_text():
    rng = random.Random(18)
    alphabet = string.printable + "_" * 5 + "\x00\x7f"
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300)))
        if rng.random() < 0.2:
            text += " " + "a1" * rng.randint(45, 55) + " " + text  # words around the length limit, repeats
        expected = [word for word in dict.fromkeys(search_words(text)) if len(word) <= SEARCH_WORD_CHARS]
        assert distinct_terms(text) == " ".join(expected), text


def _regex_only_terms(text: str) -> str:
    """distinct_terms of non-ASCII text as the expressions alone give it (the reference of the shortcut)."""
    text = text.lower()
    terms = dict.fromkeys(search_words(text))
    for word in [word for word in terms if len(word) > SEARCH_WORD_CHARS]:
        del terms[word]
    for run in CJK_RUN_RE.findall(text):
        for start in range(len(run)):
            terms[run[start : start + 2]] = None
    return " ".join(terms)


def test_search_words_of_mixed_text_match_the_unicode_rule_on_random_text():
    rng = random.Random(1812)
    pieces = [
        *string.ascii_letters, *string.digits, *" _-.,;:@/\t\n'\"", "é", "ü", "ß", "İ", "Σ", "ς", "\u00a0", "\u2014",
        "\u201c", "\u201d", "\u2019", "ë", "e\u0301", "ש", "ל", "ו", "م", "ر", "٣", "会", "議", "で", "す", "カ", "タ",
        "・", "゠", "ー", "한", "국", "\uff01", "\u3000", "😀", "\u200b", "\ufeff", "Ⅻ", "²",
        "a" * 60, "é" * 60, "会" * 3,
    ]  # fmt: skip
    for _ in range(2000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 120)))
        if rng.random() < 0.3:
            text += " " + text[: rng.randint(0, len(text))]  # repeated words and runs
        assert distinct_terms(text) == _regex_only_terms(text), repr(text)
    assert distinct_terms("caf\udce9 Zürich") == _regex_only_terms("caf\udce9 Zürich")  # lone surrogate: no shortcut


def test_search_words_give_the_pieces_of_cjk_runs():
    assert distinct_terms("会議です").split(" ") == ["会議です", "会議", "議で", "です", "す"]


# --- plain address headers: the shortcut past the stdlib's getaddresses -----------------------------

ADDRESS_HEADERS = ("from", "sender", "reply-to", "to", "cc", "bcc", "resent-from", "resent-to")
TRICKY_ADDRESS_HEADERS = [
    "Ann Example <ann@example.com>",
    "ann@example.com, Bob  Smith\t<BOB@Example.COM>,",
    "<x@y.z>",
    "Dr. Ann O'Brien <a.b@c.d>",
    ".a@b.c, a.@b.c, a@b..c, a@b.c.",
    "=?utf-8?q?Ann=20Example?= <ann@example.com>",
    "Ann\xa0Example <ann@example.com>",
    '"Example, Ann" <ann@example.com>',
    "Ann (work) <ann@example.com>",
    "Ann Example",
    "a @b.c",
    "x@y@z",
    "Ann <a@b.c> junk",
    "undisclosed-recipients:;",
    "ann@[192.0.2.1]",
    "Ann <ann@example.com",
    "Ann <>",
    ",,",
]


def _address_headers_of_corpus():
    for path in CORPUS_FILES:
        message = email.message_from_bytes(path.read_bytes())
        for name in ADDRESS_HEADERS:
            for value in message.get_all(name) or []:
                yield _fix_8bit(value)


def test_plain_address_headers_are_read_as_the_stdlib_reads_them():
    values = [*TRICKY_ADDRESS_HEADERS, *_address_headers_of_corpus()]
    shortcut = 0
    for value in values:
        pairs = plain_addresses(value)
        if pairs is not None:
            shortcut += 1
            assert pairs == email.utils.getaddresses([value]), value
    assert shortcut > len(values) / 2  # most headers take the shortcut (the corpus has a few hundred)


def test_plain_parameters_shortcut_reads_them_as_the_full_decoding_does(monkeypatch):
    from mailsync.sync import parsing

    rng = random.Random(18)
    values = []
    for path in CORPUS_FILES:
        for line in re.findall(
            rb"(?im)^content-(?:type|disposition):[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*", path.read_bytes()
        ):
            values.append(line.partition(b":")[2].decode("ascii", "surrogateescape"))
    pieces = ["; ", ";", "name", "filename", "boundary", "charset", "*", "*0*", "=", '"', "\\", "a b", "<x>", "x.pdf"]
    pieces += ["=?utf-8?q?x?=", "utf-8''%41", "é", "\r\n ", "\t", "'", "text/plain", "-", "0"]
    values += ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 16))) for _ in range(5_000)]
    fast = [parsing._params(value) for value in values]
    monkeypatch.setattr(parsing, "_plain_param", lambda name, value: False)
    assert fast == [parsing._params(value) for value in values]


def _fingerprint_as_stored(raw: bytes) -> str:
    """content_fingerprint as first written (stored fingerprints were made by it): the faster one must agree."""
    from mailsync.sync.parsing import _ESCAPED_FROM, _TRACE_NAMES, TRACE_HEADER_PREFIXES

    data = raw.replace(b"\r\n", b"\n")
    if b"\r" in data:
        data = data.replace(b"\r", b"\n")
    if data.startswith(b"From "):
        data = data.partition(b"\n")[2]
    end = data.find(b"\n\n")
    head, body = (data, b"") if end < 0 else (data[: end + 1], data[end + 2 :])
    kept, skipping = [], False
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        name = line.partition(b":")[0].strip().lower()
        skipping = name in _TRACE_NAMES or name.startswith(TRACE_HEADER_PREFIXES)
        if not skipping and line:
            kept.append(line)
    if b"From " in body:
        body = _ESCAPED_FROM.sub(rb"\1", body)
    digest = hashlib.sha256(b"\n".join(kept))
    digest.update(b"\n\n")
    digest.update(body.rstrip(b"\n"))
    return digest.hexdigest()


def test_content_fingerprint_is_the_one_stored_messages_have():
    from mailsync.sync.parsing import content_fingerprint

    rng = random.Random(18)
    pieces = [b"\r\n", b"\n", b"\r", b">", b">>", b"From ", b"x", b"Subject: a", b"Received: b", b" ", b"\n" * 70]
    samples = [path.read_bytes() for path in CORPUS_FILES]
    samples += [b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 30))) for _ in range(5_000)]
    for raw in samples:
        assert content_fingerprint(raw) == _fingerprint_as_stored(raw), raw[:200]
