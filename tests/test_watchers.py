"""IDLE watchers on several machines: leases (mailsync.sync.leases), the one-loop watcher
(mailsync.sync.watcher) and `manage.py sync_mail` run as real processes against a real Dovecot."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from devtools.mailservers import LineServer
from mailsync.accounts import providers
from mailsync.connection import limits
from mailsync.models import ConnectionSlot, EmailAccount, SyncWatcher, WatcherLease
from mailsync.protocols import errors
from mailsync.sync import engine, leases
from mailsync.sync import watcher as watcher_module
from tests.mail_factories import EmailAccountFactory
from tests.test_sync import make_account, running_watcher


def _accounts(count: int, **fields) -> list[EmailAccount]:
    return [EmailAccountFactory(email_address=f"box{i}@company.test", **fields) for i in range(count)]


@pytest.mark.django_db
def test_two_watchers_share_the_accounts_fairly_and_never_watch_one_twice():
    _accounts(10)
    first = leases.heartbeat("host-a:1:aa")
    first = leases.rebalance("host-a:1:aa", first).held
    assert len(first) == 10  # alone, it takes everything

    second = leases.rebalance("host-b:2:bb", leases.heartbeat("host-b:2:bb")).held
    assert second == set()  # nothing free yet: the first one releases its surplus at its next beat
    first = leases.rebalance("host-a:1:aa", leases.heartbeat("host-a:1:aa")).held
    second = leases.rebalance("host-b:2:bb", leases.heartbeat("host-b:2:bb")).held
    assert len(first) == len(second) == 5
    assert not first & second
    assert WatcherLease.objects.count() == 10


@pytest.mark.django_db
def test_a_dead_watchers_accounts_are_taken_over_after_its_lease_expires(settings):
    settings.MAILSYNC_WATCHER_LEASE_SECONDS = 5
    _accounts(4)
    leases.rebalance("dead:1:aa", leases.heartbeat("dead:1:aa"))
    leases.rebalance("alive:2:bb", leases.heartbeat("alive:2:bb"))
    leases.rebalance("dead:1:aa", leases.heartbeat("dead:1:aa"))
    alive = leases.rebalance("alive:2:bb", leases.heartbeat("alive:2:bb")).held
    assert len(alive) == 2
    # "dead" stops beating; while its lease runs, its accounts stay its own.
    assert len(leases.rebalance("alive:2:bb", leases.heartbeat("alive:2:bb")).held) == 2
    SyncWatcher.objects.filter(pk="dead:1:aa").update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    alive = leases.rebalance("alive:2:bb", leases.heartbeat("alive:2:bb")).held
    assert len(alive) == 4
    assert not SyncWatcher.objects.filter(pk="dead:1:aa").exists()


@pytest.mark.django_db
def test_a_frozen_watcher_learns_it_lost_its_accounts():
    _accounts(2)
    held = leases.rebalance("frozen:1:aa", leases.heartbeat("frozen:1:aa")).held
    assert len(held) == 2
    SyncWatcher.objects.filter(pk="frozen:1:aa").update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    assert len(leases.rebalance("other:2:bb", leases.heartbeat("other:2:bb")).held) == 2
    assert leases.heartbeat("frozen:1:aa") == set()  # registered again, with nothing


@pytest.mark.django_db
def test_paused_and_removed_accounts_are_released_and_not_claimed():
    watched, paused = _accounts(2)
    leases.rebalance("w:1:aa", leases.heartbeat("w:1:aa"))
    EmailAccount.objects.filter(pk=paused.pk).update(state=EmailAccount.State.PAUSED)
    result = leases.rebalance("w:1:aa", leases.heartbeat("w:1:aa"))
    assert result.held == {watched.pk}
    assert result.released == {paused.pk}


@pytest.mark.django_db
def test_shards_split_the_accounts_by_id():
    accounts = _accounts(6)
    one = leases.Shard.parse("1/2")
    two = leases.Shard.parse("2/2")
    held_one = leases.rebalance("s1:1:aa", leases.heartbeat("s1:1:aa", shard=one), shard=one).held
    held_two = leases.rebalance("s2:2:bb", leases.heartbeat("s2:2:bb", shard=two), shard=two).held
    assert held_one == {a.pk for a in accounts if a.pk % 2 == 0}
    assert held_two == {a.pk for a in accounts if a.pk % 2 == 1}


@pytest.mark.parametrize("text", ["3/2", "0/2", "a/b", "2"])
def test_a_wrong_shard_is_refused_with_a_readable_message(text):
    with pytest.raises(ValueError, match="--shard"):
        leases.Shard.parse(text)


@pytest.mark.django_db
def test_a_clean_stop_hands_the_accounts_over_at_once():
    _accounts(3)
    leases.rebalance("w:1:aa", leases.heartbeat("w:1:aa"))
    leases.unregister("w:1:aa")
    assert WatcherLease.objects.count() == 0
    assert len(leases.rebalance("w:2:bb", leases.heartbeat("w:2:bb")).held) == 3


# --------------------------------------------------------------------------------------------------
# `manage.py sync_mail` as real processes against a real Dovecot

ROOT = Path(__file__).resolve().parents[1]
LEASE = 3  # seconds (production default 30)


def _dovecot_accounts(user, dovecot, count: int) -> list[EmailAccount]:
    return [make_account(user, dovecot.add_user(), dovecot) for _ in range(count)]


def _watcher_env() -> dict[str, str]:
    db = connection.settings_dict
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
        MAILSYNC_WATCHER_LEASE_SECONDS=str(LEASE),
        MAILSYNC_ALLOW_PRIVATE_HOSTS="1",
        # The watchers only enqueue: into an in-memory broker nobody consumes (syncing is not under test).
        CELERY_TASK_ALWAYS_EAGER="0",
        CELERY_BROKER_URL="memory://",
    )
    return env


def _start_watcher(log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "manage.py", "sync_mail"],
            cwd=ROOT,
            env=_watcher_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _imap_sessions(dovecot) -> dict[str, int]:
    """Dovecot's own count of open IMAP connections per user (`doveadm who`)."""
    sessions = {}
    for line in dovecot.doveadm("who").splitlines()[1:]:
        fields = line.split()
        if fields:
            sessions[fields[0].split("@")[0]] = int(fields[1])
    return sessions


