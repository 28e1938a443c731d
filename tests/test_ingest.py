"""mailsync.sync.ingest: batches of raw messages -> stored mail, exactly once, crash-safe, in few queries."""

import fcntl
import io
import os
import pickle
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.storage import FileSystemStorage
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from mailsync.models import (
    AccountAddress,
    Attachment,
    EmailAccount,
    EmailMessage,
    EmailThread,
    MailFolder,
    MessageLocation,
    MessageParticipant,
)
from mailsync.sync import ingest, parse_worker
from mailsync.sync.ingest import FetchedMessage, IngestResult, ParsePool, ingest_batch, ingest_raw, own_addresses_for
from mailsync.sync.parsing import parse_message

BASE_DATE = datetime(2025, 3, 4, 9, 0, tzinfo=UTC)


def build_message(
    number: int = 1,
    *,
    subject: str = "Offer",
    sender: str = "Bob Buyer <bob@customer.example>",
    to: str = "Alice <alice@company.test>",
    cc: str = "",
    message_id: str | None = None,
    in_reply_to: str | None = None,
    references: str | None = None,
    date: datetime | None = None,
    body: str = "Hello Alice,\r\nhere is the offer.",
    attachment: tuple[str, bytes] | None = None,
    inline_image: bytes | None = None,
) -> bytes:
    """A realistic message; `number` makes the Message-ID and date unique."""
    message_id = message_id if message_id is not None else f"<msg-{number}@customer.example>"
    headers = [
        f"From: {sender}",
        f"To: {to}",
        f"Subject: {subject}",
        f"Date: {format_datetime(date or BASE_DATE + timedelta(minutes=number))}",
        "MIME-Version: 1.0",
    ]
    if message_id:
        headers.append(f"Message-ID: {message_id}")
    if cc:
        headers.append(f"Cc: {cc}")
    if in_reply_to:
        headers.append(f"In-Reply-To: {in_reply_to}")
    if references:
        headers.append(f"References: {references}")
    text_part = f"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{body}\r\n"
    if not attachment and inline_image is None:
        return ("\r\n".join(headers) + "\r\n" + text_part).encode()
    import base64

    parts = [text_part]
    if inline_image is not None:
        html = '<p>Logo: <img src="cid:logo@mail"></p>'
        parts.append(f"Content-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n")
        parts.append(
            "Content-Type: image/png\r\nContent-ID: <logo@mail>\r\nContent-Transfer-Encoding: base64\r\n"
            f'Content-Disposition: inline; filename="logo.png"\r\n\r\n{base64.b64encode(inline_image).decode()}\r\n'
        )
    if attachment:
        name, data = attachment
        parts.append(
            f'Content-Type: application/octet-stream; name="{name}"\r\nContent-Transfer-Encoding: base64\r\n'
            f'Content-Disposition: attachment; filename="{name}"\r\n\r\n{base64.b64encode(data).decode()}\r\n'
        )
    boundary = f"b-{number}"
    body_text = "".join(f"--{boundary}\r\n{part}" for part in parts) + f"--{boundary}--\r\n"
    headers.append(f'Content-Type: multipart/mixed; boundary="{boundary}"')
    return ("\r\n".join(headers) + "\r\n\r\n" + body_text).encode()


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def account(alice):
    return EmailAccount.objects.create(
        user=alice, email_address="alice@company.test", imap_host="localhost", username="alice@company.test"
    )


@pytest.fixture
def inbox(account):
    return MailFolder.objects.create(account=account, name="INBOX", role=MailFolder.Role.INBOX, uidvalidity=7)


@pytest.fixture
def archive(account):
    return MailFolder.objects.create(account=account, name="Archive", role=MailFolder.Role.ARCHIVE, uidvalidity=9)


def fetched(raws, *, flags=(), start_uid=1):
    return [(start_uid + offset, flags, datetime(2025, 3, 5, 8, 0, tzinfo=UTC), raw) for offset, raw in enumerate(raws)]


def stored_files(media_root) -> list[str]:
    return sorted(str(path.relative_to(media_root)) for path in media_root.rglob("*") if path.is_file())


