"""Links between threads and CRM records (with the rule that made them, sticky manual choices) and the
user's blocked addresses."""

from django.conf import settings
from django.db import models
from django.db.models import Q

from .mail import EmailThread


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
