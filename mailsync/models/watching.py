"""Who watches which account for new mail: the IDLE watchers (`manage.py sync_mail`) and their leases;
and the IMAP connections open to each mailbox (ConnectionSlot), counted against the provider's cap.

A watcher registers itself (SyncWatcher) and renews `expires_at` by heartbeat. A lease (WatcherLease)
gives one account to one watcher: one row per account at most (the primary key is the account), so an
account is never watched twice. A lease lives as long as its watcher's registration: when a watcher
stops renewing (killed, frozen, cut off), whoever sees its registration expired deletes it, and its
leases go with it (CASCADE), ready to be claimed by the others (mailsync.sync.leases).
"""

from django.db import models

from .accounts import EmailAccount


class SyncWatcher(models.Model):
    """A running `manage.py sync_mail` (without --once)."""

    id = models.CharField(max_length=64, primary_key=True, help_text="host:pid:random")
    hostname = models.CharField(max_length=253)
    pid = models.PositiveIntegerField()
    # "" = every account; "2/4" = the accounts whose id % 4 == 1 (the second of four shards).
    shard = models.CharField(max_length=20, blank=True)
    started_at = models.DateTimeField(auto_now_add=True)
    heartbeat_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        verbose_name = "IDLE watcher"

    def __str__(self) -> str:
        return self.id


class WatcherLease(models.Model):
    """The account `account` is watched by `watcher` (until the watcher's registration expires)."""

    account = models.OneToOneField(EmailAccount, on_delete=models.CASCADE, primary_key=True, related_name="watch_lease")
    watcher = models.ForeignKey(SyncWatcher, on_delete=models.CASCADE, related_name="leases")
    claimed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "IDLE watch lease"

    def __str__(self) -> str:
        return f"{self.account_id} -> {self.watcher_id}"


class ConnectionSlot(models.Model):
    """One open (or opening) IMAP connection to a mailbox, counted against its provider's cap
    (mailsync.connection.limits). Held by a watcher (renewed with its heartbeat) or a sync (released at
    its end); a slot whose holder died expires by itself."""

    key = models.CharField(max_length=600, db_index=True, help_text="IMAP host | login")
    holder = models.CharField(max_length=100, db_index=True)
    acquired_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()

    class Meta:
        verbose_name = "IMAP connection slot"

    def __str__(self) -> str:
        return f"{self.key} ({self.holder})"
