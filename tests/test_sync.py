"""The sync engine against the real test Dovecot: every message exactly once (SPEC S1-S9, O3)."""

import contextlib
import datetime as dt
import imaplib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from mailsync.models import EmailAccount, EmailMessage, MailFolder, MessageLocation
from mailsync.sync import engine, lock
from tests.mailservers import make_message

pytestmark = [pytest.mark.dovecot, pytest.mark.django_db]

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
if not CORPUS.exists():
    CORPUS = Path("/work/shared/corpus")


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def make_account(user, mail_user, dovecot, **extra) -> EmailAccount:
    account = EmailAccount(
        user=user,
        email_address=mail_user.address,
        username=mail_user.username,
        imap_host=dovecot.host,
        imap_port=dovecot.imaps_port,
        imap_security="ssl",
        smtp_host=dovecot.host,
        trusted_ca_pem=dovecot.ca_pem,
        state=EmailAccount.State.INITIAL_SYNC,
        **extra,
    )
    account.set_secret(mail_user.password)
    account.save()
    return account


def deliver(dovecot, mail_user, count, *, days_ago=0.5, folder="INBOX", prefix="Message", flags=()):
    date = now() - dt.timedelta(days=days_ago)
    messages = [
        (make_message(f"{prefix} {i}", to=mail_user.address, date=date - dt.timedelta(minutes=i)), flags, date)
        for i in range(count)
    ]
    return dovecot.deliver_many(mail_user, messages, folder)


def live(account):
    return EmailMessage.objects.filter(account=account, deleted_at__isnull=True)


def assert_mirrors_server(account, dovecot, mail_user, folder="INBOX"):
    """The database holds exactly one location per server UID of the folder, no duplicates."""
    server_uids = dovecot.uids(mail_user, folder)
    stored = MailFolder.objects.get(account=account, name=folder)
    location_uids = sorted(
        MessageLocation.objects.filter(folder=stored, uidvalidity=stored.uidvalidity).values_list("uid", flat=True)
    )
    assert location_uids == server_uids


@pytest.fixture
def account(alice, mail_user, dovecot):
    return make_account(alice, mail_user, dovecot)


def test_initial_sync_takes_the_last_three_days_and_discovers_folder_roles(account, dovecot, mail_user):
    deliver(dovecot, mail_user, 4, days_ago=1)
    deliver(dovecot, mail_user, 2, days_ago=10, prefix="Old")
    deliver(dovecot, mail_user, 1, days_ago=0.1, folder="Sent", prefix="Sent")

    report = engine.sync_account(account.pk)

    assert report.error is None
    assert live(account).count() == 5
    assert not live(account).filter(subject__startswith="Old").exists()
    roles = dict(MailFolder.objects.filter(account=account).values_list("name", "role"))
    assert roles["INBOX"] == "inbox" and roles["Sent"] == "sent" and roles["Trash"] == "trash"
    assert roles["Archive"] == "archive" and roles["Junk"] == "junk" and roles["Drafts"] == "drafts"
    account.refresh_from_db()
    assert account.state == EmailAccount.State.SYNCING
    assert account.initial_sync_done_at is not None and account.last_success_at is not None
    sent = live(account).get(subject="Sent 0")
    assert sent.direction == EmailMessage.Direction.SENT


def test_running_twice_changes_nothing(account, dovecot, mail_user):
    deliver(dovecot, mail_user, 6)
    engine.sync_account(account.pk)
    first = sorted(live(account).values_list("pk", "message_key"))
    report = engine.sync_account(account.pk)
    assert report.created == 0
    assert sorted(live(account).values_list("pk", "message_key")) == first
    assert_mirrors_server(account, dovecot, mail_user)


def test_incremental_picks_up_new_mail_whatever_its_date(account, dovecot, mail_user):
    deliver(dovecot, mail_user, 2)
    engine.sync_account(account.pk)
    # New arrivals are synced even when their Date is old (a delayed delivery).
    dovecot.append(mail_user, make_message("Late arrival", date=now() - dt.timedelta(days=30)))
    dovecot.append(mail_user, make_message("Fresh"))
    report = engine.sync_account(account.pk)
    assert report.created == 2
    assert set(live(account).values_list("subject", flat=True)) >= {"Late arrival", "Fresh"}
    assert_mirrors_server(account, dovecot, mail_user)