def counts():
    return (
        EmailMessage.objects.count(),
        MessageParticipant.objects.count(),
        Attachment.objects.count(),
        MessageLocation.objects.count(),
        EmailThread.objects.count(),
    )


def test_batch_is_stored_with_participants_locations_and_flags(account, inbox):
    raws = [build_message(1, cc="Carol <Carol@Customer.example>"), build_message(2, subject="Other")]
    result = ingest_batch(account, inbox, fetched(raws, flags=(b"\\Seen", b"\\Flagged")), uidvalidity=7)

    assert (result.created, result.existing, result.failed, result.locations_added) == (2, 0, 0, 2)
    first = EmailMessage.objects.get(message_id="msg-1@customer.example")
    assert first.account == account
    assert first.from_address == "bob@customer.example" and first.from_name == "Bob Buyer"
    assert first.direction == EmailMessage.Direction.RECEIVED
    assert first.is_read and first.is_flagged and not first.is_draft
    assert first.date == BASE_DATE + timedelta(minutes=1)
    assert first.internal_date == datetime(2025, 3, 5, 8, 0, tzinfo=UTC)
    assert first.snippet == "Hello Alice, here is the offer."
    assert sorted(first.participants.values_list("role", "address")) == [
        ("cc", "carol@customer.example"),
        ("from", "bob@customer.example"),
        ("to", "alice@company.test"),
    ]
    location = first.locations.get()
    assert (location.folder, location.uidvalidity, location.uid) == (inbox, 7, 1)
    assert location.flags == "\\Flagged \\Seen"
    assert result.message_ids == [first.pk, EmailMessage.objects.get(subject="Other").pk]
    assert result.thread_ids == {first.thread_id, EmailMessage.objects.get(subject="Other").thread_id}


def test_ingesting_twice_changes_nothing(account, inbox, media_root):
    raws = [build_message(n, attachment=("a.pdf", b"%PDF" + bytes(n))) for n in range(1, 6)]
    first = ingest_batch(account, inbox, fetched(raws), uidvalidity=7)
    before = counts()
    files = stored_files(media_root)

    second = ingest_batch(account, inbox, fetched(raws), uidvalidity=7)

    assert (first.created, first.existing) == (5, 0)
    assert (second.created, second.existing, second.locations_added) == (0, 5, 0)
    assert second.message_ids == first.message_ids
    assert counts() == before == (5, 10, 5, 5, 5)
    assert stored_files(media_root) == files
    assert len(files) == 5


def test_same_message_in_two_folders_is_one_message_with_two_locations(account, inbox, archive):
    raw = build_message(1)
    ingest_batch(account, inbox, fetched([raw], start_uid=10), uidvalidity=7)
    result = ingest_batch(account, archive, fetched([raw], start_uid=3), uidvalidity=9)

    assert (result.created, result.existing, result.locations_added) == (0, 1, 1)
    message = EmailMessage.objects.get()
    assert sorted(message.locations.values_list("folder__name", "uid")) == [("Archive", 3), ("INBOX", 10)]
    assert message.thread.message_count == 1


def test_flag_changes_on_the_server_are_applied(account, inbox):
    raw = build_message(1)
    ingest_batch(account, inbox, fetched([raw]), uidvalidity=7)
    assert not EmailMessage.objects.get().is_read

    ingest_batch(account, inbox, fetched([raw], flags=("\\Seen",)), uidvalidity=7)

    message = EmailMessage.objects.get()
    assert message.is_read
    assert message.locations.get().flags == "\\Seen"


