from django.db import models
from django.db.models.functions import Lower
from django.urls import reverse

from crm.addresses import normalize_domain, normalize_email
from crm.models import NOTES_MAX_LENGTH, OwnedRecord


class Organization(OwnedRecord):
    name = models.CharField(max_length=200)
    website = models.URLField(blank=True)
    address = models.TextField(blank=True, max_length=1000)
    notes = models.TextField(blank=True, max_length=NOTES_MAX_LENGTH)

    class Meta:
        ordering = ["name"]
        indexes = [models.Index(Lower("name"), name="org_name_lower_idx")]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("contacts:organization_detail", args=[self.pk])


class OrganizationDomain(models.Model):
    """An email domain that identifies an organization (stored lower-case, unique)."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="domains")
    domain = models.CharField(max_length=253, unique=True)

    class Meta:
        ordering = ["domain"]

    def __str__(self) -> str:
        return self.domain

    def save(self, *args, **kwargs):
        self.domain = normalize_domain(self.domain)
        super().save(*args, **kwargs)


class Person(OwnedRecord):
    first_name = models.CharField(max_length=100, blank=True)
    last_name = models.CharField(max_length=100, blank=True)
    organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.SET_NULL, related_name="people"
    )
    job_title = models.CharField(max_length=150, blank=True)
    phone = models.CharField(max_length=50, blank=True)
    notes = models.TextField(blank=True, max_length=NOTES_MAX_LENGTH)

    class Meta:
        ordering = ["last_name", "first_name", "pk"]
        verbose_name_plural = "people"

    def __str__(self) -> str:
        return self.name

    @property
    def name(self) -> str:
        full = f"{self.first_name} {self.last_name}".strip()
        if full:
            return full
        first = next(iter(self.emails.all()), None)
        return first.email if first else f"Person #{self.pk}"

    @property
    def primary_email(self) -> str:
        emails = list(self.emails.all())
        for item in emails:
            if item.is_primary:
                return item.email
        return emails[0].email if emails else ""

    def get_absolute_url(self) -> str:
        return reverse("contacts:person_detail", args=[self.pk])


class PersonEmail(models.Model):
    """One of a person's addresses, stored normalised; an address belongs to one person only."""

    person = models.ForeignKey(Person, on_delete=models.CASCADE, related_name="emails")
    email = models.EmailField(max_length=320, unique=True)
    is_primary = models.BooleanField(default=False)
    # Mail to it bounced for good (a 5.x.x delivery failure of mail its sender sent from a synced mailbox);
    # cleared by "The address is fine" (contacts.services.clear_bouncing).
    bouncing_since = models.DateTimeField(null=True, blank=True)
    bounce_status = models.CharField(max_length=12, blank=True)
    bounce_diagnostic = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-is_primary", "email"]
        constraints = [models.UniqueConstraint(Lower("email"), name="person_email_ci_unique")]

    def __str__(self) -> str:
        return self.email

    def save(self, *args, **kwargs):
        self.email = normalize_email(self.email) or self.email.strip().lower()
        super().save(*args, **kwargs)
