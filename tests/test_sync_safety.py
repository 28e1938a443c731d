"""No message lost or merged (issue 9), against the real test Dovecot: folder resets, new and renamed
folders, different messages sharing a Message-ID, mislabelled charsets, killed syncs (no process left)."""

import collections
import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core.files.storage import default_storage
from django.db import connection

from mailsync.models import EmailMessage, EmailThread, MailFolder, MessageLocation, ThreadLink
from mailsync.protocols import imap
from mailsync.sync import engine
from mailsync.sync.parsing import content_fingerprint, parse_message
from tests.factories import PersonFactory
from tests.mailservers import make_message
from tests.test_sync import CORPUS, assert_mirrors_server, deliver, live, make_account

pytestmark = [pytest.mark.dovecot, pytest.mark.django_db]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture
def account(alice, mail_user, dovecot):
    return make_account(alice, mail_user, dovecot)


@pytest.fixture
def bodies_fetched(monkeypatch):
    """UIDs the sync downloads in full (BODY.PEEK[]): what "found again without a fetch" is checked by."""
    uids: list[int] = []
    real = imap.ImapSession.fetch_messages

    def counting(self, wanted, **kwargs):
        wanted = list(wanted)
        uids.extend(wanted)
        return real(self, wanted, **kwargs)

    monkeypatch.setattr(imap.ImapSession, "fetch_messages", counting)
    return uids


def folders_of(message) -> list[str]:
    return sorted(message.locations.values_list("folder__name", flat=True))


# --- 1. UIDVALIDITY reset ---------------------------------------------------------------------------


def test_uidvalidity_reset_keeps_older_mail_with_its_links_read_state_and_visibility(
    account, dovecot, mail_user, bodies_fetched
):
    engine.sync_account(account.pk)  # initial sync of an empty inbox
    uids = deliver(dovecot, mail_user, 5, days_ago=20, prefix="Old")  # arrive by UIDNEXT: stored
    assert engine.sync_account(account.pk).created == 5
    dovecot.add_flags(mail_user, uids[:2], ("\\Seen",))
    engine.sync_account(account.pk)
    before = sorted(live(account).values_list("pk", flat=True))
    message = live(account).get(subject="Old 0")
    thread = message.thread
    EmailThread.objects.filter(pk=thread.pk).update(visibility=EmailThread.Visibility.SHARED)
    person = PersonFactory()
    ThreadLink.objects.create(thread=thread, person=person, rule="manual", created_by=account.user)

    dovecot.reset_uidvalidity(mail_user)
    bodies_fetched.clear()
    report = engine.sync_account(account.pk)

    assert report.error is None
    assert (report.deleted_messages, report.created) == (0, 0)
    assert sorted(live(account).values_list("pk", flat=True)) == before
    assert bodies_fetched == []  # found again by Message-ID, nothing downloaded again
    assert live(account).filter(is_read=True).count() == 2
    thread.refresh_from_db()
    assert thread.visibility == EmailThread.Visibility.SHARED
    assert ThreadLink.objects.filter(thread=thread, person=person).exists()
    assert_mirrors_server(account, dovecot, mail_user)

    # The new UIDs are the ones followed from now on: an expunge is seen.
    dovecot.expunge(mail_user, dovecot.uids(mail_user)[:1])
    assert engine.sync_account(account.pk).deleted_messages == 1
    assert live(account).count() == 4


# --- 2. New folder -------------------------------------------------------------------------------------


def test_old_mail_moved_into_a_folder_created_since_the_last_sync_is_kept(account, dovecot, mail_user, bodies_fetched):
    engine.sync_account(account.pk)
    recent = deliver(dovecot, mail_user, 6, days_ago=1, prefix="Recent")
    old = deliver(dovecot, mail_user, 4, days_ago=20, prefix="Old")
    engine.sync_account(account.pk)
    assert live(account).count() == 10

    dovecot.create_folder(mail_user, "Clients/2024")
    dovecot.move(mail_user, recent + old, "Clients/2024")
    # Mail that reaches the new folder without ever passing a synced one: the date window decides.
    deliver(dovecot, mail_user, 1, days_ago=0.5, folder="Clients/2024", prefix="Filed recent")
    deliver(dovecot, mail_user, 2, days_ago=40, folder="Clients/2024", prefix="Filed ancient")
    bodies_fetched.clear()
    report = engine.sync_account(account.pk)

    assert report.error is None and report.deleted_messages == 0
    assert live(account).count() == 11
    assert not live(account).filter(subject__startswith="Filed ancient").exists()
    assert len(bodies_fetched) == 1  # only the never-stored recent one
    for message in live(account):
        assert folders_of(message) == ["Clients/2024"]
    assert_mirrors_server(account, dovecot, mail_user, "INBOX")