def test_mail_arriving_in_another_folder_during_a_pass_is_taken_in_by_that_pass(
    account, dovecot, mail_user, monkeypatch
):
    # The STATUS of every folder is read at once; a folder's status read before an earlier folder's work
    # is read again, so mail that arrived meanwhile is not left for the next pass.
    deliver(dovecot, mail_user, 2)
    engine.sync_account(account.pk)
    dovecot.append(mail_user, make_message("New in the inbox"))
    real_take_in = engine.take_in_uids
    delivered = []

    def take_in(*args, **kwargs):
        if not delivered:
            dovecot.append(mail_user, make_message("Sent meanwhile"), folder="Sent")
            delivered.append(True)
        return real_take_in(*args, **kwargs)

    monkeypatch.setattr(engine, "take_in_uids", take_in)
    report = engine.sync_account(account.pk)
    assert delivered and report.error is None
    assert {"New in the inbox", "Sent meanwhile"} <= set(live(account).values_list("subject", flat=True))
    assert_mirrors_server(account, dovecot, mail_user, folder="Sent")


def test_a_no_change_pass_asks_every_folder_status_in_one_write(account, dovecot, mail_user, monkeypatch):
    deliver(dovecot, mail_user, 2)
    engine.sync_account(account.pk)
    writes = []
    real_send = imaplib.IMAP4.send

    def send(self, data):
        writes.append(bytes(data))
        return real_send(self, data)

    monkeypatch.setattr(imaplib.IMAP4, "send", send)
    report = engine.sync_account(account.pk)
    assert report.error is None and report.created == 0
    statuses = [data for data in writes if b" STATUS " in data]
    synced = MailFolder.objects.filter(account=account, initial_synced_at__isnull=False).count()
    assert synced >= 3 and len(statuses) == 1 and statuses[0].count(b" STATUS ") == synced


def test_flag_changes_on_the_server_are_reflected(account, dovecot, mail_user):
    uids = deliver(dovecot, mail_user, 3)
    engine.sync_account(account.pk)
    assert not live(account).filter(is_read=True).exists()

    dovecot.add_flags(mail_user, uids[:2], ("\\Seen",))
    dovecot.add_flags(mail_user, uids[2:], ("\\Flagged",))
    report = engine.sync_account(account.pk)
    assert report.flag_changes == 3
    assert live(account).filter(is_read=True).count() == 2
    assert live(account).filter(is_flagged=True).count() == 1

    dovecot.remove_flags(mail_user, uids[:1], ("\\Seen",))
    engine.sync_account(account.pk)
    assert live(account).filter(is_read=True).count() == 1


def test_server_deletion_is_reflected(account, dovecot, mail_user):
    uids = deliver(dovecot, mail_user, 3)
    engine.sync_account(account.pk)
    dovecot.expunge(mail_user, uids[:1])
    report = engine.sync_account(account.pk)
    assert report.deleted_messages == 1
    assert live(account).count() == 2
    gone = EmailMessage.objects.get(account=account, deleted_at__isnull=False)
    assert gone.deletion_source == "server" and not gone.locations.exists()
    assert_mirrors_server(account, dovecot, mail_user)


def test_move_keeps_one_message_with_its_new_location(account, dovecot, mail_user):
    uids = deliver(dovecot, mail_user, 2)
    engine.sync_account(account.pk)
    before = sorted(live(account).values_list("pk", flat=True))

    dovecot.move(mail_user, uids[:1], "Archive")
    engine.sync_account(account.pk)

    assert sorted(live(account).values_list("pk", flat=True)) == before
    moved = live(account).get(locations__folder__name="Archive")
    assert list(moved.locations.values_list("folder__name", flat=True)) == ["Archive"]
    assert_mirrors_server(account, dovecot, mail_user)
    assert_mirrors_server(account, dovecot, mail_user, "Archive")