def test_unparseable_message_is_kept_raw_with_the_reason(account, inbox, media_root):
    broken = (
        b"From: Bob <bob@customer.example>\r\nSubject: Broken\r\nMessage-ID: <broken@x>\r\n"
        b'Content-Type: multipart/mixed; boundary="never"\r\n\r\nThe body without any boundary\r\n'
    )
    garbage = bytes(range(256)) * 3
    result = ingest_batch(account, inbox, fetched([broken, garbage, build_message(3)]), uidvalidity=7)

    assert (result.created, result.failed) == (3, 2)
    stored = EmailMessage.objects.get(message_id="broken@x")
    assert "boundary" in stored.parse_error
    assert stored.subject == "Broken" and stored.from_address == "bob@customer.example"
    assert "The body without any boundary" in stored.body_text
    with stored.raw.open("rb") as handle:
        assert handle.read() == broken
    junk = EmailMessage.objects.exclude(pk=stored.pk).get(parse_error__gt="")
    with junk.raw.open("rb") as handle:
        assert handle.read() == garbage
    assert EmailMessage.objects.get(message_id="msg-3@customer.example").parse_error == ""
    assert not EmailMessage.objects.get(message_id="msg-3@customer.example").raw


def test_attachments_and_inline_images_are_stored_through_django_storage(account, inbox):
    pdf = b"%PDF-1.4 fake" * 100
    logo = b"\x89PNG\r\n\x1a\n fake png"
    ingest_batch(
        account,
        inbox,
        fetched([build_message(1, attachment=("Offer 2025.pdf", pdf), inline_image=logo)]),
        uidvalidity=7,
    )

    message = EmailMessage.objects.get()
    assert message.has_attachments
    stored = {a.filename: a for a in message.attachments.all()}
    assert set(stored) == {"Offer 2025.pdf", "logo.png"}
    assert stored["Offer 2025.pdf"].size == len(pdf) and not stored["Offer 2025.pdf"].is_inline
    assert stored["logo.png"].is_inline and stored["logo.png"].content_id == "logo@mail"
    with stored["Offer 2025.pdf"].file.open("rb") as handle:
        assert handle.read() == pdf
    with stored["logo.png"].file.open("rb") as handle:
        assert handle.read() == logo
    assert 'src="cid:logo@mail"' in message.body_html


def test_bodies_are_compressed_with_lz4_when_the_server_has_it(account, inbox):
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL TOAST compression")
    with connection.cursor() as cursor:
        cursor.execute("SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'")
        if not cursor.fetchone()[0]:
            pytest.skip("this PostgreSQL is built without lz4")
    body = "A long and repetitive body that PostgreSQL will compress. " * 200
    ingest_batch(account, inbox, fetched([build_message(1, body=body)]), uidvalidity=7)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_column_compression(body_text), body_text FROM mailsync_emailmessage")
        method, stored = cursor.fetchone()
    assert method == "lz4"
    assert stored.startswith("A long and repetitive body")


def test_large_recipient_lists_are_stored_completely(account, inbox):
    to = ", ".join(f"p{n}@customer.example" for n in range(300))
    ingest_batch(account, inbox, fetched([build_message(1, to=to)]), uidvalidity=7)
    message = EmailMessage.objects.get()
    assert message.recipient_count == 300
    assert message.participants.filter(role="to").count() == 300


def test_direction_uses_aliases_and_the_sent_folder(account, inbox):
    AccountAddress.objects.create(account=account, address="sales@company.test")
    sent_folder = MailFolder.objects.create(account=account, name="Sent", role=MailFolder.Role.SENT, uidvalidity=1)
    assert own_addresses_for(account) >= {"alice@company.test", "sales@company.test"}

    ingest_batch(account, inbox, fetched([build_message(1, sender="Sales <Sales@Company.test>")]), uidvalidity=7)
    ingest_batch(account, sent_folder, fetched([build_message(2, sender="unknown-alias@company.test")]), uidvalidity=1)
    ingest_batch(account, inbox, fetched([build_message(3)], start_uid=5), uidvalidity=7)

    directions = dict(EmailMessage.objects.values_list("message_id", "direction"))
    assert directions == {
        "msg-1@customer.example": "sent",
        "msg-2@customer.example": "sent",
        "msg-3@customer.example": "received",
    }


def test_duplicate_in_the_same_batch_is_stored_once(account, inbox):
    raw = build_message(1)
    result = ingest_batch(account, inbox, fetched([raw, raw]), uidvalidity=7)
    assert (result.created, result.existing, result.locations_added) == (1, 1, 2)
    assert EmailMessage.objects.count() == 1
    assert MessageLocation.objects.count() == 2


