"""A user's mail preferences (linking mode, default sharing, email links, server actions)."""

from django.conf import settings
from django.db import models

from .mail import EmailThread


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
    # The composer's "Track opens and clicks" starts ticked (W5).
    track_by_default = models.BooleanField("track opens and clicks of new messages", default=False)
    # The sender's smart fields beside the name and address of their login (W3).
    sender_job_title = models.CharField("your job title", max_length=150, blank=True)
    sender_phone = models.CharField("your phone", max_length=50, blank=True)

    class Meta:
        verbose_name_plural = "mail settings"

    def __str__(self) -> str:
        return f"Mail settings of {self.user}"