def _watcher_db_connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sync_mail watcher' AND datname = %s",
            [connection.settings_dict["NAME"]],
        )
        return cursor.fetchone()[0]


def _held_by_watcher() -> dict[str, int]:
    counts: dict[str, int] = {}
    for watcher_id in WatcherLease.objects.values_list("watcher_id", flat=True):
        counts[watcher_id] = counts.get(watcher_id, 0) + 1
    return counts


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


@pytest.mark.django_db(transaction=True)
def test_two_watcher_processes_share_the_accounts_and_take_over_after_kill_9(alice, dovecot, tmp_path):
    if connection.vendor != "postgresql":
        pytest.skip("runs against PostgreSQL (pg_stat_activity, SKIP LOCKED)")
    accounts = _dovecot_accounts(alice, dovecot, 30)
    names = {a.username.split("@")[0] for a in accounts}
    first = _start_watcher(tmp_path / "first.log")
    second = _start_watcher(tmp_path / "second.log")
    try:
        most_db_connections = most_sessions = 0
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            most_db_connections = max(most_db_connections, _watcher_db_connections())
            held = _held_by_watcher()
            sessions = {name: n for name, n in _imap_sessions(dovecot).items() if name in names}
            most_sessions = max([most_sessions, *sessions.values()])
            if sorted(held.values()) == [15, 15] and sessions == dict.fromkeys(names, 1):
                break
            time.sleep(0.2)
        assert sorted(held.values()) == [15, 15], (held, (tmp_path / "first.log").read_text()[-2000:])
        # Dovecot's view: every account has exactly one IDLE connection, none has two.
        assert sessions == dict.fromkeys(names, 1)
        assert most_sessions == 1, "an account was watched twice while the second watcher took its share"
        # 30 IDLE connections, and the watchers' database connections stay one each (not one per account).
        assert most_db_connections <= 2

        victim_id = next(w for w in held if w.split(":")[1] == str(first.pid))
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        killed = time.monotonic()
        while time.monotonic() < killed + 4 * LEASE + 10:
            held = _held_by_watcher()
            if list(held.values()) == [30] and victim_id not in held:
                break
            time.sleep(0.1)
        takeover = time.monotonic() - killed
        assert list(held.values()) == [30], held
        assert takeover < LEASE + LEASE / 3 + 3, f"takeover took {takeover:.1f} s"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            sessions = {name: n for name, n in _imap_sessions(dovecot).items() if name in names}
            if sessions == dict.fromkeys(names, 1):
                break
            time.sleep(0.2)
        assert sessions == dict.fromkeys(names, 1)
        assert _watcher_db_connections() <= 1
    finally:
        _stop(first)
        _stop(second)