def test_future_or_missing_dates_fall_back_to_arrival(account, inbox):
    future = build_message(1, date=timezone.now() + timedelta(days=400))
    ingest_batch(account, inbox, fetched([future]), uidvalidity=7)
    assert EmailMessage.objects.get().date == datetime(2025, 3, 5, 8, 0, tzinfo=UTC)


def test_naive_internal_dates_are_made_aware(account, inbox):
    item = FetchedMessage(uid=1, flags=(), internal_date=datetime(2025, 3, 5, 8, 0), raw=build_message(1))
    ingest_batch(account, inbox, [item], uidvalidity=7)
    assert EmailMessage.objects.get().internal_date == timezone.make_aware(datetime(2025, 3, 5, 8, 0))


def test_uidvalidity_and_uids_are_required_for_folders(account, inbox):
    inbox.uidvalidity = None
    with pytest.raises(ValueError, match="UIDVALIDITY"):
        ingest_batch(account, inbox, fetched([build_message(1)]))
    with pytest.raises(ValueError, match="UID"):
        ingest_batch(account, inbox, [FetchedMessage(uid=None, raw=build_message(1))], uidvalidity=3)


def test_before_commit_runs_in_the_transaction_and_a_crash_there_loses_nothing(account, inbox, media_root):
    def crash(result: IngestResult):
        assert EmailMessage.objects.count() == result.created == 2
        raise RuntimeError("worker killed")

    raws = [build_message(1, attachment=("a.bin", b"abc")), build_message(2)]
    with pytest.raises(RuntimeError):
        ingest_batch(account, inbox, fetched(raws), uidvalidity=7, before_commit=crash)
    assert counts() == (0, 0, 0, 0, 0)

    result = ingest_batch(account, inbox, fetched(raws), uidvalidity=7)
    assert (result.created, result.existing) == (2, 0)
    assert counts() == (2, 4, 1, 2, 2)
    # The attachment file written before the crash was reused, not duplicated.
    assert len(stored_files(media_root)) == 1


def test_crash_in_the_middle_of_the_writes_rolls_everything_back(account, inbox, monkeypatch):
    raws = [build_message(n) for n in range(1, 4)]

    def killed(thread_ids):
        # Messages, participants and locations are written by now: a SIGINT here must undo them all.
        assert EmailMessage.objects.count() == 3 and MessageLocation.objects.count() == 3
        raise KeyboardInterrupt

    monkeypatch.setattr(ingest, "refresh_thread_stats", killed)
    with pytest.raises(KeyboardInterrupt):
        ingest_batch(account, inbox, fetched(raws), uidvalidity=7)
    assert counts() == (0, 0, 0, 0, 0)

    monkeypatch.undo()
    assert ingest_batch(account, inbox, fetched(raws), uidvalidity=7).created == 3
    assert counts() == (3, 6, 0, 3, 3)


def test_on_threads_changed_runs_after_commit_with_the_touched_threads(
    account, inbox, monkeypatch, django_capture_on_commit_callbacks
):
    seen = []
    monkeypatch.setattr(ingest, "on_threads_changed", lambda thread_ids: seen.append(thread_ids))
    with django_capture_on_commit_callbacks(execute=True):
        result = ingest_batch(account, inbox, fetched([build_message(1), build_message(2, subject="x")]), uidvalidity=7)
    assert seen == [result.thread_ids]
    assert len(result.thread_ids) == 2


def test_number_of_queries_does_not_grow_with_the_batch(account, inbox):
    def queries_for(numbers):
        raws = [build_message(n, attachment=("a.txt", b"x"), cc=f"c{n}@customer.example") for n in numbers]
        with CaptureQueriesContext(connection) as captured:
            ingest_batch(account, inbox, fetched(raws, start_uid=numbers[0]), uidvalidity=7)
        return len(captured.captured_queries)

    queries_for(range(1000, 1002))  # warm-up: once-per-process checks (lz4 support) are not per batch
    small = queries_for(range(1, 6))
    large = queries_for(range(100, 300))
    assert large == small
    assert small <= 20


