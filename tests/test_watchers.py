"""IDLE watchers on several machines: leases (mailsync.sync.leases), the one-loop watcher
(mailsync.sync.watcher) and `manage.py sync_mail` run as real processes against a real Dovecot."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from mailsync.models import EmailAccount, SyncWatcher, WatcherLease
from mailsync.sync import leases
from tests.mail_factories import EmailAccountFactory


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
