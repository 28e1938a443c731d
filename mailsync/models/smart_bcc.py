"""Smart BCC (mailsync.inbound): personal addresses, confirmed senders and the deliveries received."""

from django.conf import settings
from django.db import models
from django.db.models import Q

from .mail import EmailMessage

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
