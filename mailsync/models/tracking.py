"""Open and click tracking of mail sent from the CRM (W5): the links a message's clicks go through and what
hit its pixel and links, each event classified (a person, or which machine) with its reason.

Only an OutgoingMessage sent with tracking on has rows here. The endpoints (mailsync.sending.tracking_views)
write at most one TrackingEvent per request; destinations live only here (TrackedLink), so a tracked
URL carries no destination and can never redirect anywhere else (no open redirect).
"""

from django.db import models

from .outgoing import OutgoingMessage


class TrackedLink(models.Model):
    outgoing = models.ForeignKey(OutgoingMessage, on_delete=models.CASCADE, related_name="tracked_links")
    index = models.PositiveSmallIntegerField()
    url = models.TextField()
    # The link's text as the recipient saw it ("pricing"), for "clicked 'pricing'".
    label = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["outgoing", "index"]
        constraints = [models.UniqueConstraint(fields=["outgoing", "index"], name="tracked_link_unique_index")]

    def __str__(self) -> str:
        return self.label or self.url


class TrackingEvent(models.Model):
    class Kind(models.TextChoices):
        OPEN = "open", "Open"
        CLICK = "click", "Click"

    class Verdict(models.TextChoices):
        PERSON = "person", "Likely a person"
        APPLE_PROXY = "apple_proxy", "Apple Mail Privacy Protection"
        GOOGLE_PROXY = "google_proxy", "Google image proxy"
        SCANNER = "scanner", "Security scanner"
        SENDER = "sender", "The sender or a colleague"

    outgoing = models.ForeignKey(OutgoingMessage, on_delete=models.CASCADE, related_name="tracking_events")
    kind = models.CharField(max_length=5, choices=Kind.choices)
    link = models.ForeignKey(TrackedLink, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    occurred_at = models.DateTimeField()
    verdict = models.CharField(max_length=12, choices=Verdict.choices)
    reason = models.CharField(max_length=200)
    user_agent = models.CharField(max_length=300, blank=True)
    # The requester's network, not its address: an IPv4 /24 or an IPv6 /48 is enough to explain a verdict.
    network = models.CharField(max_length=50, blank=True)

    class Meta:
        ordering = ["occurred_at", "pk"]
        indexes = [models.Index(fields=["outgoing", "occurred_at"], name="tracking_event_outgoing_idx")]

    def __str__(self) -> str:
        return f"{self.kind} {self.get_verdict_display()}"
