"""mailsync.sync.threads.insert_rows (COPY, in PostgreSQL's binary format where the column types allow):
what it stores is what Django's bulk_create stores for the same values."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from django.db import connection

from mailsync.models import (
    Attachment,
    EmailAccount,
    EmailMessage,
    EmailThread,
    MailFolder,
    MessageLocation,
    MessageParticipant,
    ThreadReference,
)
from mailsync.sync.threads import _binary_copy_types, insert_rows
from tests.mail_factories import EmailMessageFactory

pytestmark = pytest.mark.django_db

ODD_TEXT = ["", "tab\there", "line\nbreak\r\nend", "back\\slash \\N", "quote \" and '", "ünï ✓ 𝄞 中文", "x" * 998]
THREAD_FIELDS = ("owner_id", "subject", "normalized_subject", "first_message_at", "last_message_at", "message_count")


def _threads(owner):
    rows = list(EmailThread.objects.filter(owner=owner).order_by("pk").values_list(*THREAD_FIELDS))
    return [row[1:] for row in rows]


def test_same_values_as_bulk_create(alice, bob):
    paris = timezone(timedelta(hours=1))
    dates = [datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=paris), datetime(2026, 3, 2, tzinfo=UTC), None]
    rows = [(text, text[::-1], dates[n % 3], dates[(n + 1) % 3], n * 1_000_003) for n, text in enumerate(ODD_TEXT)]
    insert_rows(EmailThread, ("owner_id", *THREAD_FIELDS[1:]), [(alice.pk, *row) for row in rows])
    EmailThread.objects.bulk_create(
        [EmailThread(owner=bob, **dict(zip(THREAD_FIELDS[1:], row, strict=True))) for row in rows]
    )
    assert _threads(alice) == _threads(bob)
    assert _threads(alice)[0][2] == dates[0]  # the instant, whatever the offset it was given with


def test_ids_big_integers_and_naive_datetimes(alice):
    account = EmailAccount.objects.create(user=alice, email_address="a@x.test", imap_host="h", username="u")
    folder = MailFolder.objects.create(account=account, name="INBOX", uidvalidity=1)
    [thread_id] = insert_rows(
        EmailThread,
        ("owner_id", "subject", "first_message_at"),
        [(alice.pk, "naive", datetime(2026, 1, 1, 8))],
        return_ids=True,
    )
    thread = EmailThread.objects.get(pk=thread_id)
    assert thread.first_message_at == datetime(2026, 1, 1, 8, tzinfo=UTC)  # as text COPY reads it (UTC)
    assert thread.created_at is not None and thread.visibility == "private"  # defaults filled in
    message = EmailMessageFactory(account=account, thread=thread)
    insert_rows(
        MessageLocation,
        ("message_id", "folder_id", "uidvalidity", "uid", "flags"),
        [(message.pk, folder.pk, 2**32 - 1, 2**32 - 2, "\\Seen \\Flagged $Label\tx")],
    )
    location = MessageLocation.objects.get()
    assert (location.uidvalidity, location.uid, location.flags) == (2**32 - 1, 2**32 - 2, "\\Seen \\Flagged $Label\tx")


def test_binary_format_for_the_tables_a_sync_fills():
    if connection.vendor != "postgresql":
        pytest.skip("COPY is PostgreSQL's")
    for model in (EmailMessage, MessageParticipant, MessageLocation, Attachment, EmailThread, ThreadReference):
        assert _binary_copy_types(model._meta.concrete_fields) is not None, model.__name__