def test_ingest_raw_has_no_location_and_is_idempotent(account):
    raws = [build_message(1), build_message(2)]
    first = ingest_raw(account, raws, flags=("\\Seen",))
    second = ingest_raw(account, raws)
    assert (first.created, second.created, second.existing) == (2, 0, 2)
    assert MessageLocation.objects.count() == 0
    assert EmailMessage.objects.filter(is_read=True).count() == 2


def test_precomputed_parse_results_are_used(account, inbox):
    raws = [build_message(1), build_message(2)]
    parsed = [parse_message(raw, own_addresses=own_addresses_for(account)) for raw in raws]
    result = ingest_batch(account, inbox, fetched(raws), uidvalidity=7, parsed=parsed)
    assert result.created == 2


def test_parse_pool_gives_the_same_results_as_parsing_inline():
    raws = [build_message(n, attachment=("a.bin", bytes([n]))) for n in range(1, 8)]
    own = frozenset({"alice@company.test"})
    with ParsePool(workers=2, chunk_size=3) as pool:
        parsed = pool.submit(raws, own).result()
    inline = [parse_message(raw, own_addresses=own) for raw in raws]
    assert parsed == inline


@pytest.mark.skipif(not hasattr(fcntl, "F_GETPIPE_SZ"), reason="pipe sizes are a Linux feature")
def test_parse_worker_pipes_hold_a_megabyte():
    raws = [build_message(n, attachment=("a.bin", bytes(300_000))) for n in range(1, 9)]
    with ParsePool(workers=1, chunk_size=4) as pool:
        parsed = pool.submit(raws, frozenset()).result()
        deadline = time.monotonic() + 10
        while pool._workers[0].process is None and time.monotonic() < deadline:
            time.sleep(0.01)  # the worker is started by its sender thread
        process = pool._workers[0].process
        sizes = [fcntl.fcntl(stream.fileno(), fcntl.F_GETPIPE_SZ) for stream in (process.stdin, process.stdout)]
    assert sizes == [ingest.PIPE_BYTES, ingest.PIPE_BYTES]
    assert [item.attachments[0].size for item in parsed] == [300_000] * 8


def test_waiting_for_the_pool_parses_queued_chunks_in_this_thread(monkeypatch):
    """PendingParse.result lends the waiting thread's CPU: chunks no worker has taken are parsed here,
    the answer is the same and in order."""
    parsed_here = []
    inline_parse_many = ingest.parse_many

    def counting(raws, own):
        parsed_here.append(threading.get_ident())
        return inline_parse_many(raws, own)

    monkeypatch.setattr(ingest, "parse_many", counting)
    raws = [build_message(n, attachment=("a.bin", bytes([n]))) for n in range(1, 61)]
    own = frozenset({"alice@company.test"})
    with ParsePool(workers=1, chunk_size=2) as pool:  # 30 chunks: the worker takes 2 at a time
        parsed = pool.submit(raws, own).result()
    assert parsed == [parse_message(raw, own_addresses=own) for raw in raws]
    assert threading.get_ident() in parsed_here


def _parse_with_a_garbled_worker_stream(monkeypatch, garble) -> tuple[list, list]:
    """Submit and close a one-worker pool whose answer stream `garble` spoils; (parsed, raws), or a
    failure if the pool hangs."""
    real_read_frame = parse_worker.read_frame
    calls = []

    def read_frame(stream, shared=None):
        calls.append(1)
        return garble(len(calls), lambda: real_read_frame(stream, shared))

    monkeypatch.setattr(parse_worker, "read_frame", read_frame)
    raws = [build_message(n, attachment=("a.bin", bytes([n]))) for n in range(1, 13)]
    outcome = []

    def run():
        with ParsePool(workers=1, chunk_size=3) as pool:
            pool.help_once = lambda: False  # every chunk goes through the worker
            outcome.append(pool.submit(raws, frozenset()).result())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "the pool hangs"
    assert calls
    return outcome[0], raws


