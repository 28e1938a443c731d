"""Delivery failures: what bounce reports (received mail, see mailsync.sync.bounces) say about sent mail.

One row per failed recipient of one report. `sent_message` is the owner's message the report is about,
found by the Message-ID the report encloses (else the recipient and the subject); it stays empty while
that message is not stored yet (its copy may be synced after the report) and is filled in when it comes.
Rows go with the report (CASCADE): the report itself is never deleted by the CRM.
"""

from django.conf import settings
from django.db import models
from django.db.models import Q

from .mail import EmailMessage


class DeliveryFailure(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    report = models.ForeignKey(EmailMessage, on_delete=models.CASCADE, related_name="reported_failures")
    sent_message = models.ForeignKey(
        EmailMessage, null=True, blank=True, on_delete=models.SET_NULL, related_name="bounces"
    )
    recipient = models.CharField(max_length=320)
    # True: the server gave up for good (5.x.x: "bounced"); False: a temporary problem (4.x.x: "delayed").
    permanent = models.BooleanField(default=True)
    status = models.CharField(max_length=12, blank=True, help_text="Enhanced status code, e.g. 5.1.1")
    action = models.CharField(max_length=20, blank=True, help_text="failed / delayed (RFC 3464)")
    diagnostic = models.TextField(blank=True)
    original_message_id = models.CharField(max_length=998, blank=True)
    original_subject = models.TextField(blank=True)
    reported_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-reported_at", "-pk"]
        constraints = [models.UniqueConstraint(fields=["report", "recipient"], name="delivery_failure_unique")]
        indexes = [
            models.Index(
                fields=["owner", "original_message_id"],
                condition=Q(sent_message__isnull=True),
                name="delivery_failure_unmatched_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.recipient}: {self.status or ('bounced' if self.permanent else 'delayed')}"

    @property
    def still_retrying(self) -> bool:
        """A delay notice (the server keeps trying), as opposed to a failure it gave up on."""
        return not self.permanent and self.action != "failed"

    @property
    def label(self) -> str:
        if self.permanent:
            return "Bounced"
        return "Delayed" if self.still_retrying else "Not delivered (temporary problem)"