# --------------------------------------------------------------------------------------------------
# Caps on simultaneous connections, and errors that are seen (in-process watcher, real Dovecot)


def watching(account_ids, enqueued: list[int]):
    """The watcher in a thread, recording what it enqueues instead of syncing."""
    return running_watcher(*account_ids, enqueue=enqueued.append)


@pytest.mark.django_db
def test_connection_slots_stop_at_the_cap_and_expire(settings):
    settings.MAILSYNC_MAX_CONNECTIONS_PER_MAILBOX = 2
    account, same_login = _accounts(2)
    EmailAccount.objects.filter(pk=same_login.pk).update(username=account.username)
    same_login.refresh_from_db()
    first = limits.acquire(account, holder="a", seconds=60)
    second = limits.acquire(same_login, holder="b", seconds=60)  # the same mailbox: the same cap
    assert first and second
    assert limits.acquire(account, holder="c", seconds=60) is None
    with pytest.raises(errors.TooManyConnections), limits.imap_slot(account, seconds=60):
        pass
    limits.release(first)
    assert limits.acquire(account, holder="c", seconds=60)
    ConnectionSlot.objects.update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    assert limits.acquire(account, holder="d", seconds=60)  # a dead holder's slots do not count
    assert list(ConnectionSlot.objects.values_list("holder", flat=True)) == ["d"]  # and are dropped
    other = _accounts(3)[2]  # another mailbox: slots of its own
    assert limits.acquire(other, holder="e", seconds=60) and limits.acquire(other, holder="f", seconds=60)


def test_the_presets_carry_the_providers_caps():
    caps = providers.connection_caps()
    assert caps["imap.gmail.com"] == 15
    assert caps["outlook.office365.com"] == 16
    assert limits.cap_for(EmailAccount(imap_host="IMAP.gmail.com")) == 15


@pytest.mark.django_db(transaction=True)
def test_a_capped_mailbox_never_gets_more_connections_than_its_cap(
    settings, alice, bob, charlie, admin_user, dovecot, mail_user
):
    settings.MAILSYNC_MAX_CONNECTIONS_PER_MAILBOX = 2
    # Four CRM accounts of one mailbox (the same login): together they may hold two connections.
    accounts = [make_account(owner, mail_user, dovecot) for owner in (alice, bob, charlie, admin_user)]
    enqueued: list[int] = []
    most = 0
    with watching([a.pk for a in accounts], enqueued):
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            most = max(most, _imap_sessions(dovecot).get(mail_user.name, 0))
            if len(set(enqueued)) >= 2 and time.monotonic() > deadline - 5:
                break
            time.sleep(0.1)
        assert most == 2
        assert ConnectionSlot.objects.count() == 2
        watched = set(enqueued)
        waiting = [a for a in accounts if a.pk not in watched]
        assert len(watched) == 2 and len(waiting) == 2
        # A sync of a waiting account finds no slot either, and says why on the account.
        report = engine.sync_account(waiting[0].pk)
        assert report.error is not None and report.error.code == "too_many_connections"
        assert _imap_sessions(dovecot).get(mail_user.name, 0) <= 2
    waiting[0].refresh_from_db()
    assert waiting[0].last_error_code == "too_many_connections"
    assert ConnectionSlot.objects.count() == 0  # a clean stop gives the slots back


