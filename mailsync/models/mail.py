"""The mail itself: threads, messages (one per distinct message of an account), their copies on the server
(MessageLocation), participants, attachments and the references threading follows."""

from django.conf import settings
from django.db import models
from django.db.models import Q

from .accounts import EmailAccount, MailFolder
from .filenames import display_filename


class EmailThread(models.Model):
    """A conversation in one user's mailbox(es). Visibility is per thread (P1-P3)."""

    class Visibility(models.TextChoices):
        PRIVATE = "private", "Private"
        SHARED = "shared", "Shared with the company"

    # Indexes: (owner, last_message_at) serves owner lookups; none written twice per new thread (issue 18).
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="email_threads", db_index=False
    )
    subject = models.CharField(max_length=998, blank=True)
    normalized_subject = models.CharField(max_length=998, blank=True)
    visibility = models.CharField(max_length=10, choices=Visibility.choices, default=Visibility.PRIVATE)
    first_message_at = models.DateTimeField(null=True, blank=True)
    last_message_at = models.DateTimeField(null=True, blank=True, db_index=True)
    message_count = models.PositiveIntegerField(default=0)
    provider_thread_id = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-last_message_at", "-pk"]
        indexes = [
            models.Index(fields=["owner", "-last_message_at"], name="thread_owner_recent_idx"),
            models.Index(fields=["normalized_subject"], name="thread_normalized_subject_idx"),
        ]

    def __str__(self) -> str:
        return self.subject or "(no subject)"

    def get_absolute_url(self) -> str:
        from django.urls import reverse

        return reverse("mailsync:thread_detail", args=[self.pk])


class Mailbox(models.TextChoices):
    """The lists of the mail workspace. "bulk": newsletters and list mail that would be in the Inbox;
    "reports": delivery failure reports (bounces) that would be in the Inbox;
    "other": only in Junk / Drafts; "": not placed yet."""

    INBOX = "inbox", "Inbox"
    SENT = "sent", "Sent"
    ARCHIVE = "archive", "Archive"
    TRASH = "trash", "Trash"
    BULK = "bulk", "Bulk"
    REPORTS = "reports", "Delivery reports"
    OTHER = "other", "Other"


class EmailMessage(models.Model):
    class Direction(models.TextChoices):
        RECEIVED = "received", "Received"
        SENT = "sent", "Sent"

    # No index of their own: the (account, date) and (thread, date) indexes below serve those lookups,
    # and every index is written for every message an initial sync stores (issue 18).
    account = models.ForeignKey(EmailAccount, on_delete=models.CASCADE, related_name="messages", db_index=False)
    thread = models.ForeignKey(EmailThread, on_delete=models.CASCADE, related_name="messages", db_index=False)
    message_key = models.CharField(max_length=64, help_text="sha256 of Message-ID, or of a fallback fingerprint")
    # parsing.content_fingerprint of the first copy stored; "" for mail stored before fingerprints
    # existed (ingestion fills it in from the next copy it meets).
    content_hash = models.CharField(max_length=64, blank=True, default="")
    message_id = models.CharField("Message-ID", max_length=998, blank=True)
    in_reply_to = models.CharField(max_length=998, blank=True)
    references = models.TextField(blank=True)
    subject = models.TextField(blank=True)
    from_name = models.CharField(max_length=300, blank=True)
    from_address = models.CharField(max_length=320, blank=True)
    date = models.DateTimeField(null=True, blank=True, help_text="Date header, or arrival when missing")
    internal_date = models.DateTimeField(null=True, blank=True)
    snippet = models.CharField(max_length=300, blank=True)
    body_text = models.TextField(blank=True)
    body_html = models.TextField("HTML body", blank=True, help_text="Sanitised HTML")
    # Its distinct search words, space-separated (parsing.search_terms_of), from which the search
    # documents of its list rows are built; NULL for mail stored before they existed or not parsed
    # from bytes (mailsync.mailboxes.search then reads its words from the text above).
    search_terms = models.TextField(null=True, blank=True, editable=False)
    has_remote_images = models.BooleanField(default=False)
    direction = models.CharField(max_length=10, choices=Direction.choices, default=Direction.RECEIVED)
    size = models.PositiveIntegerField(default=0)
    has_attachments = models.BooleanField(default=False)
    recipient_count = models.PositiveIntegerField(default=0)
    is_read = models.BooleanField(default=False)
    is_flagged = models.BooleanField(default=False)
    is_draft = models.BooleanField(default=False)
    # Newsletters and list mail (List-Id, List-Unsubscribe, Precedence: bulk): listed in Bulk, not the Inbox.
    is_bulk = models.BooleanField(default=False, db_default=False)
    # A delivery failure report (bounce): listed in Delivery reports, not the Inbox (DeliveryFailure rows).
    is_delivery_report = models.BooleanField(default=False, db_default=False)
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
            # Blocked mail is rare: ingestion asks "any blocked message in these threads?" for every
            # batch, which without this read the whole table (issue 18).
            models.Index(fields=["thread"], condition=Q(is_blocked=True), name="message_blocked_thread_idx"),
            # Equality only (db_index=True also made a LIKE index of each on PostgreSQL, never used).
            models.Index(fields=["message_id"], name="message_message_id_idx"),
            models.Index(fields=["from_address"], name="message_from_address_idx"),
        ]

    def __str__(self) -> str:
        return self.subject or "(no subject)"


class ThreadReference(models.Model):
    """Every Message-ID an owner's mail carries or refers to (own id, In-Reply-To, References) -> thread.

    Written by ingestion (mailsync/threads.py). It lets a reply that arrives before its parent, or two
    replies to a message that is not in the mailbox, land in the same thread (JWZ-style placeholders).
    """

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", db_index=False)
    key = models.CharField(max_length=64, help_text="sha256 of the normalised Message-ID")
    thread = models.ForeignKey(EmailThread, on_delete=models.CASCADE, related_name="message_refs")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["owner", "key"], name="threadref_unique_per_owner")]

    def __str__(self) -> str:
        return f"{self.key[:12]} -> {self.thread_id}"


class MessageLocation(models.Model):
    """Where a message lives on the server: one row per (folder, uidvalidity, uid)."""

    # Indexed by location_message_idx and location_unique_uid (folder first), not by indexes of their own.
    message = models.ForeignKey(EmailMessage, on_delete=models.CASCADE, related_name="locations", db_index=False)
    folder = models.ForeignKey(MailFolder, on_delete=models.CASCADE, related_name="locations", db_index=False)
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


class MessageParticipant(models.Model):
    class Role(models.TextChoices):
        FROM = "from", "From"
        SENDER = "sender", "Sender"
        REPLY_TO = "reply_to", "Reply-To"
        TO = "to", "To"
        CC = "cc", "Cc"
        BCC = "bcc", "Bcc"

    message = models.ForeignKey(EmailMessage, on_delete=models.CASCADE, related_name="participants", db_index=False)
    role = models.CharField(max_length=10, choices=Role.choices)
    address = models.CharField(max_length=320)
    name = models.CharField(max_length=300, blank=True)

    class Meta:
        # (message, role) serves lookups by message; addresses are looked up whole (no LIKE index).
        indexes = [
            models.Index(fields=["message", "role"], name="participant_message_role_idx"),
            models.Index(fields=["address"], name="participant_address_idx"),
        ]

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
        """The file name as shown: bidi controls and invisible characters removed (filenames.display_filename)."""
        return display_filename(self.filename)
