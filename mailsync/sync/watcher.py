"""The IDLE watcher: thousands of inboxes held open in one loop; a change enqueues a sync, never runs it.

`Watcher.run()` is what `manage.py sync_mail` (without --once) runs, on any number of machines next to
the Celery workers. The accounts are shared between watchers through leases (mailsync.sync.leases):
every `leases.heartbeat_seconds()` the watcher renews its registration, drops what it no longer holds
and claims its fair share.

One thread runs the loop: every held account's IMAP connection sits in IDLE on INBOX, its socket in one
`selectors` selector. A readable socket is read (`ImapSession.read_idle`); EXISTS / EXPUNGE / FETCH
(or a reconnect, which may have missed something) enqueue `sync_account` on the "sync" Celery queue
(mailsync.sync.tasks), at most one per account per ENQUEUE_COALESCE seconds. The blocking steps
(connect, log in, SELECT, re-issuing IDLE every IDLE_RENEW_SECONDS, polling a server without IDLE,
LOGOUT) run in a small fixed pool of connector threads, which never touch the database.

The database is touched only from the loop (one connection, closed again when idle): the heartbeat,
loading an account's connection settings, connection slots, recording a failure. Memory and database connections stay
fixed whatever the number of accounts; the periodic sync of every account is beat's (one schedule).

Limits: each connection holds a slot of its mailbox's cap (mailsync.connection.limits), renewed with
the heartbeat; without a free slot the account waits, the others go on.

Errors: a connection that fails is retried with a per-account backoff (5 s doubling to 5 min; from
1 min after "too many connections", for that account only). The failure is recorded on the account
(state, message and fix for the settings page, the admin and the status page) and logged by
mailsync.connection.state only when the account's state or error changes, not at every retry.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.db import close_old_connections, connection

from mailsync.connection import limits
from mailsync.connection.config import account_imap_config
from mailsync.connection.state import record_connection_failure
from mailsync.models import EmailAccount
from mailsync.protocols import errors, imap

from . import leases, tasks

logger = logging.getLogger(__name__)

CONNECTORS = 4  # threads doing the blocking steps (connect, log in, renew IDLE, log out)
MAX_CONNECTING = 32  # connections opened at once (a start-up burst must not flood the server)
FIRST_RETRY_DELAY = 5.0
MAX_RETRY_DELAY = 300.0
IDLE_RENEW_SECONDS = 25 * 60  # servers may drop an IDLE after 30 minutes (RFC 2177)
POLL_SECONDS = 60.0  # a server without IDLE is asked (NOOP) this often
TOO_MANY_RETRY_DELAY = 60.0  # first retry after "too many connections" (the cap is shared with other apps)
ENQUEUE_COALESCE = 1.0  # changes of one account within this many seconds make one sync
DB_IDLE_CLOSE = 5.0  # the loop's database connection is closed after this long unused


@dataclass
class Watch:
    """One held account."""

    account_id: int
    session: imap.ImapSession | None = None
    busy: bool = False  # a connector thread owns the session right now
    idling: bool = False  # in IDLE (False: the server has no IDLE and is polled)
    retry_at: float = 0.0
    delay: float = FIRST_RETRY_DELAY
    since: float = 0.0  # when IDLE (or the last poll) started
    dirty: bool = False  # a change waits to be enqueued
    enqueued_at: float = -1e9
    shown_error: str = ""  # the error of its last failed connection ("" once connected)
    slot: int | None = None  # its connection slot (mailsync.connection.limits)
    dropped: bool = False


class Watcher:
    def __init__(
        self,
        *,
        watcher_id: str | None = None,
        shard: leases.Shard | None = None,
        account_ids: list[int] | None = None,
        connectors: int = CONNECTORS,
        enqueue: Callable[[int], None] | None = None,
    ):
        self.watcher_id = watcher_id or leases.new_watcher_id()
        self.shard = shard
        self.account_ids = account_ids or None
        self.enqueue = enqueue or tasks.enqueue_sync
        self.watches: dict[int, Watch] = {}
        self.selector = selectors.DefaultSelector()
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=connectors, thread_name_prefix="imap-connect")
        self.jobs: dict[concurrent.futures.Future, tuple[str, Watch]] = {}
        self.enqueued = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._db_used_at: float | None = None

    # ---------------------------------------------------------------------------------------------
    # The loop

    def run(self, stop: threading.Event) -> None:
        next_beat = 0.0
        trouble = ""  # the loop's last failure (database or broker down), logged once until it is over
        try:
            while not stop.is_set():
                try:
                    now = time.monotonic()
                    if now >= next_beat:
                        next_beat = now + leases.heartbeat_seconds()
                        self._beat()
                    self._start_connections(now)
                    self._collect_jobs()
                    for key, _ in self.selector.select(timeout=0.5):
                        if key.data is None:
                            self._drain_wake()
                        else:
                            self._readable(key.data)
                    self._renew(time.monotonic())
                    self._flush(time.monotonic())
                    self._close_idle_db()
                except Exception as exc:
                    # The database or the broker is away: keep the IDLE connections, try again in a
                    # moment. (Away for longer than the lease, the accounts go to other watchers; the
                    # next heartbeat that works says which ones are still this watcher's.)
                    if type(exc).__name__ != trouble:
                        logger.exception("watcher %s: its loop failed; retrying every second", self.watcher_id)
                        trouble = type(exc).__name__
                    self._db_used_at = None
                    with contextlib.suppress(Exception):
                        connection.close()
                    stop.wait(1.0)
                else:
                    if trouble:
                        logger.warning("watcher %s works again", self.watcher_id)
                        trouble = ""
        finally:
            self._shutdown()

    def _beat(self) -> None:
        self._db()
        held = leases.heartbeat(self.watcher_id, shard=self.shard)
        limits.renew(self.watcher_id, seconds=leases.lease_seconds())
        result = leases.rebalance(self.watcher_id, held, shard=self.shard, only=self.account_ids)
        for account_id in set(self.watches) - result.held:
            self._drop(self.watches.pop(account_id))
        for account_id in result.held - set(self.watches):
            self.watches[account_id] = Watch(account_id)
        if result.claimed or result.released:
            logger.info(
                "watcher %s: %d accounts (claimed %d, released %d)",
                self.watcher_id,
                len(self.watches),
                len(result.claimed),
                len(result.released),
            )

    def _start_connections(self, now: float) -> None:
        connecting = sum(1 for kind, _ in self.jobs.values() if kind == "open")
        for watch in self.watches.values():
            if connecting >= MAX_CONNECTING:
                return
            if watch.session is None and not watch.busy and watch.retry_at <= now:
                config = self._config(watch)
                if config is None:
                    continue
                self._submit("open", watch, _open, config)
                connecting += 1

    def _config(self, watch: Watch) -> imap.ImapConfig | None:
        self._db()
        account = EmailAccount.objects.filter(pk=watch.account_id, state__in=leases.WATCHED_STATES).first()
        if account is None:  # paused or removed meanwhile: released at the next beat
            watch.retry_at = time.monotonic() + leases.heartbeat_seconds()
            return None
        if not watch.shown_error:
            watch.shown_error = account.last_error_code
        try:
            config = account_imap_config(account)
        except errors.MailError as error:
            self._failed(watch, error)
            return None
        watch.slot = limits.acquire(account, holder=self.watcher_id, seconds=leases.lease_seconds())
        if watch.slot is None:
            self._failed(watch, limits.refused(account))
            return None
        return config

    def _submit(self, kind: str, watch: Watch, function, *args) -> None:
        watch.busy = True
        future = self.pool.submit(function, *args)
        self.jobs[future] = (kind, watch)
        future.add_done_callback(self._wake)

    def _collect_jobs(self) -> None:
        for future in [f for f in self.jobs if f.done()]:
            kind, watch = self.jobs.pop(future)
            watch.busy = False
            error = future.exception()
            if watch.dropped:
                if error is None and kind == "open":
                    future.result()[0].abort()
                elif watch.session is not None:
                    watch.session.abort()
                    watch.session = None
                self._release_slot(watch)
                continue
            if error is not None:
                self._lost(watch, error)
                continue
            if kind == "open":
                session, idling = future.result()
                watch.session, watch.idling = session, idling
                self._listen(watch)
                watch.delay = FIRST_RETRY_DELAY
                # Connected (again): anything may have arrived while there was no connection. This
                # session's IDLE already runs, so what arrives from now on is announced to it.
                watch.dirty = True
                self._recovered(watch)
            elif future.result():  # renew / poll: a change came meanwhile
                watch.dirty = True
                self._listen(watch)
            else:
                self._listen(watch)

    def _listen(self, watch: Watch) -> None:
        watch.since = time.monotonic()
        if watch.idling and watch.session is not None:
            self.selector.register(watch.session.fileno(), selectors.EVENT_READ, watch)

    def _readable(self, watch: Watch) -> None:
        try:
            if watch.session is not None and watch.session.read_idle():
                watch.dirty = True
        except errors.MailError as error:
            self._lost(watch, error)

    def _renew(self, now: float) -> None:
        for watch in self.watches.values():
            if watch.session is None or watch.busy:
                continue
            if watch.idling and now - watch.since >= IDLE_RENEW_SECONDS:
                self._unlisten(watch)
                self._submit("renew", watch, _renew_idle, watch.session)
            elif not watch.idling and now - watch.since >= POLL_SECONDS:
                self._submit("poll", watch, watch.session.poll_changes)

    def _flush(self, now: float) -> None:
        for watch in self.watches.values():
            if watch.dirty and now - watch.enqueued_at >= ENQUEUE_COALESCE:
                watch.enqueued_at = now
                self._db()  # with CELERY_TASK_ALWAYS_EAGER (tests) the sync runs right here
                self.enqueue(watch.account_id)  # the broker away: raises, and the change stays due
                watch.dirty = False
                self.enqueued += 1

    # ---------------------------------------------------------------------------------------------
    # Failures

    def _lost(self, watch: Watch, error: BaseException) -> None:
        self._unlisten(watch)
        if watch.session is not None:
            self.pool.submit(watch.session.close)
            watch.session = None
        self._release_slot(watch)
        if not isinstance(error, errors.MailError):
            logger.error("watcher of account %s failed", watch.account_id, exc_info=error)
            error = errors.ServerError(f"Unexpected problem while watching ({type(error).__name__}).", protocol="imap")
        self._failed(watch, error)

    def _failed(self, watch: Watch, error: errors.MailError) -> None:
        if isinstance(error, errors.TooManyConnections):
            watch.delay = max(watch.delay, TOO_MANY_RETRY_DELAY)
        watch.retry_at = time.monotonic() + watch.delay
        watch.delay = min(watch.delay * 2, MAX_RETRY_DELAY)
        if error.transient and error.code == errors.ConnectionLost.code and watch.shown_error == "":
            # A dropped connection of a working account: reconnect quietly (the catch-up sync follows).
            return
        watch.shown_error = error.code
        self._db()
        account = EmailAccount.objects.filter(pk=watch.account_id).first()
        if account is not None:
            # Recorded at every retry (the retries back off, so these writes are few): the account's
            # state, error and fix are what the settings page, the admin and the status page show. The
            # log line comes from there, once per change of state or error, not once per retry.
            record_connection_failure(account=account, error=error)

    def _recovered(self, watch: Watch) -> None:
        # The catch-up sync that follows records the success on the account (and logs the recovery).
        watch.shown_error = ""

    # ---------------------------------------------------------------------------------------------
    # Housekeeping

    def _unlisten(self, watch: Watch) -> None:
        if watch.session is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.selector.unregister(watch.session.fileno())

    def _drop(self, watch: Watch) -> None:
        """No longer ours: close at once (no LOGOUT to wait for), before the next watcher connects."""
        watch.dropped = True
        if watch.busy:
            return  # a connector thread has the session: closed when its job is collected
        self._unlisten(watch)
        if watch.session is not None:
            watch.session.abort()
            watch.session = None
        self._release_slot(watch)

    def _release_slot(self, watch: Watch) -> None:
        if watch.slot is not None:
            self._db()
            limits.release(watch.slot)
            watch.slot = None

    def _wake(self, _future=None) -> None:
        with contextlib.suppress(OSError):  # the pipe is full: the loop is awake anyway
            self._wake_w.send(b"x")

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _db(self) -> None:
        if self._db_used_at is None:
            close_old_connections()
        self._db_used_at = time.monotonic()

    def _close_idle_db(self) -> None:
        if self._db_used_at is not None and time.monotonic() - self._db_used_at > DB_IDLE_CLOSE:
            connection.close()
            self._db_used_at = None

    def _shutdown(self) -> None:
        for watch in self.watches.values():
            self._drop(watch)
        self.pool.shutdown(wait=True, cancel_futures=True)
        try:
            limits.release_holder(self.watcher_id)
            leases.unregister(self.watcher_id)
        except Exception:  # the database may be what failed; the lease then expires by itself
            logger.exception("watcher %s could not hand over its accounts", self.watcher_id)
        connection.close()
        self.selector.close()
        self._wake_r.close()
        self._wake_w.close()


def _open(config: imap.ImapConfig) -> tuple[imap.ImapSession, bool]:
    """Connector thread: connect, select INBOX, start IDLE. The caller's catch-up sync is enqueued only
    after this returns, so a message delivered before IDLE began is in that sync, and one delivered
    after is announced to this session."""
    session = imap.connect(config)
    try:
        session.select("INBOX", readonly=True)
        idling = session.start_idle()
    except BaseException:
        session.close()
        raise
    return session, idling


def _renew_idle(session: imap.ImapSession) -> bool:
    changed = session.stop_idle()
    session.start_idle()
    return changed


def run_forever(
    *, account_ids: list[int] | None = None, shard: leases.Shard | None = None, stop: threading.Event | None = None
) -> None:
    """Watch this watcher's share of the accounts until `stop` is set (or Ctrl-C / SIGTERM)."""
    stop = stop or threading.Event()
    watcher = Watcher(account_ids=account_ids, shard=shard)
    logger.info("watcher %s started (pid %s)", watcher.watcher_id, os.getpid())
    with contextlib.suppress(KeyboardInterrupt):
        watcher.run(stop)
