"""A user's mail accounts: the connection settings, the encrypted secret, the sync state, their addresses
and folders (with the folders' sync cursors)."""

from django.conf import settings
from django.db import models

from . import crypto


class AuthKind(models.TextChoices):
    PASSWORD = "password", "Password"
    APP_PASSWORD = "app_password", "App password"
    OAUTH2 = "oauth2", "OAuth2"


class Security(models.TextChoices):
    SSL = "ssl", "SSL/TLS"
    STARTTLS = "starttls", "STARTTLS"
    NONE = "none", "None (unencrypted)"


class EmailAccount(models.Model):
    class State(models.TextChoices):
        CONNECTING = "connecting", "Connecting"
        INITIAL_SYNC = "initial_sync", "Initial sync"
        SYNCING = "syncing", "Syncing"
        PAUSED = "paused", "Paused"
        NEEDS_REAUTH = "needs_reauth", "Needs re-authentication"
        ERROR = "error", "Error"
        REMOVED = "removed", "Removed"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="email_accounts")
    email_address = models.EmailField(max_length=320)
    display_name = models.CharField(max_length=200, blank=True)
    provider = models.CharField(max_length=40, default="custom")
    username = models.CharField(max_length=320)
    auth_kind = models.CharField(max_length=20, choices=AuthKind.choices, default=AuthKind.PASSWORD)
    imap_host = models.CharField("IMAP host", max_length=253)
    imap_port = models.PositiveIntegerField("IMAP port", default=993)
    imap_security = models.CharField("IMAP security", max_length=10, choices=Security.choices, default=Security.SSL)
    smtp_host = models.CharField("SMTP host", max_length=253, blank=True)
    smtp_port = models.PositiveIntegerField("SMTP port", default=465)
    smtp_security = models.CharField("SMTP security", max_length=10, choices=Security.choices, default=Security.SSL)
    # Fernet token of the password or OAuth token JSON; never rendered, never logged (see crypto.py).
    secret_encrypted = models.TextField(blank=True, editable=False)
    # PEM of a CA an admin chose to trust for a self-hosted server (A4); empty = system CAs only.
    trusted_ca_pem = models.TextField("trusted CA certificate (PEM)", blank=True)
    attachment_limit_mb = models.PositiveIntegerField("attachment limit (MB)", default=25)

    state = models.CharField(max_length=20, choices=State.choices, default=State.CONNECTING, db_index=True)
    last_error_code = models.CharField(max_length=40, blank=True)
    last_error_message = models.TextField(blank=True)
    last_error_fix = models.TextField(blank=True, help_text="What the user should do about the last error")
    # The server's own words (secrets scrubbed), for support staff; not shown to users.
    last_error_detail = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    last_sync_at = models.DateTimeField(null=True, blank=True, help_text="Last sync attempt")
    last_success_at = models.DateTimeField(null=True, blank=True, help_text="Last successful sync")
    consecutive_failures = models.PositiveIntegerField(default=0)
    next_retry_at = models.DateTimeField(null=True, blank=True)
    # Lease that keeps one sync per account at a time where PostgreSQL advisory locks are not available.
    sync_lock_token = models.CharField(max_length=40, blank=True, editable=False)
    sync_lock_expires_at = models.DateTimeField(null=True, blank=True, editable=False)

    # S2: every folder, or only the folders marked selected.
    sync_all_folders = models.BooleanField(default=True)
    initial_sync_days = models.PositiveIntegerField(default=3)
    initial_sync_done_at = models.DateTimeField(null=True, blank=True)
    # S4: past-email sync request and progress.
    past_sync_months = models.PositiveSmallIntegerField(null=True, blank=True)
    past_sync_only_contacts = models.BooleanField(default=False)
    past_sync_state = models.CharField(max_length=20, blank=True)  # "", queued, running, done, error
    past_sync_done = models.PositiveIntegerField(default=0)
    past_sync_total = models.PositiveIntegerField(default=0)
    past_sync_started_at = models.DateTimeField(null=True, blank=True)
    past_sync_finished_at = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    removed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["user", "email_address"]
        constraints = [
            models.UniqueConstraint(fields=["user", "email_address"], name="account_unique_per_user"),
        ]

    def __str__(self) -> str:
        return self.email_address

    @property
    def is_active(self) -> bool:
        return self.state not in {self.State.PAUSED, self.State.REMOVED, self.State.NEEDS_REAUTH}

    def set_secret(self, secret: str) -> None:
        """Encrypt the password / OAuth token JSON into secret_encrypted (the caller saves)."""
        self.secret_encrypted = crypto.encrypt(secret) if secret else ""

    def get_secret(self) -> str:
        """The decrypted secret ("" when none); raises crypto.CredentialsUnreadable after a key change."""
        return crypto.decrypt(self.secret_encrypted) if self.secret_encrypted else ""

    @property
    def has_secret(self) -> bool:
        return bool(self.secret_encrypted)


class AccountAddress(models.Model):
    """Addresses that belong to the account owner (aliases), used to tell sent from received."""

    account = models.ForeignKey(EmailAccount, on_delete=models.CASCADE, related_name="addresses")
    address = models.EmailField(max_length=320)

    class Meta:
        verbose_name_plural = "account addresses"
        constraints = [models.UniqueConstraint(fields=["account", "address"], name="account_address_unique")]

    def __str__(self) -> str:
        return self.address


class MailFolder(models.Model):
    class Role(models.TextChoices):
        INBOX = "inbox", "Inbox"
        SENT = "sent", "Sent"
        ARCHIVE = "archive", "Archive"
        TRASH = "trash", "Trash"
        JUNK = "junk", "Junk"
        DRAFTS = "drafts", "Drafts"
        ALL = "all", "All mail"
        OTHER = "", "Other"

    account = models.ForeignKey(EmailAccount, on_delete=models.CASCADE, related_name="folders")
    name = models.CharField(max_length=500, help_text="Server name (decoded)")
    delimiter = models.CharField(max_length=4, blank=True)
    role = models.CharField(max_length=10, choices=Role.choices, blank=True, default="")
    selected = models.BooleanField(default=True, help_text="Synced when the account syncs selected folders only")
    exists_on_server = models.BooleanField(default=True)
    noselect = models.BooleanField(default=False)
    uidvalidity = models.BigIntegerField("UIDVALIDITY", null=True, blank=True)
    uidnext = models.BigIntegerField("UIDNEXT", null=True, blank=True)
    highestmodseq = models.BigIntegerField("HIGHESTMODSEQ", null=True, blank=True)
    # Set when the initial window (the last N days) of this folder has been synced; until then the
    # window is searched again on every run, skipping UIDs already stored (crash-safe, idempotent).
    initial_synced_at = models.DateTimeField(null=True, blank=True)
    message_count = models.PositiveIntegerField(default=0, help_text="MESSAGES on the server at the last sync")
    last_synced_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["account", "name"]
        constraints = [models.UniqueConstraint(fields=["account", "name"], name="folder_unique_per_account")]

    def __str__(self) -> str:
        return self.name
