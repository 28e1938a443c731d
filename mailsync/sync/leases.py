"""Which watcher watches which account: leases in the database, shared by any number of watchers.

A watcher (`manage.py sync_mail`, on any machine) registers itself (SyncWatcher) and calls `heartbeat`
every `heartbeat_seconds()`: that renews its registration for `lease_seconds()`, deletes the registrations
of watchers that stopped renewing (their leases go with them: CASCADE), and tells it which accounts it
still holds. `rebalance` then gives it its fair share: the watchable accounts of its shard divided by the
live watchers of that shard, rounded up. Below it, it claims unleased accounts (PostgreSQL: rows locked
with SELECT ... FOR UPDATE SKIP LOCKED, so two watchers claiming at once take different accounts); above
it (a new watcher joined), it releases its surplus for the newcomer to claim.

Exactly one watcher per account: a lease's primary key is the account, so a second claim of the same
account is refused by the database whatever the timing (this is also what makes SQLite, which has no
SKIP LOCKED, safe for `make run`). A watcher killed with kill -9 stops renewing; its accounts are taken
over at the next heartbeat of another watcher after `lease_seconds()`: takeover within
lease_seconds() + heartbeat_seconds() (default 30 + 10 s).
"""

from __future__ import annotations

import math
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, F, OuterRef
from django.db.models.functions import Mod
from django.utils import timezone

from mailsync.models import EmailAccount, SyncWatcher, WatcherLease

# Accounts a watcher keeps an IDLE connection for (paused, removed and "needs re-authentication" wait
# for their owner).
WATCHED_STATES = (
    EmailAccount.State.CONNECTING,
    EmailAccount.State.INITIAL_SYNC,
    EmailAccount.State.SYNCING,
    EmailAccount.State.ERROR,
)


@dataclass(frozen=True)
class Shard:
    """`--shard 2/4`: this watcher only watches the accounts whose id % 4 == 1."""

    number: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard | None:
        """ "2/4" -> Shard(2, 4); "" -> None (every account). Raises ValueError with a readable message."""
        text = (text or "").strip()
        if not text:
            return None
        number, _, count = text.partition("/")
        try:
            shard = cls(int(number), int(count))
        except ValueError:
            raise ValueError(f"--shard takes NUMBER/COUNT, e.g. 2/4 (got {text!r})") from None
        if not 1 <= shard.number <= shard.count:
            raise ValueError(f"--shard {text}: the number must be between 1 and {shard.count}")
        return shard

    def __str__(self) -> str:
        return f"{self.number}/{self.count}"


def lease_seconds() -> float:
    return float(settings.MAILSYNC_WATCHER_LEASE_SECONDS)


def heartbeat_seconds() -> float:
    return max(0.5, lease_seconds() / 3)


def new_watcher_id() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def watchable_accounts(shard: Shard | None = None):
    accounts = EmailAccount.objects.filter(state__in=WATCHED_STATES)
    if shard is not None:
        accounts = accounts.annotate(shard_rest=Mod(F("pk"), shard.count)).filter(shard_rest=shard.number - 1)
    return accounts


def heartbeat(watcher_id: str, *, shard: Shard | None = None) -> set[int]:
    """Renew this watcher's registration, expire the dead ones; return the account ids it holds now.

    A watcher that was frozen for longer than its lease finds its registration (and leases) gone: it
    registers again with nothing, and the accounts it thought it held are someone else's."""
    now = timezone.now()
    expires = now + timedelta(seconds=lease_seconds())
    if not SyncWatcher.objects.filter(pk=watcher_id).update(heartbeat_at=now, expires_at=expires):
        hostname, pid, _ = [*watcher_id.split(":"), "", "", ""][:3]
        SyncWatcher.objects.create(
            id=watcher_id,
            hostname=hostname,
            pid=int(pid) if pid.isdigit() else 0,
            shard=str(shard or ""),
            heartbeat_at=now,
            expires_at=expires,
        )
    with transaction.atomic():
        SyncWatcher.objects.filter(expires_at__lt=now).delete()
    return set(WatcherLease.objects.filter(watcher_id=watcher_id).values_list("account_id", flat=True))


@dataclass
class Rebalance:
    held: set[int]
    claimed: set[int]
    released: set[int]


def rebalance(
    watcher_id: str, held: set[int], *, shard: Shard | None = None, only: list[int] | None = None
) -> Rebalance:
    """Release what this watcher should no longer watch, claim up to its fair share.

    `only`: watch these accounts and no others (`sync_mail --account`)."""
    accounts = watchable_accounts(shard)
    if only:
        accounts = accounts.filter(pk__in=only)
    released = set(
        WatcherLease.objects.filter(watcher_id=watcher_id)
        .exclude(account__in=accounts.values("pk"))
        .values_list("account_id", flat=True)
    )
    held = held - released
    live = SyncWatcher.objects.filter(expires_at__gte=timezone.now(), shard=str(shard or "")).count()
    share = math.ceil(accounts.count() / max(live, 1))
    if len(held) > share:
        released |= set(sorted(held)[share:])
        held = held - released
    if released:
        WatcherLease.objects.filter(watcher_id=watcher_id, account_id__in=released).delete()
    claimed: set[int] = set()
    if len(held) < share:
        claimed = _claim(watcher_id, accounts, share - len(held))
    return Rebalance(held=held | claimed, claimed=claimed, released=released)


def _claim(watcher_id: str, accounts, count: int) -> set[int]:
    with transaction.atomic():
        free = (
            accounts.filter(~Exists(WatcherLease.objects.filter(account_id=OuterRef("pk"))))
            .select_for_update(skip_locked=True, of=("self",))
            .order_by("pk")
        )
        candidates = list(free.values_list("pk", flat=True)[:count])
        if not candidates:
            return set()
        # Another watcher may have claimed one of them since (SQLite, or a row not locked yet): the
        # primary key refuses the second lease, and only the rows written here are ours.
        WatcherLease.objects.bulk_create(
            [WatcherLease(account_id=pk, watcher_id=watcher_id) for pk in candidates], ignore_conflicts=True
        )
        return set(
            WatcherLease.objects.filter(watcher_id=watcher_id, account_id__in=candidates).values_list(
                "account_id", flat=True
            )
        )


def release(watcher_id: str, account_ids: set[int]) -> None:
    WatcherLease.objects.filter(watcher_id=watcher_id, account_id__in=account_ids).delete()


def unregister(watcher_id: str) -> None:
    """A watcher that stops cleanly hands its accounts over at once (no need to wait for expiry)."""
    SyncWatcher.objects.filter(pk=watcher_id).delete()
