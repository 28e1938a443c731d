"""What a user writes once and reuses when composing: email templates (personal or shared with the team or
the company) and signatures (per sending account). The bodies are sanitised HTML with smart fields such
as `{{person.first_name|there}}`, filled by `mailsync.sending.smart_fields` (never by a template engine)."""

from django.conf import settings
from django.db import models
from django.db.models import Q

from crm.models import Visibility

from .accounts import EmailAccount


class EmailTemplateQuerySet(models.QuerySet):
    def usable_by(self, user) -> "EmailTemplateQuerySet":
        """Templates a user may see and insert: their own, their team's shared ones, the company's.

        Unlike CRM records, a company admin gets no wider view: a private template is its author's own
        writing, like private mail."""
        if not user.is_authenticated or not user.is_active:
            return self.none()
        condition = Q(owner=user) | Q(visibility=Visibility.COMPANY)
        if user.team_id:
            condition |= Q(visibility=Visibility.TEAM, owner__team_id=user.team_id)
        return self.filter(condition)


class EmailTemplate(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="email_templates")
    visibility = models.CharField("shared with", max_length=10, choices=Visibility.choices, default=Visibility.OWNER)
    name = models.CharField(max_length=200)
    subject = models.CharField(max_length=500, blank=True)
    body_html = models.TextField("body", blank=True, max_length=200_000)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = EmailTemplateQuerySet.as_manager()

    class Meta:
        ordering = ["name", "pk"]
        indexes = [models.Index(fields=["owner", "name"])]

    def __str__(self) -> str:
        return self.name


class Signature(models.Model):
    """A signature of one sending account; at most one default for new mail and one for replies."""

    account = models.ForeignKey(EmailAccount, on_delete=models.CASCADE, related_name="signatures")
    name = models.CharField(max_length=100)
    body_html = models.TextField("signature", blank=True, max_length=100_000)
    is_default_for_new = models.BooleanField("default for new mail", default=False)
    is_default_for_replies = models.BooleanField("default for replies and forwards", default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["account"], condition=Q(is_default_for_new=True), name="signature_one_default_for_new"
            ),
            models.UniqueConstraint(
                fields=["account"], condition=Q(is_default_for_replies=True), name="signature_one_default_for_replies"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class SignatureImage(models.Model):
    """An image inside a signature (a logo): stored here, shown to its owner through an access-checked URL,
    sent as an inline (cid) part, never as a link to this server."""

    signature = models.ForeignKey(Signature, on_delete=models.CASCADE, related_name="images")
    file = models.FileField(upload_to="signature-images/%Y/%m/", max_length=300)
    content_type = models.CharField(max_length=100)
    size = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"Image {self.pk} of signature {self.signature_id}"
