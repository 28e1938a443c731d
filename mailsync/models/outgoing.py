"""Mail written in the CRM: drafts and the messages on their way out (mailsync.sending writes them).

An OutgoingMessage is a draft until the user sends it. Queueing fixes its Message-ID and its MIME bytes
(`mime`) in the same transaction that changes the state, before anything leaves, so every later attempt
sends exactly those bytes and the Sent copy, the copy a sync finds and the CRM's own record of it are
one message. States: draft -> queued -> sending -> sent, or failed (with the reason and Retry).
Only the owner (the user of `account`) ever reads or changes one.
"""

from django.conf import settings
from django.db import models
from django.db.models import Q

from .accounts import EmailAccount
from .filenames import display_filename
from .mail import EmailMessage


class OutgoingMessage(models.Model):
    class State(models.TextChoices):
        DRAFT = "draft", "Draft"
        QUEUED = "queued", "Queued"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"

    class Kind(models.TextChoices):
        NEW = "new", "New message"
        REPLY = "reply", "Reply"
        REPLY_ALL = "reply_all", "Reply all"
        FORWARD = "forward", "Forward"

    class SentCopy(models.TextChoices):
        PENDING = "", "Not filed yet"
        PROVIDER = "provider", "Filed by the provider"
        FOUND = "found", "Found in Sent"
        APPENDED = "appended", "Added to Sent"
        NO_FOLDER = "no_folder", "No Sent folder"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="outgoing_messages")
    account = models.ForeignKey(EmailAccount, on_delete=models.CASCADE, related_name="outgoing_messages")
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.NEW)
    # The message replied to or forwarded, and the thread a reply lands in.
    source_message = models.ForeignKey(EmailMessage, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    to_addresses = models.TextField("To", blank=True)
    cc_addresses = models.TextField("Cc", blank=True)
    bcc_addresses = models.TextField("Bcc", blank=True)
    subject = models.CharField(max_length=998, blank=True)
    # Sanitised (nh3) on every save; inline images point at their OutgoingAttachment until queued.
    body_html = models.TextField("HTML body", blank=True)
    # The original of a reply / forward, quoted below the body (sanitised, shown collapsed).
    quoted_html = models.TextField(blank=True)
    # The line above the quote: "On <date>, <name> wrote:", or the forwarded message's headers.
    quote_header = models.TextField(blank=True)
    # The record the conversation is started from (an "Email" action on a record page).
    person = models.ForeignKey("contacts.Person", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    organization = models.ForeignKey(
        "contacts.Organization", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    deal = models.ForeignKey("deals.Deal", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    lead = models.ForeignKey("leads.Lead", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    project = models.ForeignKey("projects.Project", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    state = models.CharField(max_length=10, choices=State.choices, default=State.DRAFT, db_index=True)
    # The user saved something in the draft (typed, attached): an untouched one is not listed as a draft.
    edited = models.BooleanField(default=False)
    # Not sent before this time: the undo window, or "send later".
    send_at = models.DateTimeField(null=True, blank=True)
    send_later = models.BooleanField(default=False)
    queued_at = models.DateTimeField(null=True, blank=True)
    sending_started_at = models.DateTimeField(null=True, blank=True)
    # The server accepted the DATA: the message has left (recorded at once, before anything else).
    delivered_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    # Fixed when queued (without <>), with the bytes every attempt sends.
    message_id = models.CharField("Message-ID", max_length=998, blank=True, db_index=True)
    mime = models.BinaryField(null=True, blank=True, editable=False)
    envelope_recipients = models.JSONField(default=list, blank=True)
    error_code = models.CharField(max_length=40, blank=True)
    error_message = models.TextField(blank=True)
    error_fix = models.TextField(blank=True)
    # The server's words (secrets scrubbed), for support staff.
    error_detail = models.TextField(blank=True)
    # Recipients the server refused while it took the others: [{"address", "code", "reason"}].
    refused_recipients = models.JSONField(default=list, blank=True)
    sent_copy = models.CharField(max_length=10, choices=SentCopy.choices, blank=True, default="")
    # Open and click tracking (W5), chosen in the composer (default: MailSettings.track_by_default). When on,
    # queueing rewrites the links and adds the pixel (models.tracking). `sender_ip`: where the sender queued
    # it from, so that their own opens from that address are told apart.
    tracking = models.BooleanField(default=False)
    sender_ip = models.GenericIPAddressField(null=True, blank=True)
    # The message as the CRM stores it once sent (the same identity the next sync finds).
    sent_message = models.ForeignKey(EmailMessage, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at", "-pk"]
        indexes = [
            models.Index(fields=["owner", "state", "-updated_at"], name="outgoing_owner_state_idx"),
            models.Index(fields=["send_at"], condition=Q(state__in=["queued", "sending"]), name="outgoing_due_idx"),
        ]

    def __str__(self) -> str:
        return self.subject or "(no subject)"


class OutgoingAttachment(models.Model):
    """A file of an outgoing message: an attachment, or an inline image (sent as a cid: part)."""

    message = models.ForeignKey(OutgoingMessage, on_delete=models.CASCADE, related_name="attachments")
    filename = models.CharField(max_length=255)
    content_type = models.CharField(max_length=200, default="application/octet-stream")
    size = models.PositiveIntegerField(default=0)
    is_inline = models.BooleanField(default=False)
    content_id = models.CharField("Content-ID", max_length=200, blank=True)
    file = models.FileField(upload_to="outgoing/%Y/%m/", max_length=500)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["pk"]

    def __str__(self) -> str:
        return self.display_name

    @property
    def display_name(self) -> str:
        return display_filename(self.filename)