def test_an_unreadable_answer_stops_the_worker_and_the_rest_is_parsed_here(monkeypatch):
    def garble(call, read):
        if call == 1:
            read()  # the worker's first answer, read and lost: the stream is out of step
            raise MemoryError
        return read()

    parsed, raws = _parse_with_a_garbled_worker_stream(monkeypatch, garble)
    assert parsed == [parse_message(raw, own_addresses=frozenset()) for raw in raws]


def test_an_answer_nobody_asked_for_stops_the_worker(monkeypatch):
    def garble(call, read):
        if call == 1:
            return pickle.dumps([]), None  # before any job was sent
        return read()

    parsed, raws = _parse_with_a_garbled_worker_stream(monkeypatch, garble)
    assert parsed == [parse_message(raw, own_addresses=frozenset()) for raw in raws]


def test_an_answer_in_another_requests_slot_stops_the_worker(monkeypatch):
    garbled = []

    def garble(call, read):
        answer, slot = read()
        if call == 1 and slot is not None:  # answer slot 2 said to be 3 (another request's), or 3 said 2
            garbled.append(slot)
            return answer, slot ^ 1
        return answer, slot

    parsed, raws = _parse_with_a_garbled_worker_stream(monkeypatch, garble)
    assert parsed == [parse_message(raw, own_addresses=frozenset()) for raw in raws]
    if hasattr(os, "memfd_create"):
        assert garbled  # the first answer came in the shared area


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="the shared area is Linux's (memfd)")
def test_chunks_and_answers_cross_in_shared_memory_or_the_pipe_by_size(monkeypatch):
    """A chunk whose pickle fits a slot crosses in the shared area, its answer too; a larger one (or
    a larger answer) takes the pipe; either way the result is what parsing here gives, in order."""
    monkeypatch.setattr(ingest, "SHARED_SLOT_BYTES", 64 * 1024)
    real_read_frame = parse_worker.read_frame
    slots_read = []

    def read_frame(stream, shared=None):
        frame, slot = real_read_frame(stream, shared)
        if frame is not None:
            slots_read.append(slot)
        return frame, slot

    monkeypatch.setattr(parse_worker, "read_frame", read_frame)
    small = [build_message(n) for n in range(1, 41)]
    large = [build_message(n, attachment=("big.bin", os.urandom(40_000))) for n in range(41, 49)]
    raws = small[:20] + large + small[20:]
    own = frozenset({"alice@company.test"})
    with ParsePool(workers=1, chunk_size=4) as pool:
        pool.help_once = lambda: False  # every chunk goes through the worker
        parsed = pool.submit(raws, own).result()
    assert parsed == [parse_message(raw, own_addresses=own) for raw in raws]
    assert len(slots_read) == len(raws) // 4  # one answer a chunk
    assert {slot for slot in slots_read if slot is not None} == {2, 3}  # answer slot: IN_FLIGHT + request slot
    assert slots_read.count(None) == 2  # the two chunks of large mail: through the pipe


def test_shared_frames_are_read_back_and_bad_headers_refused():
    shared = parse_worker.SharedSlots.create(2, 1024)
    if shared is None:
        pytest.skip("no shared memory here")
    try:
        stream = io.BytesIO()
        parse_worker.write_shared_frame(stream, shared, 3, b"answer bytes")
        parse_worker.write_frame(stream, b"inline")
        stream.seek(0)
        frame, slot = parse_worker.read_frame(stream, shared)
        assert (bytes(frame), slot) == (b"answer bytes", 3)
        frame.release()
        assert parse_worker.read_frame(stream, shared) == (b"inline", None)
        for header in (
            parse_worker.SHARED | 4 << 40 | 10,  # no slot 4 in an area of 2 + 2
            parse_worker.SHARED | 1 << 40 | 1025,  # larger than a slot
        ):
            with pytest.raises(ValueError, match="out of step"):
                parse_worker.read_frame(io.BytesIO(header.to_bytes(8, "big")), shared)
        with pytest.raises(ValueError, match="out of step"):  # a shared frame where there is no area
            parse_worker.read_frame(io.BytesIO((parse_worker.SHARED | 5).to_bytes(8, "big")))
    finally:
        shared.close()


