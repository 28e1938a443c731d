"""Near real time: one IDLE connection per account on its inbox; new mail triggers a sync at once.

`run_forever()` is what `manage.py sync_mail` (without --once) runs next to the Celery workers. Each
account gets a thread that keeps an IDLE on INBOX (re-issued well within the 29 minutes servers
allow) and runs `engine.sync_account` whenever the server reports a change, and at least every
MAILSYNC_SYNC_INTERVAL seconds. The per-account sync lock makes this safe next to beat-driven syncs.
"""

from __future__ import annotations

import logging
import threading
import time

from django.conf import settings
from django.db import close_old_connections, connection

from mailsync.connection.config import account_imap_config
from mailsync.models import EmailAccount
from mailsync.protocols import errors, imap

from . import engine

logger = logging.getLogger(__name__)

REFRESH_ACCOUNTS_EVERY = 15.0
MAX_RETRY_DELAY = 300.0
WATCHED_STATES = (
    EmailAccount.State.CONNECTING,
    EmailAccount.State.INITIAL_SYNC,
    EmailAccount.State.SYNCING,
    EmailAccount.State.ERROR,
)


class AccountWatcher(threading.Thread):
    def __init__(self, account_id: int, *, interval: float | None = None, stop: threading.Event | None = None):
        super().__init__(name=f"idle-{account_id}", daemon=True)
        self.account_id = account_id
        self.interval = float(interval or settings.MAILSYNC_SYNC_INTERVAL)
        self.stop_event = stop or threading.Event()
        self.syncs = 0

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        delay = 5.0
        try:
            while not self.stop_event.is_set():
                try:
                    self._watch()
                    delay = 5.0
                except errors.MailError as error:
                    if error.needs_reauth:
                        # The sync records the state and its fix; retrying would only lock the account.
                        self._sync()
                        return
                    logger.info("watcher of account %s: %s; retrying in %.0fs", self.account_id, error, delay)
                    self.stop_event.wait(delay)
                    delay = min(delay * 2, MAX_RETRY_DELAY)
                except Exception:
                    logger.exception("watcher of account %s failed", self.account_id)
                    self.stop_event.wait(delay)
                    delay = min(delay * 2, MAX_RETRY_DELAY)
        finally:
            connection.close()

    def _watch(self) -> None:
        account = self._account()
        if account is None:
            self.stop()
            return
        try:
            session = imap.connect(account_imap_config(account))
        except errors.MailError:
            self._sync()  # records the failure (state, last error and its fix) for the settings page
            raise
        with session:
            session.select("INBOX", readonly=True)
            # This session's view of the folder starts now; the catch-up covers everything before it, and
            # what arrives later shows as a change to this session (selecting after the catch-up would let
            # a message delivered in between wait for the next interval).
            self._sync()
            last_sync = time.monotonic()
            while not self.stop_event.is_set():
                # Anything delivered during the last sync? IDLE would not mention it.
                changed = session.poll_changes() or session.idle_wait(timeout=min(self.interval, 30.0))
                due = time.monotonic() - last_sync >= self.interval
                if changed or due:
                    if self._account() is None:
                        self.stop()
                        return
                    self._sync()
                    last_sync = time.monotonic()

    def _account(self) -> EmailAccount | None:
        close_old_connections()
        return EmailAccount.objects.filter(pk=self.account_id, state__in=WATCHED_STATES).first()

    def _sync(self) -> None:
        while not self.stop_event.is_set():
            report = engine.sync_account(self.account_id)
            self.syncs += 1
            if not report.more_work or report.error is not None:
                return


def run_forever(*, account_ids: list[int] | None = None, stop: threading.Event | None = None) -> None:
    """Keep one watcher per active account until `stop` is set (or Ctrl-C)."""
    stop = stop or threading.Event()
    watchers: dict[int, AccountWatcher] = {}
    try:
        while not stop.is_set():
            close_old_connections()
            active = EmailAccount.objects.filter(state__in=WATCHED_STATES)
            if account_ids:
                active = active.filter(pk__in=account_ids)
            wanted = set(active.values_list("pk", flat=True))
            for account_id, watcher in list(watchers.items()):
                if account_id not in wanted or not watcher.is_alive():
                    watcher.stop()
                    del watchers[account_id]
            for account_id in wanted - set(watchers):
                watchers[account_id] = AccountWatcher(account_id)
                watchers[account_id].start()
            stop.wait(REFRESH_ACCOUNTS_EVERY)
    except KeyboardInterrupt:
        pass
    finally:
        for watcher in watchers.values():
            watcher.stop()
        connection.close()