def test_old_mail_no_listing_fetched_gets_all_its_copies_once_a_copy_of_it_is_stored(account, dovecot, mail_user):
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    raw = make_message("Old contract", date=old)
    first = dovecot.deliver_many(mail_user, [(raw, (), old)])[0]
    in_archive = dovecot.deliver_many(mail_user, [(raw, (), old)], "Archive")[0]
    engine.sync_account(account.pk)
    assert not live(account).exists()  # outside the window: not fetched

    # The user drags it back into the inbox from an unsynced folder: it arrives by UIDNEXT and is stored.
    dovecot.copy(mail_user, [first], "Junk")
    dovecot.copy(mail_user, dovecot.uids(mail_user, "Junk"), "INBOX", folder="Junk")
    arrived = max(dovecot.uids(mail_user))
    engine.sync_account(account.pk)

    message = live(account).get()
    assert sorted(message.locations.values_list("folder__name", "uid")) == [
        ("Archive", in_archive),
        ("INBOX", first),
        ("INBOX", arrived),
    ]
    dovecot.expunge(mail_user, [arrived])
    assert engine.sync_account(account.pk).deleted_messages == 0  # its other copies are still there
    assert live(account).get().pk == message.pk


# --- 3. Renamed folder ---------------------------------------------------------------------------------


def test_renamed_folder_keeps_its_mail_and_a_later_expunge_is_seen(account, dovecot, mail_user, bodies_fetched):
    dovecot.create_folder(mail_user, "Projects")
    engine.sync_account(account.pk)
    deliver(dovecot, mail_user, 3, days_ago=1, folder="Projects", prefix="Recent")
    deliver(dovecot, mail_user, 3, days_ago=30, folder="Projects", prefix="Old")
    engine.sync_account(account.pk)
    folder = MailFolder.objects.get(account=account, name="Projects")
    assert live(account).count() == 6

    dovecot.doveadm("mailbox rename", "Projects", "Projects 2025", user=mail_user)
    bodies_fetched.clear()
    report = engine.sync_account(account.pk)

    assert report.error is None and report.deleted_messages == 0
    assert bodies_fetched == []
    renamed = MailFolder.objects.get(account=account, name="Projects 2025")
    assert renamed.pk == folder.pk  # recognised: same UIDVALIDITY, same messages under the UIDs
    assert not MailFolder.objects.filter(account=account, name="Projects").exists()
    for message in live(account):
        assert folders_of(message) == ["Projects 2025"]
    assert_mirrors_server(account, dovecot, mail_user, "Projects 2025")

    old_uid = dovecot.uids(mail_user, "Projects 2025")[-1]
    dovecot.expunge(mail_user, [old_uid], folder="Projects 2025")
    report = engine.sync_account(account.pk)
    assert report.deleted_messages == 1
    assert live(account).count() == 5
    assert_mirrors_server(account, dovecot, mail_user, "Projects 2025")


def test_a_rename_the_server_hides_is_a_new_folder_plus_a_vanished_one_and_loses_nothing(
    account, dovecot, mail_user, bodies_fetched
):
    dovecot.create_folder(mail_user, "Projects")
    engine.sync_account(account.pk)
    deliver(dovecot, mail_user, 2, days_ago=1, folder="Projects", prefix="Recent")
    deliver(dovecot, mail_user, 2, days_ago=30, folder="Projects", prefix="Old")
    engine.sync_account(account.pk)
    old_folder = MailFolder.objects.get(account=account, name="Projects")

    dovecot.doveadm("mailbox rename", "Projects", "Archive/Projects", user=mail_user)
    dovecot.reset_uidvalidity(mail_user, "Archive/Projects")  # a server that renumbers on rename
    bodies_fetched.clear()
    report = engine.sync_account(account.pk)

    assert report.error is None and report.deleted_messages == 0
    assert bodies_fetched == []
    assert live(account).count() == 4
    old_folder.refresh_from_db()
    assert not old_folder.exists_on_server
    new_folder = MailFolder.objects.get(account=account, name="Archive/Projects")
    assert new_folder.pk != old_folder.pk
    for message in live(account):
        assert folders_of(message) == ["Archive/Projects"]
    dovecot.expunge(mail_user, dovecot.uids(mail_user, "Archive/Projects")[:1], folder="Archive/Projects")
    assert engine.sync_account(account.pk).deleted_messages == 1


