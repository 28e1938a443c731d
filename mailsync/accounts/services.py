"""Mail accounts: connect (test first, then save), re-authenticate, pause / resume, remove (SPEC A1-A8).

Network I/O (connection tests, OAuth refresh) never runs inside a database transaction: test first, then
write the outcome in one short transaction. Removing or pausing an account never deletes synced mail;
connecting the same mailbox again re-activates its row, so its messages are neither lost nor duplicated.
A write that makes an account syncable again (connect, resume, a fixed login) starts its sync after the
commit (mailsync.sync.tasks). How an account connects, and how a failure is recorded on it, is
mailsync.connection's: the sync engine, the watcher and sending use it without going through here.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from crm.models import User
from crm.ratelimit import count_in_window
from mailsync.connection.config import (
    AccountSettings,
    check_account,
    store_secret,
)
from mailsync.connection.state import apply_failure, clear_error, record_connection_failure
from mailsync.models import AccountAddress, AuthKind, EmailAccount, MailFolder, crypto
from mailsync.protocols import errors, oauth
from mailsync.sync.tasks import sync_after_commit

from . import providers
from .certificates import accept_certificates_for

logger = logging.getLogger(__name__)

State = EmailAccount.State


def settings_from_preset(
    preset: providers.ProviderPreset, *, email_address: str, username: str = "", auth_kind: str = ""
) -> AccountSettings:
    domain = email_address.rpartition("@")[2]
    preset = preset.for_domain(domain)
    if not auth_kind:
        auth_kind = AuthKind.APP_PASSWORD if preset.auth_kind != providers.PASSWORD else AuthKind.PASSWORD
    return AccountSettings(
        email_address=email_address,
        provider=preset.key,
        username=username or email_address,
        auth_kind=auth_kind,
        imap_host=preset.imap_host,
        imap_port=preset.imap_port,
        imap_security=preset.imap_security,
        smtp_host=preset.smtp_host,
        smtp_port=preset.smtp_port,
        smtp_security=preset.smtp_security,
        attachment_limit_mb=preset.attachment_limit_mb,
    )


# --------------------------------------------------------------------------------------------------
# Connection tests of a user (the connection itself: mailsync.connection.config)


def count_connection_test(*, user: User) -> None:
    """Count one connection test (add account, "Test connection", re-authenticate) of `user`; raises
    errors.TooManyConnectionTests past MAILSYNC_CONNECTION_TEST_LIMIT in MAILSYNC_CONNECTION_TEST_WINDOW
    seconds. Counted in the cache (shared by every web process when DJANGO_CACHE_URL is set), so the form
    cannot be used to scan servers at speed."""
    window = max(1, settings.MAILSYNC_CONNECTION_TEST_WINDOW)
    count = count_in_window(f"mailsync:connection-tests:{user.pk}", window=window)
    if count > settings.MAILSYNC_CONNECTION_TEST_LIMIT:
        raise errors.TooManyConnectionTests(
            f"Too many connection tests: at most {settings.MAILSYNC_CONNECTION_TEST_LIMIT} every "
            f"{max(1, window // 60)} minutes.",
        )


# --------------------------------------------------------------------------------------------------
# Writes


@transaction.atomic
def connect_account(
    *, user: User, account_settings: AccountSettings, secret: str, display_name: str = ""
) -> EmailAccount:
    """Save a mailbox whose connection test passed, and start its sync.

    The same address again for the same user re-activates the existing row (settings and credentials
    updated, removed_at cleared): its folders and messages stay as they are, nothing is duplicated.
    """
    address = account_settings.email_address.strip().lower()
    account = EmailAccount.objects.select_for_update().filter(user=user, email_address__iexact=address).first()
    if account is None:
        account = EmailAccount(user=user, email_address=address)
    account.provider = account_settings.provider
    account.username = account_settings.username or address
    account.auth_kind = account_settings.auth_kind
    account.imap_host = account_settings.imap_host
    account.imap_port = account_settings.imap_port
    account.imap_security = account_settings.imap_security
    account.smtp_host = account_settings.smtp_host
    account.smtp_port = account_settings.smtp_port
    account.smtp_security = account_settings.smtp_security
    account.attachment_limit_mb = account_settings.attachment_limit_mb
    if display_name or account_settings.display_name:
        account.display_name = display_name or account_settings.display_name
    account.set_secret(secret)
    account.state = State.CONNECTING
    account.removed_at = None
    clear_error(account)
    account.save()
    AccountAddress.objects.get_or_create(account=account, address=address)
    # The owner has just typed the password with the company's CAs of these servers in effect.
    accept_certificates_for(account=account)
    sync_after_commit(account.pk)
    return account


@transaction.atomic
def record_connection_success(*, account: EmailAccount, restart_sync: bool = True) -> EmailAccount:
    """Clear the error; an account in error / needs re-authentication goes back to connecting (and its sync
    is enqueued). Paused and removed accounts keep their state."""
    locked = EmailAccount.objects.select_for_update().get(pk=account.pk)
    fields = [*clear_error(locked), "updated_at"]
    if locked.state in {State.ERROR, State.NEEDS_REAUTH}:
        locked.state = State.CONNECTING
        fields.append("state")
        if restart_sync:
            sync_after_commit(locked.pk)
    locked.save(update_fields=fields)
    return locked


def retest_account(*, account: EmailAccount) -> errors.MailError | None:
    """The "Test connection" button: test with the stored credentials and record the outcome."""
    try:
        check_account(account)
    except errors.MailError as error:
        record_connection_failure(account=account, error=error)
        return error
    record_connection_success(account=account)
    return None


def reauthenticate(*, account: EmailAccount, new_secret: str | None = None) -> errors.MailError | None:
    """A6: without `new_secret`, retry the stored credentials; with it, test it and store it if it works.
    Returns the classified error (also recorded on the account) or None. Synced mail is never touched."""
    try:
        check_account(account, secret=new_secret)
    except errors.MailError as error:
        record_connection_failure(account=account, error=error)
        return error
    if new_secret is not None:
        store_secret(account=account, secret=new_secret)
        accept_certificates_for(account=account)
    record_connection_success(account=account)
    return None


@transaction.atomic
def drop_credentials_after_staff_change(*, account: EmailAccount) -> EmailAccount:
    """Support staff changed where the account connects (servers, ports, security, username, trusted CA):
    forget the stored password or token and ask the owner to re-authenticate (A6), so the owner's
    credentials only ever reach servers the owner has seen and accepted. Synced mail stays."""
    locked = EmailAccount.objects.select_for_update().get(pk=account.pk)
    locked.secret_encrypted = ""
    fields = apply_failure(locked, errors.ServerSettingsChanged(protocol="imap"))
    locked.save(update_fields=[*fields, "secret_encrypted"])
    return locked


@transaction.atomic
def pause_account(*, account: EmailAccount) -> EmailAccount:
    """Stop syncing (A7). Synced mail stays."""
    locked = EmailAccount.objects.select_for_update().get(pk=account.pk)
    if locked.state != State.REMOVED:
        locked.state = State.PAUSED
        locked.next_retry_at = None
        locked.save(update_fields=["state", "next_retry_at", "updated_at"])
    return locked


@transaction.atomic
def resume_account(*, account: EmailAccount) -> EmailAccount:
    locked = EmailAccount.objects.select_for_update().get(pk=account.pk)
    if locked.state == State.PAUSED:
        locked.state = State.CONNECTING
        locked.save(update_fields=["state", "updated_at"])
        sync_after_commit(locked.pk)
    return locked


@transaction.atomic
def remove_account(*, account: EmailAccount) -> EmailAccount:
    """A7: stop syncing and forget the credentials; keep the account row, its folders and its messages, so
    adding the mailbox again continues where it was without duplicates."""
    locked = EmailAccount.objects.select_for_update().get(pk=account.pk)
    locked.state = State.REMOVED
    locked.removed_at = timezone.now()
    locked.secret_encrypted = ""
    locked.next_retry_at = None
    locked.save(update_fields=["state", "removed_at", "secret_encrypted", "next_retry_at", "updated_at"])
    # Changes still waiting for this mailbox would surprise whoever adds it again, maybe months later.
    locked.pending_server_actions.all().delete()
    return locked


@transaction.atomic
def reset_folder_sync_state(*, folder: MailFolder) -> MailFolder:
    """Forget a folder's cursors so the next sync rescans it; messages are matched again by their
    message key, so nothing is duplicated (O1)."""
    folder.uidvalidity = None
    folder.uidnext = None
    folder.highestmodseq = None
    folder.initial_synced_at = None
    folder.last_synced_at = None
    folder.save(update_fields=["uidvalidity", "uidnext", "highestmodseq", "initial_synced_at", "last_synced_at"])
    return folder


def run_connection_check(*, account_id: int) -> EmailAccount | None:
    """What the sync task does until the sync engine exists: test the connection and set the state
    (connecting -> initial sync / syncing, or error / needs re-authentication). No mail is fetched."""
    account = EmailAccount.objects.filter(pk=account_id).first()
    if account is None or account.state in {State.PAUSED, State.REMOVED}:
        return account
    try:
        check_account(account)
    except errors.MailError as error:
        return record_connection_failure(account=account, error=error)
    return _mark_connected(account_id=account_id)


@transaction.atomic
def _mark_connected(*, account_id: int) -> EmailAccount:
    locked = EmailAccount.objects.select_for_update().get(pk=account_id)
    fields = [*clear_error(locked), "last_sync_at", "updated_at"]
    locked.last_sync_at = timezone.now()
    if locked.state in {State.CONNECTING, State.ERROR, State.NEEDS_REAUTH}:
        locked.state = State.INITIAL_SYNC if locked.initial_sync_done_at is None else State.SYNCING
        fields.append("state")
    locked.save(update_fields=fields)
    return locked


def reencrypt_all_secrets() -> int:
    """After putting a new key first in MAILSYNC_ENCRYPTION_KEYS: re-encrypt every stored secret with it."""
    count = 0
    for account_id in EmailAccount.objects.exclude(secret_encrypted="").values_list("pk", flat=True):
        with transaction.atomic():
            account = EmailAccount.objects.select_for_update().get(pk=account_id)
            try:
                account.secret_encrypted = crypto.rotate(account.secret_encrypted)
            except crypto.CredentialsUnreadable:
                logger.warning("mail account %s: stored credentials cannot be decrypted with any key", account_id)
                continue
            account.save(update_fields=["secret_encrypted"])
            count += 1
    return count


# --------------------------------------------------------------------------------------------------
# From the "Add account" form to connection settings


@dataclass(frozen=True)
class Resolution:
    """Settings to test, or what the user still has to tell us."""

    account_settings: AccountSettings | None
    preset: providers.ProviderPreset | None
    problem: str = ""  # shown on the form when account_settings is None
    prefill: dict | None = None  # server fields to fill in for the user to confirm
    oauth_only: bool = False  # the provider accepts only OAuth2 sign-in
    smtp_missing: bool = False  # only the SMTP server is missing: the account can be saved without sending


DEFAULT_PORTS = {
    ("imap", "ssl"): 993,
    ("imap", "starttls"): 143,
    ("imap", "none"): 143,
    ("smtp", "ssl"): 465,
    ("smtp", "starttls"): 587,
    ("smtp", "none"): 587,
}


def resolve_account_settings(
    data: dict, *, mx_lookup: providers.MxLookup | None = None, without_sending: bool = False
) -> Resolution:
    """Turn the cleaned "Add account" form into settings: typed servers win; else the chosen or detected
    preset; else ask for the servers. `without_sending`: the owner saves a reading-only account (no SMTP
    server: sending is not set up until they add the account again with one)."""
    resolution = _resolve_account_settings(data, mx_lookup=mx_lookup, without_sending=without_sending)
    if without_sending and resolution.account_settings is not None:
        return dataclasses.replace(
            resolution, account_settings=dataclasses.replace(resolution.account_settings, smtp_host="")
        )
    return resolution


NO_SMTP_PROBLEM = "Enter the SMTP (outgoing) server too, or “Save without sending” below: reading works without it."


def _resolve_account_settings(data: dict, *, mx_lookup, without_sending: bool) -> Resolution:
    address = data["email_address"]
    domain = address.rpartition("@")[2]
    key = data.get("provider") or ""
    username = (data.get("username") or "").strip()
    if key:
        preset = providers.get_preset(key)
    elif data.get("imap_host"):
        preset = providers.CUSTOM
    else:
        preset = providers.detect_provider(address, mx_lookup=mx_lookup).preset
    if data.get("imap_host"):
        if not data.get("smtp_host") and not without_sending:
            return Resolution(None, preset, problem=NO_SMTP_PROBLEM, smtp_missing=True)
        imap_security = data.get("imap_security") or "ssl"
        smtp_security = data.get("smtp_security") or "ssl"
        auth_kind = AuthKind.PASSWORD
        if preset is not None and preset.auth_kind != providers.PASSWORD:
            auth_kind = AuthKind.APP_PASSWORD
        return Resolution(
            AccountSettings(
                email_address=address,
                provider=preset.key if preset is not None else "custom",
                username=username or address,
                auth_kind=auth_kind,
                imap_host=data["imap_host"],
                imap_port=data.get("imap_port") or DEFAULT_PORTS[("imap", imap_security)],
                imap_security=imap_security,
                smtp_host=data["smtp_host"],
                smtp_port=data.get("smtp_port") or DEFAULT_PORTS[("smtp", smtp_security)],
                smtp_security=smtp_security,
                attachment_limit_mb=preset.attachment_limit_mb if preset is not None else 25,
            ),
            preset,
        )
    if preset is None:
        return Resolution(
            None,
            None,
            problem=f"We do not know the mail servers of {domain}. Enter them below: your provider's help "
            "pages list them (look for “IMAP settings”).",
        )
    if preset.needs_servers:
        filled = preset.for_domain(domain)
        if not filled.imap_host:
            return Resolution(None, preset, problem="Enter your IMAP and SMTP servers below.")
        prefill = {
            "imap_host": filled.imap_host,
            "imap_port": filled.imap_port,
            "imap_security": filled.imap_security,
            "smtp_host": filled.smtp_host,
            "smtp_port": filled.smtp_port,
            "smtp_security": filled.smtp_security,
        }
        return Resolution(
            None,
            preset,
            problem=f"For {preset.name} the server names below are our best guess: check them and submit again.",
            prefill=prefill,
        )
    if not preset.password_allowed:
        oauth_provider = oauth.PROVIDERS.get(preset.oauth_provider)
        who = oauth_provider.name if oauth_provider else "your provider"
        return Resolution(
            None, preset, problem=f"{preset.name} accepts only “Connect with {who}”, not a password.", oauth_only=True
        )
    return Resolution(settings_from_preset(preset, email_address=address, username=username), preset)


@transaction.atomic
def connect_oauth_account(*, user: User, tokens: oauth.OAuthTokens, email_address: str) -> EmailAccount:
    """Save a mailbox connected with OAuth2; its connection is tested by the sync task right after."""
    address = email_address.strip().lower()
    if tokens.provider == "google":
        key = "gmail" if address.endswith(("@gmail.com", "@googlemail.com")) else "google_workspace"
    else:
        preset_by_domain = providers.detect_provider(address, mx_lookup=lambda _domain: []).preset
        key = "outlook" if preset_by_domain is not None and preset_by_domain.key == "outlook" else "office365"
    account_settings = settings_from_preset(
        providers.PRESETS_BY_KEY[key], email_address=address, auth_kind=AuthKind.OAUTH2
    )
    return connect_account(user=user, account_settings=account_settings, secret=tokens.to_secret())
