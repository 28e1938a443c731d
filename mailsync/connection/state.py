"""An account's connection state: what the last failure was, and when to try again.

`record_connection_failure` stores a classified error (mailsync.protocols.errors) on the account: the
message and fix its owner sees, a retry backoff that the scheduler respects (`next_retry_at`), and the
state: authentication problems -> "needs re-authentication" (A6, the schedule stops until the user acts),
others -> "error" once they persist. `clear_error` is the other half, for a connection that worked.
Paused and removed accounts keep their state.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.db import transaction
from django.utils import timezone

from mailsync.models import EmailAccount
from mailsync.protocols import errors

logger = logging.getLogger(__name__)
State = EmailAccount.State
ERROR_AFTER = 3  # consecutive transient failures before a working account shows an error
RETRY_BACKOFF_MAX_SECONDS = 3600


def clear_error(account: EmailAccount) -> list[str]:
    account.last_error_code = ""
    account.last_error_message = ""
    account.last_error_fix = ""
    account.last_error_detail = ""
    account.consecutive_failures = 0
    account.next_retry_at = None
    return [
        "last_error_code",
        "last_error_message",
        "last_error_fix",
        "last_error_detail",
        "consecutive_failures",
        "next_retry_at",
    ]


def apply_failure(account: EmailAccount, error: errors.MailError) -> list[str]:
    now = timezone.now()
    account.last_error_code = error.code[:40]
    account.last_error_message = error.message
    account.last_error_fix = error.fix
    account.last_error_detail = error.detail
    account.last_error_at = now
    account.consecutive_failures += 1
    account.next_retry_at = None
    if not error.needs_reauth:
        # Authentication problems wait for the user (A6); anything else is retried with a backoff.
        delay = min(60 * 2 ** (account.consecutive_failures - 1), RETRY_BACKOFF_MAX_SECONDS)
        account.next_retry_at = now + dt.timedelta(seconds=delay)
    if account.state in {State.PAUSED, State.REMOVED}:
        pass
    elif error.needs_reauth:
        account.state = State.NEEDS_REAUTH
    elif not error.transient or account.state == State.CONNECTING or account.consecutive_failures >= ERROR_AFTER:
        # A network blip on a working account is retried quietly; the account shows "error" (and its
        # banner) only when it keeps failing, or when the user is waiting for a new account to connect.
        account.state = State.ERROR
    return [
        "last_error_code",
        "last_error_message",
        "last_error_fix",
        "last_error_detail",
        "last_error_at",
        "consecutive_failures",
        "next_retry_at",
        "state",
        "updated_at",
    ]


@transaction.atomic
def record_connection_failure(*, account: EmailAccount, error: errors.MailError) -> EmailAccount:
    """Store a classified error; auth errors -> "needs re-authentication" (A6), others -> "error".
    A paused or removed account keeps its state. Logged when the state or the error changes (a
    failure repeated at every retry of a watcher or a sync is one line, not thousands)."""
    locked = EmailAccount.objects.select_for_update().get(pk=account.pk)
    before = (locked.state, locked.last_error_code)
    locked.save(update_fields=apply_failure(locked, error))
    if (locked.state, locked.last_error_code) != before:
        logger.warning(
            "mail account %s (%s): %s, state %s (was %s); next try %s",
            locked.pk,
            locked.email_address,
            error,
            locked.state,
            before[0],
            locked.next_retry_at.isoformat(timespec="seconds") if locked.next_retry_at else "after re-authentication",
        )
    return locked


def log_recovery(account: EmailAccount) -> None:
    """A sync worked for an account that showed an error: one line, the counterpart of the failure's."""
    if account.last_error_code:
        logger.info(
            "mail account %s (%s) works again (was: %s)", account.pk, account.email_address, account.last_error_code
        )
