"""Account health (SPEC A5, A6, O2): is each mailbox syncing, and if not, what should someone do?

One status per account, derived from what the sync engine records (state, last_success_at, last error):
- ok: active and synced successfully within `stale_after()`;
- syncing: connecting or in its initial sync, or fetching past emails;
- attention: needs re-authentication, in error, or "stale" (active but no successful sync for longer
  than `stale_after()`: the worker or beat is down, or the server keeps timing out quietly);
- paused: stopped by its owner; removed: gone from the settings page (its mail stays).

The banner on every page asks `accounts_needing_attention(user)`: one small query, same rule as here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from django.utils.timesince import timesince

from crm.models import User
from mailsync.models import EmailAccount

State = EmailAccount.State

OK = "ok"
SYNCING = "syncing"
ATTENTION = "attention"
PAUSED = "paused"
REMOVED = "removed"

LABELS = {OK: "Up to date", SYNCING: "Syncing", ATTENTION: "Needs attention", PAUSED: "Paused", REMOVED: "Removed"}
# Never "stale" sooner than this: a transient failure is retried quietly with a backoff of 1, then 2
# minutes before an account shows "error" (mailsync.connection.state.ERROR_AFTER); the banner must not beat that.
MIN_STALE_SECONDS = 600
# States in which the scheduler is expected to sync the account (services / sync.due_accounts).
ACTIVE_STATES = (State.CONNECTING, State.INITIAL_SYNC, State.SYNCING)
BANNER_LIMIT = 5

STALE_FIX = (
    "Try “Sync now”. If it keeps happening, the background sync of this CRM may be stopped: tell your administrator."
)


@dataclass(frozen=True)
class AccountHealth:
    status: str
    summary: str
    fix: str = ""
    stale: bool = False

    @property
    def label(self) -> str:
        return LABELS[self.status]

    @property
    def needs_attention(self) -> bool:
        return self.status == ATTENTION


def stale_after() -> timedelta:
    """Three sync intervals without a success, and never less than MIN_STALE_SECONDS."""
    return timedelta(seconds=max(3 * settings.MAILSYNC_SYNC_INTERVAL, MIN_STALE_SECONDS))


def _stale_condition(now: datetime) -> Q:
    cutoff = now - stale_after()
    return Q(state__in=ACTIVE_STATES) & (
        Q(last_success_at__lt=cutoff) | Q(last_success_at__isnull=True, created_at__lt=cutoff)
    )


def attention_condition(now: datetime | None = None) -> Q:
    """A Q on EmailAccount: the accounts `account_health` calls "needs attention"."""
    now = now or timezone.now()
    return Q(state__in=[State.NEEDS_REAUTH, State.ERROR]) | _stale_condition(now)


def is_stale(account: EmailAccount, now: datetime | None = None) -> bool:
    if account.state not in ACTIVE_STATES:
        return False
    now = now or timezone.now()
    since = account.last_success_at or account.created_at
    return since is not None and now - since > stale_after()


def _last_success_text(account: EmailAccount, now: datetime) -> str:
    if account.last_success_at is None:
        return "It has not synced successfully yet"
    return f"No successful sync for {timesince(account.last_success_at, now)}"


def account_health(account: EmailAccount, now: datetime | None = None) -> AccountHealth:
    now = now or timezone.now()
    state = account.state
    if state == State.REMOVED:
        return AccountHealth(REMOVED, "Removed. Its synced email stays in the CRM.")
    if state == State.PAUSED:
        return AccountHealth(PAUSED, "Sync is paused.", "Resume the sync when you want new mail again.")
    if state == State.NEEDS_REAUTH:
        return AccountHealth(
            ATTENTION,
            account.last_error_message or "The mail server no longer accepts the saved login.",
            account.last_error_fix or "Re-authenticate: first we retry the saved login, then ask for a new one.",
        )
    if state == State.ERROR:
        fix = account.last_error_fix or "Check the account, then use “Sync now” or “Test connection”."
        if account.next_retry_at and account.next_retry_at > now:
            fix = f"{fix} Next automatic try in {timesince(now, account.next_retry_at)}."
        return AccountHealth(ATTENTION, account.last_error_message or "Sync fails.", fix)
    if is_stale(account, now):
        summary = _last_success_text(account, now) + "."
        if account.last_error_message:
            summary = f"{summary} Last problem: {account.last_error_message}"
        return AccountHealth(ATTENTION, summary, account.last_error_fix or STALE_FIX, stale=True)
    if state in (State.CONNECTING, State.INITIAL_SYNC):
        days = account.initial_sync_days
        return AccountHealth(SYNCING, f"Initial sync of the last {days} day{'s' if days != 1 else ''} is running.")
    if account.past_sync_state in ("queued", "running"):
        return AccountHealth(SYNCING, "Syncing past emails.")
    if account.last_success_at is None:
        return AccountHealth(SYNCING, "Waiting for its first sync.")
    return AccountHealth(OK, "Up to date.")


@dataclass(frozen=True)
class AttentionItem:
    """What the banner needs about one account (no mail content, no credentials)."""

    pk: int
    email_address: str
    reason: str


def accounts_needing_attention(user: User, now: datetime | None = None) -> list[AttentionItem]:
    """The user's accounts that need attention, for the banner: one query, none for anonymous users."""
    if not (user and user.is_authenticated):
        return []
    now = now or timezone.now()
    rows = (
        EmailAccount.objects.filter(user=user)
        .filter(attention_condition(now))
        .only(
            "pk",
            "email_address",
            "state",
            "last_error_message",
            "last_error_fix",
            "last_success_at",
            "created_at",
            "next_retry_at",
            "initial_sync_days",
            "past_sync_state",
        )
        .order_by("email_address")[:BANNER_LIMIT]
    )
    items = []
    for account in rows:
        health = account_health(account, now)
        items.append(AttentionItem(pk=account.pk, email_address=account.email_address, reason=health.summary))
    return items


def overview(accounts: list[EmailAccount], now: datetime | None = None) -> dict[str, int]:
    """How many accounts are in each status (the admin status page's summary)."""
    counts = dict.fromkeys(LABELS, 0)
    for account in accounts:
        counts[account_health(account, now).status] += 1
    return counts