@pytest.mark.django_db(transaction=True)
def test_an_unwatchable_account_shows_its_error_once_in_the_log_and_the_others_are_watched(
    monkeypatch, caplog, alice, bob, charlie, dovecot, mail_user, closed_port
):
    monkeypatch.setattr(watcher_module, "FIRST_RETRY_DELAY", 0.1)
    monkeypatch.setattr(watcher_module, "MAX_RETRY_DELAY", 0.2)
    busy_server = LineServer(b"* BYE [ALERT] Too many simultaneous connections. (Failure)\r\n")
    working = make_account(alice, mail_user, dovecot)
    unreachable = make_account(bob, mail_user, dovecot)
    busy = make_account(charlie, mail_user, dovecot)
    # A new account (still connecting) whose server is down, and a server that is full.
    EmailAccount.objects.filter(pk=unreachable.pk).update(
        imap_port=closed_port, imap_security="none", state=EmailAccount.State.CONNECTING
    )
    EmailAccount.objects.filter(pk=busy.pk).update(imap_port=busy_server.port, imap_security="none")
    enqueued: list[int] = []
    try:
        with caplog.at_level("INFO"), watching([working.pk, unreachable.pk, busy.pk], enqueued):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                unreachable.refresh_from_db()
                if unreachable.consecutive_failures >= 4 and working.pk in enqueued:
                    break
                time.sleep(0.1)
    finally:
        busy_server.close()
    unreachable.refresh_from_db()
    busy.refresh_from_db()
    assert working.pk in enqueued  # the others are watched
    assert unreachable.consecutive_failures >= 4  # retried, with its backoff
    assert unreachable.state == EmailAccount.State.ERROR
    assert unreachable.last_error_code == "unreachable" and unreachable.last_error_message
    lines = [r.getMessage() for r in caplog.records if f"mail account {unreachable.pk} " in r.getMessage()]
    assert len(lines) == 1, lines  # one line for the change, none for the retries
    # "Too many connections" is not a wrong password: retried later, for this account only.
    assert busy.last_error_code == "too_many_connections"
    assert busy.state != EmailAccount.State.NEEDS_REAUTH
    assert busy.consecutive_failures == 1


@pytest.mark.django_db(transaction=True)
def test_sigterm_stops_a_watcher_cleanly_and_hands_its_accounts_over_at_once(alice, dovecot, tmp_path):
    if connection.vendor != "postgresql":
        pytest.skip("runs against PostgreSQL")
    _dovecot_accounts(alice, dovecot, 3)
    process = _start_watcher(tmp_path / "watcher.log")
    try:
        deadline = time.monotonic() + 30
        while sum(_held_by_watcher().values()) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sum(_held_by_watcher().values()) == 3
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert WatcherLease.objects.count() == 0 and SyncWatcher.objects.count() == 0
        assert ConnectionSlot.objects.count() == 0
    finally:
        _stop(process)


@pytest.mark.django_db
def test_sync_mail_refuses_a_wrong_shard_with_a_readable_message():
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="--shard 5/4: the number must be between 1 and 4"):
        call_command("sync_mail", "--shard", "5/4")


@pytest.mark.django_db(transaction=True)
def test_a_broker_outage_does_not_stop_the_watcher_nor_lose_the_change(caplog, alice, dovecot, mail_user):
    account = make_account(alice, mail_user, dovecot)
    calls: list[int] = []

    def enqueue(account_id: int) -> None:
        calls.append(account_id)
        if len(calls) <= 2:
            raise ConnectionRefusedError("broker down")

    with caplog.at_level("INFO"), running_watcher(account.pk, enqueue=enqueue):
        deadline = time.monotonic() + 15
        while len(calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert calls == [account.pk] * 3  # the catch-up was enqueued once the broker was back
    failures = [r for r in caplog.records if "its loop failed" in r.getMessage()]
    assert len(failures) == 1  # logged once, not at every retry
    assert any("works again" in r.getMessage() for r in caplog.records)