def test_a_deleted_folder_deletes_only_mail_with_no_copy_elsewhere(account, dovecot, mail_user):
    dovecot.create_folder(mail_user, "Team")
    engine.sync_account(account.pk)
    shared = make_message("In both")
    dovecot.append(mail_user, shared, folder="Team")
    dovecot.append(mail_user, shared)
    deliver(dovecot, mail_user, 2, days_ago=25, folder="Team", prefix="Only in team")
    engine.sync_account(account.pk)
    assert live(account).count() == 3

    dovecot.doveadm("mailbox delete", "Team", user=mail_user)
    report = engine.sync_account(account.pk)

    assert report.deleted_messages == 2
    assert list(live(account).values_list("subject", flat=True)) == ["In both"]
    assert folders_of(live(account).get()) == ["INBOX"]


def test_when_the_read_copy_leaves_the_server_the_remaining_copies_decide_the_read_state(account, dovecot, mail_user):
    engine.sync_account(account.pk)
    raw = make_message("Read in one folder only")
    inbox_uid = dovecot.append(mail_user, raw)
    archive_uid = dovecot.append(mail_user, raw, folder="Archive", flags=("\\Seen",))
    engine.sync_account(account.pk)
    message = live(account).get()
    assert folders_of(message) == ["Archive", "INBOX"] and message.is_read  # the copy read last

    dovecot.expunge(mail_user, [archive_uid], folder="Archive")
    engine.sync_account(account.pk)

    message.refresh_from_db()
    assert folders_of(message) == ["INBOX"] and not message.is_read
    dovecot.add_flags(mail_user, [inbox_uid], ("\\Seen",))
    engine.sync_account(account.pk)
    message.refresh_from_db()
    assert message.is_read


# --- 4. Shared Message-IDs -----------------------------------------------------------------------------


def test_different_messages_sharing_a_message_id_are_stored_apart_and_copies_are_one(account, dovecot, mail_user):
    reused = "<reused-1@broken-mailer.example>"
    invoice = make_message("Invoice 1001", message_id=reused, body="Please pay 100 EUR.\r\n")
    other = make_message("Lunch?", sender="Bob <bob@other.example>", message_id=reused, body="Noon?\r\n")
    dovecot.append(mail_user, invoice)
    dovecot.append(mail_user, other)
    # The same invoice again: re-stamped by a server on the way (trace headers), and with LF line ends.
    restamped = b"Received: from mx.example by mail.test; Mon, 1 Dec 2025 10:00:00 +0000\r\n" + invoice
    dovecot.append(mail_user, restamped, folder="Archive")
    dovecot.append(mail_user, invoice.replace(b"\r\n", b"\n"), folder="Archive")
    # One message in Sent and its delivered copy with a header the receiving side added: one message.
    sent = make_message("Proposal", sender=f"Me <{mail_user.address}>", message_id="<proposal-7@mail.test>")
    dovecot.append(mail_user, sent, folder="Sent")
    dovecot.append(mail_user, b"X-Filter-Verdict: clean\r\n" + sent)

    report = engine.sync_account(account.pk)

    assert report.error is None
    assert sorted(live(account).values_list("subject", flat=True)) == ["Invoice 1001", "Lunch?", "Proposal"]
    assert folders_of(live(account).get(subject="Invoice 1001")) == ["Archive", "Archive", "INBOX"]
    assert folders_of(live(account).get(subject="Lunch?")) == ["INBOX"]
    assert folders_of(live(account).get(subject="Proposal")) == ["INBOX", "Sent"]
    assert (report.created, report.kept_apart, report.existing) == (3, 1, 3)
    # Kept apart, in one conversation (they claim to be the same message).
    assert live(account).filter(message_id="reused-1@broken-mailer.example").values("thread").distinct().count() == 1

    again = engine.sync_account(account.pk)
    assert (again.created, again.deleted_messages) == (0, 0)
    # Each expunge removes only its own message.
    lunch_uid = live(account).get(subject="Lunch?").locations.get().uid
    dovecot.expunge(mail_user, [lunch_uid])
    assert engine.sync_account(account.pk).deleted_messages == 1
    assert sorted(live(account).values_list("subject", flat=True)) == ["Invoice 1001", "Proposal"]


def test_every_corpus_message_that_shares_a_message_id_is_stored(account, dovecot, mail_user):
    files = sorted(path for path in CORPUS.rglob("*") if path.is_file() and not path.name.startswith("LICENSE"))
    files = [path for path in files if path.suffix in {".eml", ".msg", ".txt", ""} and path.name != "SOURCES.md"]
    groups = collections.defaultdict(set)
    for path in files:
        raw = path.read_bytes()
        groups[parse_message(raw).message_key].add(content_fingerprint(raw))
    shared = {key: hashes for key, hashes in groups.items() if len(hashes) > 1}
    apart = sum(len(hashes) - 1 for hashes in shared.values())
    assert apart >= 13  # the distinct corpus messages a Message-ID key alone merged
    recent = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    dovecot.deliver_many(mail_user, [(path.read_bytes(), (), recent) for path in files])

    report = engine.sync_account(account.pk, time_budget=600)

    assert report.error is None
    assert EmailMessage.objects.filter(account=account).count() == sum(len(hashes) for hashes in groups.values())
    stored = set(EmailMessage.objects.filter(account=account).values_list("message_key", "content_hash"))
    assert stored == {(key, content_hash) for key, hashes in groups.items() for content_hash in hashes}
    assert report.kept_apart == apart
    assert report.created == sum(len(hashes) for hashes in groups.values())
    assert report.created + report.existing == len(files)
    assert_mirrors_server(account, dovecot, mail_user)


