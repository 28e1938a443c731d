"""Mail sync data: accounts, folders, messages (with their server locations), threads and links.

Identity rules (see DESIGN.md "Rules that keep mail safe" and mailsync.ingest):
- a message is unique per account by (`message_key`, `content_hash`): the hash of its Message-ID (or of
  date+from+subject+size) and a fingerprint of its content that ignores line endings and trace headers.
  Different messages that reuse a Message-ID are stored apart; copies of one message are one row;
- a copy of it on the server is unique by (folder, uidvalidity, uid) in MessageLocation;
so the same mail in two folders is one EmailMessage with two locations, and re-running a sync is an upsert.
"""

from django.conf import settings
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVectorField
from django.db import models
from django.db.models import Q


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
        from . import crypto

        self.secret_encrypted = crypto.encrypt(secret) if secret else ""

    def get_secret(self) -> str:
        """The decrypted secret ("" when none); raises crypto.CredentialsUnreadable after a key change."""
        from . import crypto

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


class EmailThread(models.Model):
    """A conversation in one user's mailbox(es). Visibility is per thread (P1-P3)."""

    class Visibility(models.TextChoices):
        PRIVATE = "private", "Private"
        SHARED = "shared", "Shared with the company"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="email_threads")
    subject = models.CharField(max_length=998, blank=True)
    normalized_subject = models.CharField(max_length=998, blank=True, db_index=True)
    visibility = models.CharField(max_length=10, choices=Visibility.choices, default=Visibility.PRIVATE)
    first_message_at = models.DateTimeField(null=True, blank=True)
    last_message_at = models.DateTimeField(null=True, blank=True, db_index=True)
    message_count = models.PositiveIntegerField(default=0)
    provider_thread_id = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-last_message_at", "-pk"]
        indexes = [models.Index(fields=["owner", "-last_message_at"], name="thread_owner_recent_idx")]

    def __str__(self) -> str:
        return self.subject or "(no subject)"

    def get_absolute_url(self) -> str:
        from django.urls import reverse

        return reverse("mailsync:thread_detail", args=[self.pk])


class Mailbox(models.TextChoices):
    """The lists of the mail workspace. "other": only in Junk / Drafts; "": not placed yet."""

    INBOX = "inbox", "Inbox"
    SENT = "sent", "Sent"
    ARCHIVE = "archive", "Archive"
    TRASH = "trash", "Trash"
    OTHER = "other", "Other"