def test_same_message_in_two_folders_is_one_message_with_two_locations(account, dovecot, mail_user):
    raw = make_message("Copied", message_id="<copied-1@example.org>")
    dovecot.append(mail_user, raw)
    dovecot.append(mail_user, raw, folder="Archive")
    engine.sync_account(account.pk)
    message = live(account).get(subject="Copied")
    assert sorted(message.locations.values_list("folder__name", flat=True)) == ["Archive", "INBOX"]


def test_uidvalidity_change_resyncs_without_duplicating(account, dovecot, mail_user):
    deliver(dovecot, mail_user, 5)
    engine.sync_account(account.pk)
    keys_before = sorted(live(account).values_list("pk", "message_key"))
    old_validity = MailFolder.objects.get(account=account, name="INBOX").uidvalidity

    new_validity = dovecot.reset_uidvalidity(mail_user)
    assert new_validity != old_validity
    report = engine.sync_account(account.pk)

    assert report.error is None
    assert report.created == 0
    assert sorted(live(account).values_list("pk", "message_key")) == keys_before
    inbox = MailFolder.objects.get(account=account, name="INBOX")
    assert inbox.uidvalidity == new_validity
    assert not MessageLocation.objects.filter(folder=inbox, uidvalidity=old_validity).exists()
    assert_mirrors_server(account, dovecot, mail_user)