# --- 6. Mislabelled charsets ----------------------------------------------------------------------------


def test_a_mislabelled_charset_is_decoded_and_undecodable_text_keeps_the_raw_bytes(account, dovecot, mail_user):
    japanese = "お世話になっております。見積書を添付いたしますので、ご確認のほどよろしくお願いいたします。" * 4
    head = (
        "From: Tanaka <tanaka@example.jp>\r\nTo: me@mail.test\r\nSubject: Estimate\r\n"
        "Message-ID: <{id}@example.jp>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset={charset}\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    )
    mislabelled = head.format(id="eucjp", charset="iso-2022-jp").encode() + japanese.encode("euc_jp") + b"\r\n"
    broken = head.format(id="broken", charset="utf-8").encode() + "Café ça à é è".encode() + b" \xff\xfe done\r\n"
    dovecot.append(mail_user, mislabelled)
    dovecot.append(mail_user, broken)

    engine.sync_account(account.pk)

    decoded = live(account).get(message_id="eucjp@example.jp")
    assert "\ufffd" not in decoded.body_text
    assert "見積書を添付いたします" in decoded.body_text
    kept = live(account).get(message_id="broken@example.jp")
    assert "could not be decoded" in kept.parse_error
    with default_storage.open(kept.raw.name, "rb") as handle:
        assert handle.read() == broken


# --- 5. A killed sync leaves no process behind ---------------------------------------------------------


def _session_members(session_id: int) -> list[tuple[int, str]]:
    """(pid, command line) of every live process in the session (start_new_session: the killed
    command's pid), which each of its descendants inherits unless it calls setsid itself."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            state, sid = fields[0], int(fields[3])
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError):
            continue
        if sid == session_id and state != "Z":
            members.append((int(entry.name), command))
    return members


def _database_env() -> dict[str, str]:
    settings_db = connection.settings_dict
    env = dict(os.environ)
    env["DATABASE_URL"] = (
        f"postgres://{settings_db['USER']}@{settings_db['HOST'] or '127.0.0.1'}:{settings_db['PORT'] or 5432}/"
        f"{settings_db['NAME']}"
    )
    return env


@pytest.mark.django_db(transaction=True)
def test_sigkill_of_sync_mail_leaves_no_process_behind(alice, dovecot, mail_user):
    if connection.vendor != "postgresql":
        pytest.skip("runs against PostgreSQL")
    account = make_account(alice, mail_user, dovecot)
    deliver(dovecot, mail_user, 1500)  # above the pool threshold: parse workers run
    command = [sys.executable, "manage.py", "sync_mail", "--account", str(account.pk), "--once"]
    env = _database_env()
    for stored_before_kill in (0, 150, 600):
        process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
        try:
            _kill_while_children_run(process, account, stored_before_kill)
        finally:  # whatever the outcome, nothing this test started keeps running
            for pid, _command in _session_members(process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    finished = subprocess.run(command, cwd=ROOT, env=env, timeout=300, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    assert live(account).count() == 1500
    assert MessageLocation.objects.filter(folder__account=account).count() == 1500


def _kill_while_children_run(process: subprocess.Popen, account, stored_before_kill: int) -> None:
    deadline = time.monotonic() + 90
    # Kill while its children run: once it has a child (parse workers start with the first big fetch),
    # and after it has stored a given number of messages.
    while time.monotonic() < deadline and process.poll() is None:
        if len(_session_members(process.pid)) > 1 and live(account).count() >= stored_before_kill:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the sync ended before it could be killed"
    children = [member for member in _session_members(process.pid) if member[0] != process.pid]
    assert children, "the kill should land while the parse workers run"
    os.kill(process.pid, signal.SIGKILL)  # the sync process alone, as the kernel's OOM killer would
    process.wait()
    leftover = _session_members(process.pid)
    waited = time.monotonic() + 10
    while leftover and time.monotonic() < waited:
        time.sleep(0.1)
        leftover = _session_members(process.pid)
    assert leftover == [], f"processes outlived the killed sync: {leftover}"