def test_a_frame_length_out_of_step_is_refused_without_allocating_it():
    stream = io.BytesIO((1 << 60).to_bytes(parse_worker.HEADER_BYTES, "big") + b"pickled bytes")
    with pytest.raises(ValueError, match="out of step"):
        parse_worker.read_frame(stream)
    frames = io.BytesIO()
    parse_worker.write_frame(frames, b"payload")
    parse_worker.write_frame(frames, b"")
    frames.seek(0)
    assert [parse_worker.read_frame(frames)[0] for _ in range(3)] == [b"payload", b"", None]


@pytest.mark.django_db(transaction=True)
def test_concurrent_ingestion_of_the_same_batch_creates_no_duplicates(alice):
    account = EmailAccount.objects.create(
        user=alice, email_address="alice@company.test", imap_host="localhost", username="alice@company.test"
    )
    inbox = MailFolder.objects.create(account=account, name="INBOX", uidvalidity=7)
    raws = [build_message(n, references=f"<root-{n % 3}@customer.example>") for n in range(1, 41)]
    results, errors = [], []
    barrier = threading.Barrier(3)

    def worker():
        try:
            barrier.wait()
            results.append(ingest_batch(account, inbox, fetched(raws), uidvalidity=7))
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors
    assert sum(result.created for result in results) == 40
    assert sum(result.existing for result in results) == 80
    assert EmailMessage.objects.count() == 40
    assert MessageLocation.objects.count() == 40
    assert MessageParticipant.objects.count() == 80
    # Three conversations (by their common root reference), each thread created once.
    assert EmailThread.objects.count() == 3
    assert sorted(EmailThread.objects.values_list("message_count", flat=True)) == [13, 13, 14]


# --- identity: Message-ID and content (issue 9) ------------------------------------------------------


def test_different_messages_sharing_a_message_id_are_kept_apart_and_copies_are_one(account, media_root):
    first = build_message(1, subject="Invoice", attachment=("invoice.pdf", b"%PDF-1"))
    other = build_message(1, subject="Lunch?", sender="Carol <carol@else.example>", attachment=("menu.pdf", b"%PDF-2"))
    restamped = b"Received: from mx by mail; Tue, 4 Mar 2025 09:00:00 +0000\r\nReturn-Path: <bob@x>\r\n" + first
    lf_copy = first.replace(b"\r\n", b"\n")

    result = ingest_raw(account, [first, other, restamped, lf_copy])

    assert (result.created, result.kept_apart, result.existing) == (2, 1, 2)
    stored = EmailMessage.objects.filter(account=account)
    assert sorted(stored.values_list("subject", flat=True)) == ["Invoice", "Lunch?"]
    assert stored.values("thread").distinct().count() == 1  # one conversation: they claim to be one message
    # Each keeps its own attachment (file names follow the message's identity, not only its Message-ID).
    payloads = {a.message.subject: a.file.read() for a in Attachment.objects.select_related("message")}
    assert payloads == {"Invoice": b"%PDF-1", "Lunch?": b"%PDF-2"}
    again = ingest_raw(account, [other, first])
    assert (again.created, again.existing) == (0, 2)


def test_a_message_id_in_two_folders_is_one_message_even_when_a_server_added_headers(account, inbox, archive):
    raw = build_message(3)
    ingest_batch(account, inbox, fetched([raw]), uidvalidity=7)
    # The Archive copy carries a header the receiving side added (not a trace header).
    result = ingest_batch(account, archive, fetched([b"X-Filter-Verdict: clean\r\n" + raw]), uidvalidity=9)
    assert (result.created, result.existing) == (0, 1)
    message = EmailMessage.objects.get()
    assert sorted(message.locations.values_list("folder__name", flat=True)) == ["Archive", "INBOX"]
    # In the same folder, the same changed copy is another message.
    same_folder = ingest_batch(account, inbox, fetched([b"X-Filter-Verdict: clean\r\n" + raw], start_uid=2))
    assert (same_folder.created, same_folder.kept_apart) == (1, 1)