def test_a_crash_in_the_middle_leaves_nothing_half_done(account, dovecot, mail_user, monkeypatch):
    deliver(dovecot, mail_user, 450)  # above the process-pool threshold, several batches
    real_write = engine._write
    calls = {"n": 0}

    def crashing_write(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("worker killed")  # not an Exception: nothing may swallow it
        return real_write(*args, **kwargs)

    monkeypatch.setattr(engine, "_write", crashing_write)
    with pytest.raises(KeyboardInterrupt):
        engine.sync_account(account.pk)
    assert 0 < live(account).count() < 450
    monkeypatch.setattr(engine, "_write", real_write)

    engine.sync_account(account.pk)
    assert live(account).count() == 450
    assert live(account).values("message_key").distinct().count() == 450
    assert_mirrors_server(account, dovecot, mail_user)


@pytest.mark.django_db(transaction=True)
def test_killed_worker_process_then_restart_gives_exactly_the_mailbox(alice, dovecot, mail_user):
    """A real SIGKILL of `manage.py sync_mail --once` while it writes, then a restart."""
    account = make_account(alice, mail_user, dovecot)
    deliver(dovecot, mail_user, 1200)
    env = dict(os.environ)
    settings_db = connection.settings_dict
    env["DATABASE_URL"] = (
        f"postgres://{settings_db['USER']}@{settings_db['HOST'] or '127.0.0.1'}:{settings_db['PORT'] or 5432}/"
        f"{settings_db['NAME']}"
    )
    if connection.vendor != "postgresql":
        pytest.skip("the kill test runs against PostgreSQL")
    command = [sys.executable, "manage.py", "sync_mail", "--account", str(account.pk), "--once"]
    root = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(command, cwd=root, env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and live(account).count() < 200:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = live(account).count()
    assert 0 < killed_at < 1200, "the kill should land in the middle of the sync"

    # PostgreSQL may take a moment to notice the dead backend and free its advisory lock; until then
    # the restarted worker reports the account as busy and skips it, as it should. Retry like beat does.
    for _ in range(40):
        restart = subprocess.run(command, cwd=root, env=env, check=True, timeout=180, capture_output=True, text=True)
        if "skipped" not in restart.stdout:
            break
        time.sleep(0.25)
    assert live(account).count() == 1200
    assert live(account).values("message_key").distinct().count() == 1200
    assert_mirrors_server(account, dovecot, mail_user)


@pytest.mark.django_db(transaction=True)
def test_second_sync_of_the_same_account_does_not_run_concurrently(alice, dovecot, mail_user):
    import threading

    account = make_account(alice, mail_user, dovecot)
    holding, release = threading.Event(), threading.Event()

    def other_worker():
        try:
            with lock.account_lock(account.pk) as acquired:
                assert acquired
                holding.set()
                release.wait(10)
        finally:
            connection.close()

    worker = threading.Thread(target=other_worker)
    worker.start()
    assert holding.wait(10)
    try:
        report = engine.sync_account(account.pk)
        assert report.locked is False
        assert not EmailAccount.objects.get(pk=account.pk).last_sync_at
    finally:
        release.set()
        worker.join()
    assert engine.sync_account(account.pk).locked is True


def test_wrong_password_sets_needs_reauthentication_and_keeps_mail(account, dovecot, mail_user):
    deliver(dovecot, mail_user, 2)
    engine.sync_account(account.pk)
    account.refresh_from_db()
    assert account.last_sync_at == account.last_success_at  # a pass that worked is one instant, no "last try"
    succeeded = account.last_success_at
    account.set_secret("not-the-password")
    account.save(update_fields=["secret_encrypted"])

    report = engine.sync_account(account.pk)

    assert report.error is not None and report.error.needs_reauth
    account.refresh_from_db()
    assert account.last_success_at == succeeded and account.last_sync_at > succeeded  # the failed try is shown
    assert account.state == EmailAccount.State.NEEDS_REAUTH
    assert account.last_error_code and account.last_error_fix
    assert live(account).count() == 2
    assert account not in engine.due_accounts()


def test_unreachable_server_backs_off(account, closed_port):
    account.imap_port = closed_port
    account.save(update_fields=["imap_port"])
    for attempt in range(1, 4):
        report = engine.sync_account(account.pk)
        assert report.error is not None and not report.error.needs_reauth
        account.refresh_from_db()
        assert account.consecutive_failures == attempt
        assert account.next_retry_at > timezone.now()
    assert account.state == EmailAccount.State.ERROR
    assert account not in engine.due_accounts()


def test_only_selected_folders_are_synced_and_changing_the_choice_keeps_mail(account, dovecot, mail_user):
    deliver(dovecot, mail_user, 2)
    deliver(dovecot, mail_user, 3, folder="Archive", prefix="Archived")
    engine.sync_account(account.pk)
    assert live(account).count() == 5

    account.sync_all_folders = False
    account.save(update_fields=["sync_all_folders"])
    MailFolder.objects.filter(account=account).exclude(name="INBOX").update(selected=False)
    deliver(dovecot, mail_user, 1, folder="Archive", prefix="Later archived")
    engine.sync_account(account.pk)

    assert live(account).count() == 5  # nothing already synced is removed
    assert not live(account).filter(subject__startswith="Later").exists()


def test_past_email_sync_with_progress(account, dovecot, mail_user):
    deliver(dovecot, mail_user, 2, days_ago=1)
    deliver(dovecot, mail_user, 7, days_ago=40, prefix="Older")
    deliver(dovecot, mail_user, 3, days_ago=200, prefix="Ancient")
    engine.sync_account(account.pk)
    account.refresh_from_db()
    assert live(account).count() == 2

    engine.request_past_sync(account, months=3, only_contacts=False)
    engine.sync_account(account.pk)

    account.refresh_from_db()
    assert account.past_sync_state == "done"
    assert account.past_sync_total == 7 and account.past_sync_done == 7
    assert live(account).count() == 9
    assert not live(account).filter(subject__startswith="Ancient").exists()


def test_past_email_sync_is_offered_only_after_the_initial_sync(account):
    with pytest.raises(ValueError, match="initial sync"):
        engine.request_past_sync(account, months=1, only_contacts=False)


def test_past_email_sync_only_with_crm_contacts(account, dovecot, mail_user):
    from tests.factories import PersonEmailFactory

    PersonEmailFactory(email="known@customer.example")
    date = now() - dt.timedelta(days=20)
    dovecot.deliver_many(
        mail_user,
        [
            (make_message("From a contact", sender="Known <known@customer.example>", date=date), (), date),
            (make_message("From a stranger", sender="x@stranger.example", date=date), (), date),
        ],
    )
    engine.sync_account(account.pk)
    account.refresh_from_db()
    engine.request_past_sync(account, months=1, only_contacts=True)
    engine.sync_account(account.pk)
    subjects = set(live(account).values_list("subject", flat=True))
    assert "From a contact" in subjects and "From a stranger" not in subjects


def test_the_whole_corpus_syncs_over_imap_without_a_crash(account, dovecot, mail_user):
    files = sorted(path for path in CORPUS.rglob("*") if path.is_file() and not path.name.startswith("LICENSE"))
    files = [path for path in files if path.suffix in {".eml", ".msg", ".txt", ""} and path.name != "SOURCES.md"]
    assert len(files) > 250
    recent = now() - dt.timedelta(hours=1)
    dovecot.deliver_many(mail_user, [(path.read_bytes(), (), recent) for path in files])

    report = engine.sync_account(account.pk, time_budget=600)

    assert report.error is None, report.error
    assert_mirrors_server(account, dovecot, mail_user)
    # Every server copy is a stored message (identical copies in the corpus collapse to one).
    assert EmailMessage.objects.filter(account=account).count() == report.created
    assert report.created + report.existing == len(files)


@contextlib.contextmanager
def running_watcher(*account_ids: int, enqueue=None):
    """The one-loop IDLE watcher (mailsync.sync.watcher) of these accounts in a thread; Celery is eager
    in tests, so the syncs it enqueues run right in its loop (unless `enqueue` replaces that). It has no
    periodic sync: only IDLE explains a fast arrival."""
    from mailsync.sync.watcher import Watcher

    watcher = Watcher(account_ids=list(account_ids), enqueue=enqueue)
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield watcher
    finally:
        stop.set()
        thread.join(timeout=40)


@pytest.mark.django_db(transaction=True)
def test_idle_watcher_does_not_miss_mail_arriving_right_after_its_catch_up(alice, dovecot, mail_user):
    """A message delivered right after the watcher's catch-up sync still comes at once."""
    from mailsync.sync import tasks

    account = make_account(alice, mail_user, dovecot)
    syncs = []

    def enqueue(account_id):
        tasks.enqueue_sync(account_id)
        syncs.append(account_id)
        if len(syncs) == 1:  # the worst moment: the catch-up has just listed the folder
            dovecot.append(mail_user, make_message("In the gap"))

    with running_watcher(account.pk, enqueue=enqueue):
        deadline = time.monotonic() + 20
        while not live(account).filter(subject="In the gap").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live(account).filter(subject="In the gap").exists(), "the message waited for the next interval"


@pytest.mark.django_db(transaction=True)
def test_idle_watcher_brings_new_mail_within_seconds(alice, dovecot, mail_user):
    account = make_account(alice, mail_user, dovecot)
    with running_watcher(account.pk) as watcher:
        deadline = time.monotonic() + 20
        while watcher.enqueued == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        # No pause: the catch-up sync is enqueued after the watcher's IDLE began, so even a message that
        # arrives before that sync ends is announced to it.
        dovecot.append(mail_user, make_message("Real time"))
        delivered = time.monotonic()
        while not live(account).filter(subject="Real time").exists() and time.monotonic() < delivered + 10:
            time.sleep(0.05)
        assert live(account).filter(subject="Real time").exists(), "IDLE did not bring the message"
        assert time.monotonic() - delivered < 10


@pytest.mark.parametrize("count", [1, 150, 399, 400, 1000, 1201, 5000, 20_017])
def test_fetch_batches_cover_every_uid_once_small_at_both_ends(count):
    uids = list(range(1, count + 1))
    pooled = count >= engine.POOL_THRESHOLD
    batches = engine._batches(uids, pooled=pooled)
    assert [uid for batch in batches for uid in batch] == uids  # each once, in order
    assert all(0 < len(batch) <= engine.LARGE_FETCH_BATCH for batch in batches)
    assert len(batches[0]) <= engine.FETCH_BATCH  # the first mail is listed soon
    if pooled:
        # Nothing overlaps the last parse and write: the last thousand go in small batches.
        tail = uids[-min(count - engine.FETCH_BATCH, engine.LARGE_FETCH_BATCH) :]
        assert all(len(batch) <= engine.FETCH_BATCH for batch in batches if batch[0] >= tail[0])
    else:
        assert all(len(batch) <= engine.FETCH_BATCH for batch in batches)