class EmailMessage(models.Model):
    class Direction(models.TextChoices):
        RECEIVED = "received", "Received"
        SENT = "sent", "Sent"

    account = models.ForeignKey(EmailAccount, on_delete=models.CASCADE, related_name="messages")
    thread = models.ForeignKey(EmailThread, on_delete=models.CASCADE, related_name="messages")
    message_key = models.CharField(max_length=64, help_text="sha256 of Message-ID, or of a fallback fingerprint")
    # parsing.content_fingerprint of the first copy stored; "" for mail stored before fingerprints
    # existed (ingestion fills it in from the next copy it meets).
    content_hash = models.CharField(max_length=64, blank=True, default="")
    message_id = models.CharField("Message-ID", max_length=998, blank=True, db_index=True)
    in_reply_to = models.CharField(max_length=998, blank=True)
    references = models.TextField(blank=True)
    subject = models.TextField(blank=True)
    from_name = models.CharField(max_length=300, blank=True)
    from_address = models.CharField(max_length=320, blank=True, db_index=True)
    date = models.DateTimeField(null=True, blank=True, help_text="Date header, or arrival when missing")
    internal_date = models.DateTimeField(null=True, blank=True)
    snippet = models.CharField(max_length=300, blank=True)
    body_text = models.TextField(blank=True)
    body_html = models.TextField("HTML body", blank=True, help_text="Sanitised HTML")
    has_remote_images = models.BooleanField(default=False)
    direction = models.CharField(max_length=10, choices=Direction.choices, default=Direction.RECEIVED)
    size = models.PositiveIntegerField(default=0)
    has_attachments = models.BooleanField(default=False)
    recipient_count = models.PositiveIntegerField(default=0)
    is_read = models.BooleanField(default=False)
    is_flagged = models.BooleanField(default=False)
    is_draft = models.BooleanField(default=False)
    # Hidden by the owner's blocked addresses (F1); recomputed when the block list changes.
    is_blocked = models.BooleanField(default=False)
    # Archived / deleted in the CRM (S5, S6, L6). Deleted messages disappear from every surface.
    is_archived = models.BooleanField(default=False)
    # The user moved it back to the inbox in the CRM: shown in the inbox wherever the server keeps it.
    restored_to_inbox = models.BooleanField(default=False)
    # Which list it shows in (Inbox, Sent, Archive, Trash), from its folders and the CRM state above;
    # maintained by mailsync.mailbox.refresh_mailboxes only.
    mailbox = models.CharField(max_length=10, choices=Mailbox.choices, blank=True, default="")
    deleted_at = models.DateTimeField(null=True, blank=True)
    # "user": deleted in the CRM (stays deleted); "server": gone from every synced folder (comes back
    # if it shows up again, e.g. moved into a folder that is synced later).
    deletion_source = models.CharField(max_length=10, blank=True)
    # Set when the message lost its last server copy (moved, expunged, folder reset / renamed / deleted).
    # The sync marks it deleted only once a complete listing of every synced folder has no copy of it
    # (mailsync.sync), and clears this when a copy is found again.
    unlocated_since = models.DateTimeField(null=True, blank=True)
    # Kept raw when parsing failed; the reason is shown to support staff.
    parse_error = models.TextField(blank=True)
    raw = models.FileField(upload_to="raw/%Y/%m/", blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-date", "-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["account", "message_key", "content_hash"], name="message_unique_content_per_account"
            ),
        ]
        indexes = [
            models.Index(fields=["thread", "date"], name="message_thread_date_idx"),
            models.Index(fields=["account", "-date"], name="message_account_date_idx"),
            models.Index(fields=["account"], condition=Q(unlocated_since__isnull=False), name="message_unlocated_idx"),
        ]

    def __str__(self) -> str:
        return self.subject or "(no subject)"


class ThreadReference(models.Model):
    """Every Message-ID an owner's mail carries or refers to (own id, In-Reply-To, References) -> thread.

    Written by ingestion (mailsync/threads.py). It lets a reply that arrives before its parent, or two
    replies to a message that is not in the mailbox, land in the same thread (JWZ-style placeholders).
    """

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=64, help_text="sha256 of the normalised Message-ID")
    thread = models.ForeignKey(EmailThread, on_delete=models.CASCADE, related_name="message_refs")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["owner", "key"], name="threadref_unique_per_owner")]

    def __str__(self) -> str:
        return f"{self.key[:12]} -> {self.thread_id}"


class MessageLocation(models.Model):
    """Where a message lives on the server: one row per (folder, uidvalidity, uid)."""

    message = models.ForeignKey(EmailMessage, on_delete=models.CASCADE, related_name="locations")
    folder = models.ForeignKey(MailFolder, on_delete=models.CASCADE, related_name="locations")
    uidvalidity = models.BigIntegerField("UIDVALIDITY")
    uid = models.BigIntegerField("UID")
    flags = models.CharField(max_length=500, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["folder", "uidvalidity", "uid"], name="location_unique_uid"),
        ]
        indexes = [models.Index(fields=["message"], name="location_message_idx")]

    def __str__(self) -> str:
        return f"{self.folder_id}:{self.uidvalidity}:{self.uid}"


