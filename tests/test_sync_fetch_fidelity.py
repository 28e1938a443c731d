"""The fast FETCH reader (mailsync.protocols.imap._stream_fetch) against imapclient's parser, on every
file of the shared corpus: the same bytes, flags, dates and sizes at the protocol level, and the same
stored subject, addresses, dates, text and attachment names after a full sync (issue 18)."""

import datetime as dt
import logging

import pytest

from mailsync.models import MailFolder, MessageLocation
from mailsync.protocols import imap
from mailsync.sync import engine
from tests.factories import UserFactory
from tests.test_imap import config_for
from tests.test_sync import CORPUS, make_account

pytestmark = [pytest.mark.dovecot, pytest.mark.django_db]

# One arrival time for both mailboxes (it is the stored date of a message without a Date field).
ARRIVED = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)).replace(microsecond=0)
FLAG_MIX = ((), ("\\Seen",), ("\\Flagged", "\\Seen"), ("\\Answered",), ("\\Draft",))


def corpus_files():
    if not CORPUS.exists():
        pytest.skip("corpus not present")
    return sorted(
        path
        for path in CORPUS.rglob("*")
        if path.is_file() and not path.name.startswith(("LICENSE", "SOURCES", ".")) and path.suffix != ".md"
    )


def load_corpus(dovecot, mail_user) -> list:
    files = corpus_files()
    messages = [(path.read_bytes(), FLAG_MIX[index % len(FLAG_MIX)], ARRIVED) for index, path in enumerate(files)]
    uids = dovecot.deliver_many(mail_user, messages)
    assert len(uids) == len(files)
    return list(zip(uids, files, strict=True))


def test_stream_fetch_gives_what_imapclient_gives_on_every_corpus_file(dovecot, mail_user):
    load_corpus(dovecot, mail_user)
    fetched = {}
    for fast in (True, False):
        with imap.connect(config_for(dovecot, mail_user)) as session:
            session.fast_fetch = fast
            session.select("INBOX", readonly=True)
            uids = session.search_all_uids()
            fetched[fast] = (
                list(session.fetch_messages(uids, batch_size=50)),
                list(session.fetch_headers(uids)),
                list(session.fetch_identities(uids)),
            )
            assert session.fast_fetch is fast  # the fast reader never had to fall back
    for fast_items, slow_items in zip(fetched[True], fetched[False], strict=True):
        assert len(fast_items) == len(slow_items) > 250
        for fast_item, slow_item in zip(fast_items, slow_items, strict=True):
            assert fast_item == slow_item


def stored_by_uid(account) -> dict:
    folder = MailFolder.objects.get(account=account, name="INBOX")
    result = {}
    for location in MessageLocation.objects.filter(folder=folder).select_related("message"):
        message = location.message
        result[location.uid] = {
            "subject": message.subject,
            "from": (message.from_name, message.from_address),
            "participants": sorted(message.participants.values_list("role", "address", "name")),
            "date": message.date,
            "internal_date": message.internal_date,
            "text": message.body_text,
            "html": message.body_html,
            "attachments": sorted(message.attachments.values_list("filename", "content_type", "size")),
            "flags": (message.is_read, message.is_flagged, message.is_draft, location.flags),
            "parse_error": message.parse_error,
        }
    return result


def test_sync_with_the_fast_reader_stores_every_corpus_file_as_imapclient_did(dovecot, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="mailsync.protocols.imap")
    stored = {}
    for fast in (False, True):
        mail_user = dovecot.add_user()
        by_uid = load_corpus(dovecot, mail_user)
        account = make_account(UserFactory(), mail_user, dovecot)
        monkeypatch.setattr(imap, "STREAM_FETCH", fast)
        while True:
            report = engine.sync_account(account.pk, time_budget=600)
            assert report.error is None
            if not report.more_work:
                break
        stored[fast] = stored_by_uid(account)
        assert sorted(stored[fast]) == [uid for uid, _path in by_uid]
    assert "unusual FETCH" not in caplog.text  # the fast reader read every response itself
    for uid, path in by_uid:
        assert stored[True][uid] == stored[False][uid], path


@pytest.mark.parametrize(
    ("texts", "literals", "expected"),
    [
        # Dovecot's order, and Gmail's (UID after the body).
        (
            [
                b'* 1 FETCH (UID 7 FLAGS (\\Seen $Work) INTERNALDATE "05-Dec-2026 22:30:29 +0100" '
                b"RFC822.SIZE 3 BODY[] {3}\r\n",
                b")\r\n",
            ],
            [b"abc"],
            (7, {b"FLAGS": (b"\\Seen", b"$Work"), b"RFC822.SIZE": 3, b"BODY[]": b"abc"}),
        ),
        (
            [b"* 2 FETCH (FLAGS () BODY[] {0}\r\n", b" UID 9 MODSEQ (12))\r\n"],
            [b""],
            (9, {b"FLAGS": (), b"BODY[]": b""}),
        ),
        # An unsolicited FETCH (flags of another message): kept, it has no body.
        ([b"* 3 FETCH (FLAGS (\\Deleted) UID 4)\r\n"], [], (4, {b"FLAGS": (b"\\Deleted",)})),
        # Unusual: imapclient reads the command again.
        ([b'* 4 FETCH (UID 5 BODY[] "abc")\r\n'], [], None),
        ([b"* 4 FETCH (UID 5 BODY[] NIL)\r\n"], [], None),
        ([b"* 4 FETCH (UID 5 X-GM-THRID 123 BODY[] {1}\r\n", b")\r\n"], [b"a"], None),
        ([b"* 4 FETCH (UID 5 BODY[] {1}\r\n", b" BODY[HEADER] {1}\r\n", b")\r\n"], [b"a", b"b"], None),
        ([b"* 4 FETCH (FLAGS () BODY[] {1}\r\n", b")\r\n"], [b"a"], None),  # no UID
    ],
)
def test_usual_fetch_reads_known_forms_and_declines_the_rest(texts, literals, expected):
    parsed = imap._usual_fetch(texts, literals, b"BODY[]", len(b"* 1 FETCH ("))
    if expected is None:
        assert parsed is None
        return
    uid, values = parsed
    values.pop(b"INTERNALDATE", None)
    assert (uid, values) == expected


def test_an_unusual_response_reads_the_command_again_through_imapclient(dovecot, mail_user, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="mailsync.protocols.imap")
    raws = [f"Subject: {n}\r\nMessage-ID: <{n}@x>\r\n\r\nbody {n}\r\n".encode() for n in range(5)]
    dovecot.deliver_many(mail_user, [(raw, (), ARRIVED) for raw in raws])
    with imap.connect(config_for(dovecot, mail_user)) as session:
        session.select("INBOX", readonly=True)
        uids = session.search_all_uids()
        expected = list(session.fetch_messages(uids))
        monkeypatch.setattr(imap, "_usual_fetch", lambda *args: None)  # every response looks unusual
        again = list(session.fetch_messages(uids, batch_size=2))
        assert session.fast_fetch is False  # the rest of the session goes through imapclient
        assert again == expected and [item.raw for item in again] == raws
        session.noop()  # the connection is in step: each command was read to its end
    assert "unusual FETCH response" in caplog.text