def test_mail_stored_before_content_fingerprints_is_matched_and_gets_its_fingerprint(account, inbox):
    raw = build_message(4)
    ingest_batch(account, inbox, fetched([raw]), uidvalidity=7)
    EmailMessage.objects.update(content_hash="")  # as migration 0006 leaves existing rows
    legacy = EmailMessage.objects.get()

    result = ingest_raw(account, [raw.replace(b"\r\n", b"\n")])

    assert (result.created, result.existing) == (0, 1)
    legacy.refresh_from_db()
    assert legacy.content_hash == parse_message(raw).content_hash
    assert ingest_raw(account, [build_message(4, subject="Another one")]).kept_apart == 1


def test_a_copy_found_again_is_no_longer_unlocated(account, inbox, archive):
    raw = build_message(5)
    ingest_batch(account, inbox, fetched([raw]), uidvalidity=7)
    EmailMessage.objects.update(unlocated_since=timezone.now())
    ingest_batch(account, archive, fetched([raw]), uidvalidity=9)
    assert EmailMessage.objects.get().unlocated_since is None


def test_parse_workers_exit_when_the_pool_closes():
    pool = ParsePool(workers=2)
    pool.submit([build_message(1)], frozenset()).result()  # may well be parsed here (the workers start meanwhile)
    deadline = time.monotonic() + 10
    while any(worker.process is None for worker in pool._workers) and time.monotonic() < deadline:
        time.sleep(0.01)
    processes = [worker.process for worker in pool._workers]
    assert all(process is not None and process.poll() is None for process in processes)
    pool.close()
    assert all(worker.process is None for worker in pool._workers)
    assert all(process.poll() is not None for process in processes)


def test_files_on_a_local_disk_are_what_the_storage_would_write(account, inbox, media_root, settings, monkeypatch):
    """Attachments on a local disk skip FileSystemStorage.save (ingest._store_on_disk): same names, bytes,
    permissions; a file left by an earlier attempt is reused when it has the right size and replaced when
    not; a name that would leave MEDIA_ROOT is refused as the storage refuses it."""
    settings.FILE_UPLOAD_PERMISSIONS = 0o640
    settings.FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o750
    payload = bytes(range(256)) * 300
    with monkeypatch.context() as patched:
        patched.setattr(FileSystemStorage, "_save", lambda *args: pytest.fail("not the direct path"))
        ingest_batch(
            account, inbox, fetched([build_message(1, attachment=("Q3 figures.xlsx", payload))]), uidvalidity=7
        )

    attachment = Attachment.objects.get()
    path = media_root / attachment.file.name
    assert attachment.file.name.startswith("attachments/") and attachment.file.name.endswith("-1-Q3_figures.xlsx")
    assert path.read_bytes() == payload
    assert path.stat().st_mode & 0o777 == 0o640
    assert path.parent.stat().st_mode & 0o777 == 0o750

    storage = ingest.storages["default"]
    assert ingest._store_on_disk(storage, attachment.file.name, b"other") is None  # exists: the caller decides
    assert ingest._store(attachment.file.name, payload) == attachment.file.name  # right size: reused
    assert path.read_bytes() == payload
    assert ingest._store(attachment.file.name, b"shorter") == attachment.file.name  # wrong size: replaced
    assert path.read_bytes() == b"shorter"
    with pytest.raises(SuspiciousFileOperation):
        ingest._store_on_disk(storage, "../outside.bin", b"x")
    assert not (media_root.parent / "outside.bin").exists()


def test_files_go_through_any_other_storage(account, inbox, settings):
    settings.STORAGES = {**settings.STORAGES, "default": {"BACKEND": "django.core.files.storage.InMemoryStorage"}}
    pdf = b"%PDF-1.4 in memory"
    raws = [build_message(n, attachment=(f"offer-{n}.pdf", pdf + bytes([n]))) for n in range(1, 7)]
    ingest_batch(account, inbox, fetched(raws), uidvalidity=7)

    storage = ingest.storages["default"]
    assert type(storage).__name__ == "InMemoryStorage"
    for attachment in Attachment.objects.all():
        with storage.open(attachment.file.name, "rb") as handle:
            assert handle.read() == pdf + bytes([int(attachment.filename[6])])
    assert Attachment.objects.count() == 6