class MailboxEntry(models.Model):
    """One row per (thread, mailbox) that holds at least one visible message of the thread's owner.

    The Inbox / Sent / Archive / Trash lists and their counts read only this table (one indexed query
    on 200k messages). Derived data: mailsync.mailbox.refresh_mailboxes rebuilds the rows of any thread
    whose messages change (placement, read state, deletion, blocking), so it is never edited by hand.
    """

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    thread = models.ForeignKey(EmailThread, on_delete=models.CASCADE, related_name="mailbox_entries")
    mailbox = models.CharField(max_length=10, choices=Mailbox.choices)
    latest_date = models.DateTimeField(help_text="Date of the thread's latest visible message in this mailbox")
    latest_message = models.ForeignKey(EmailMessage, on_delete=models.CASCADE, related_name="+")
    message_count = models.PositiveIntegerField(default=0, help_text="Visible messages in this mailbox")
    unread_count = models.PositiveIntegerField(default=0, help_text="Unread visible messages in this mailbox")
    thread_message_count = models.PositiveIntegerField(default=0, help_text="Visible messages in the thread")
    has_attachments = models.BooleanField(default=False)

    class Meta:
        verbose_name_plural = "mailbox entries"
        constraints = [models.UniqueConstraint(fields=["thread", "mailbox"], name="mailbox_entry_unique")]
        indexes = [
            models.Index(fields=["owner", "mailbox", "-latest_date", "-thread"], name="mailbox_entry_list_idx"),
            models.Index(
                fields=["owner", "mailbox", "-latest_date", "-thread"],
                condition=Q(unread_count__gt=0),
                name="mailbox_entry_unread_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.thread_id} in {self.mailbox}"


class MailboxSearchDocument(models.Model):
    """Full-text document of one list row: the subjects, participants' names and addresses and bodies of
    the conversation's visible messages in that mailbox. Search in a list is then one table and a GIN
    index, whether a word is rare (the index) or common (the list order, stopping after a page).

    PostgreSQL only (a tsvector, `simple` configuration: mail is multilingual, and stemming for one
    language surprises the others). Other databases fall back to substring search, and this table does
    not exist there (required_db_vendor). Hence no cascade and no constraint: deleting a list row on
    SQLite must not look for its document. mailsync.mailbox writes the documents and removes those of
    deleted rows (index_for_search, rebuild_all).
    """

    entry = models.OneToOneField(
        MailboxEntry,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        primary_key=True,
        related_name="search_document",
    )
    document = SearchVectorField()

    class Meta:
        required_db_vendor = "postgresql"
        indexes = [GinIndex(fields=["document"], name="mailbox_search_gin_idx")]

    def __str__(self) -> str:
        return f"search document of {self.entry_id}"


class MessageParticipant(models.Model):
    class Role(models.TextChoices):
        FROM = "from", "From"
        SENDER = "sender", "Sender"
        REPLY_TO = "reply_to", "Reply-To"
        TO = "to", "To"
        CC = "cc", "Cc"
        BCC = "bcc", "Bcc"

    message = models.ForeignKey(EmailMessage, on_delete=models.CASCADE, related_name="participants")
    role = models.CharField(max_length=10, choices=Role.choices)
    address = models.CharField(max_length=320, db_index=True)
    name = models.CharField(max_length=300, blank=True)

    class Meta:
        indexes = [models.Index(fields=["message", "role"], name="participant_message_role_idx")]

    def __str__(self) -> str:
        return f"{self.role}: {self.address}"


class Attachment(models.Model):
    message = models.ForeignKey(EmailMessage, on_delete=models.CASCADE, related_name="attachments")
    filename = models.CharField(max_length=500, blank=True)
    content_type = models.CharField(max_length=200, default="application/octet-stream")
    size = models.PositiveIntegerField(default=0)
    content_id = models.CharField("Content-ID", max_length=500, blank=True)
    is_inline = models.BooleanField(default=False)
    file = models.FileField(upload_to="attachments/%Y/%m/", max_length=500)

    def __str__(self) -> str:
        return self.display_name

    @property
    def display_name(self) -> str:
        """The file name as shown: bidi controls and invisible characters removed (display.display_filename)."""
        from .display import display_filename

        return display_filename(self.filename)


class ThreadLink(models.Model):
    """A thread linked to exactly one CRM record, with the rule that made the link.

    state=linked shows on timelines; state=suggested is offered in the thread view; state=unlinked
    is a sticky "do not link" (L5) that automatic linking respects for the whole thread.
    """

    class State(models.TextChoices):
        LINKED = "linked", "Linked"
        SUGGESTED = "suggested", "Suggested"
        UNLINKED = "unlinked", "Unlinked by a user"

    thread = models.ForeignKey(EmailThread, on_delete=models.CASCADE, related_name="links")
    person = models.ForeignKey("contacts.Person", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    organization = models.ForeignKey(
        "contacts.Organization", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    deal = models.ForeignKey("deals.Deal", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    lead = models.ForeignKey("leads.Lead", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    project = models.ForeignKey("projects.Project", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    state = models.CharField(max_length=10, choices=State.choices, default=State.LINKED)
    rule = models.CharField(max_length=40, help_text="Why the link exists, e.g. person_address, manual")
    reason = models.CharField(max_length=300, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(
                    Q(person__isnull=False, organization=None, deal=None, lead=None, project=None)
                    | Q(person=None, organization__isnull=False, deal=None, lead=None, project=None)
                    | Q(person=None, organization=None, deal__isnull=False, lead=None, project=None)
                    | Q(person=None, organization=None, deal=None, lead__isnull=False, project=None)
                    | Q(person=None, organization=None, deal=None, lead=None, project__isnull=False)
                ),
                name="threadlink_exactly_one_target",
            ),
            models.UniqueConstraint(fields=["thread", "person"], condition=Q(person__isnull=False), name="tl_person"),
            models.UniqueConstraint(
                fields=["thread", "organization"], condition=Q(organization__isnull=False), name="tl_org"
            ),
            models.UniqueConstraint(fields=["thread", "deal"], condition=Q(deal__isnull=False), name="tl_deal"),
            models.UniqueConstraint(fields=["thread", "lead"], condition=Q(lead__isnull=False), name="tl_lead"),
            models.UniqueConstraint(
                fields=["thread", "project"], condition=Q(project__isnull=False), name="tl_project"
            ),
        ]
        indexes = [
            models.Index(fields=["person", "state"], name="tl_person_state_idx"),
            models.Index(fields=["organization", "state"], name="tl_org_state_idx"),
            models.Index(fields=["deal", "state"], name="tl_deal_state_idx"),
            models.Index(fields=["lead", "state"], name="tl_lead_state_idx"),
            models.Index(fields=["project", "state"], name="tl_project_state_idx"),
        ]

    def __str__(self) -> str:
        target = self.person or self.organization or self.deal or self.lead or self.project
        return f"{self.thread_id} -> {target} ({self.state}, {self.rule})"


class MailSettings(models.Model):
    """Per-user mail preferences."""

    class LinkingMode(models.TextChoices):
        AUTOMATIC = "automatic", "Automatic"
        MANUAL = "manual", "Manual (suggestions only)"

    class LinkPreference(models.TextChoices):
        CRM = "crm", "Open the CRM composer"
        MAILTO = "mailto", "Open my computer's mail application"

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="mail_settings")
    linking_mode = models.CharField(max_length=10, choices=LinkingMode.choices, default=LinkingMode.AUTOMATIC)
    default_visibility = models.CharField(
        max_length=10, choices=EmailThread.Visibility.choices, default=EmailThread.Visibility.PRIVATE
    )
    apply_actions_on_server = models.BooleanField(
        default=False, help_text="Also archive / delete in my mail account (S5)"
    )
    email_link_preference = models.CharField(max_length=10, choices=LinkPreference.choices, default=LinkPreference.CRM)

    class Meta:
        verbose_name_plural = "mail settings"

    def __str__(self) -> str:
        return f"Mail settings of {self.user}"


class PendingServerAction(models.Model):
    """A bulk action still to be repeated in the mail account (mailsync.actions): an outbox row written in
    the same transaction as the CRM change. The task after the commit and every sync (before it reads the
    server's flags and folders) replay an account's rows in order; a row goes once the server has it. So
    a crash after the commit, a paused account, one needing re-authentication or a dead server delay the
    change and never lose it, and a sync cannot undo a read / unread the server has not heard of yet."""

    account = models.ForeignKey(EmailAccount, on_delete=models.CASCADE, related_name="pending_server_actions")
    action = models.CharField(max_length=10)
    message_ids = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["pk"]

    def __str__(self) -> str:
        return f"{self.action} x{len(self.message_ids)} on account {self.account_id}"


class BlockedAddress(models.Model):
    """An exact address or a whole domain ("@example.com") whose mail is hidden (F1)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="blocked_addresses")
    pattern = models.CharField(max_length=320)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "blocked addresses"
        ordering = ["pattern"]
        constraints = [models.UniqueConstraint(fields=["user", "pattern"], name="blocked_unique_per_user")]

    def __str__(self) -> str:
        return self.pattern


# --- Smart BCC (mailsync.inbound) -----------------------------------------------------------------------


class SmartBccAddress(models.Model):
    """A user's personal Smart BCC address, `<local_part>@<MAILSYNC_SMART_BCC_DOMAIN>` (B1).

    One active address per user; "new address" retires the active one (retired_at), and mail to a retired
    address is refused, so an address that leaked stops working. Retired rows stay to explain refusals."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="smart_bcc_addresses")
    local_part = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["user"], condition=Q(retired_at__isnull=True), name="smart_bcc_one_active_address"
            ),
        ]

    def __str__(self) -> str:
        return self.local_part


class SmartBccSender(models.Model):
    """An alternate address the user sends from (B2). Accepted only once confirmed through the signed link
    emailed to it. The login address and the addresses of connected accounts need no row."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="smart_bcc_senders")
    address = models.CharField(max_length=320)
    created_at = models.DateTimeField(auto_now_add=True)
    confirmation_sent_at = models.DateTimeField(null=True, blank=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["address"]
        constraints = [models.UniqueConstraint(fields=["user", "address"], name="smart_bcc_sender_unique")]

    def __str__(self) -> str:
        return self.address


class SmartBccDelivery(models.Model):
    """One message that reached a Smart BCC address: filed (-> the stored EmailMessage, shown "via Smart
    BCC") or not filed, with the reason the user sees under "Not filed"."""

    class Status(models.TextChoices):
        FILED = "filed", "Filed"
        NOT_FILED = "not_filed", "Not filed"

    class Reason(models.TextChoices):
        NONE = "", "-"
        UNKNOWN_SENDER = "unknown_sender", "Sent from an address that is not one of yours"
        UNCONFIRMED_SENDER = "unconfirmed_sender", "Sent from an alternate address that is not confirmed yet"
        FAILED_AUTHENTICATION = "failed_authentication", "Failed both SPF and DKIM: the sender may be forged"
        RETIRED_ADDRESS = "retired_address", "Sent to a Smart BCC address you replaced"
        UNREADABLE = "unreadable", "The message could not be read"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    address = models.ForeignKey(SmartBccAddress, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    message = models.ForeignKey(
        EmailMessage, null=True, blank=True, on_delete=models.CASCADE, related_name="smart_bcc_deliveries"
    )
    status = models.CharField(max_length=10, choices=Status.choices)
    reason = models.CharField(max_length=30, choices=Reason.choices, blank=True, default="")
    channel = models.CharField(max_length=20, help_text="mailgun, postmark, sendgrid, amazon_ses or smtp")
    event_id = models.CharField(max_length=200, blank=True, help_text="The provider's id of the delivery")
    from_address = models.CharField(max_length=320, blank=True)
    subject = models.CharField(max_length=300, blank=True)
    message_id_header = models.CharField(max_length=998, blank=True)
    envelope_sender = models.CharField(max_length=320, blank=True)
    spf = models.CharField(max_length=20, blank=True, help_text="SPF result for the From domain, as reported")
    dkim = models.CharField(max_length=20, blank=True, help_text="DKIM result for the From domain, as reported")
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-received_at", "-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "message"], condition=Q(message__isnull=False), name="smart_bcc_filed_once"
            ),
        ]
        indexes = [models.Index(fields=["user", "status", "-received_at"], name="smart_bcc_delivery_list_idx")]

    def __str__(self) -> str:
        return f"{self.status}: {self.subject or '(no subject)'}"
