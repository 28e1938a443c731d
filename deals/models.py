from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db import models
from django.urls import reverse

from crm.models import NOTES_MAX_LENGTH, OwnedRecord


class Pipeline(models.Model):
    name = models.CharField(max_length=100, unique=True)
    order = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["order", "name"]

    def __str__(self) -> str:
        return self.name


class Stage(models.Model):
    pipeline = models.ForeignKey(Pipeline, on_delete=models.CASCADE, related_name="stages")
    name = models.CharField(max_length=100)
    order = models.PositiveIntegerField(default=0)
    probability = models.PositiveSmallIntegerField(default=0, help_text="Win probability in percent")

    class Meta:
        ordering = ["pipeline", "order", "pk"]
        constraints = [models.UniqueConstraint(fields=["pipeline", "name"], name="stage_name_unique_in_pipeline")]

    def __str__(self) -> str:
        return f"{self.pipeline.name} / {self.name}"


class Deal(OwnedRecord):
    class Status(models.TextChoices):
        OPEN = "open", "Open"
        WON = "won", "Won"
        LOST = "lost", "Lost"

    title = models.CharField(max_length=200)
    pipeline = models.ForeignKey(Pipeline, on_delete=models.PROTECT, related_name="deals")
    stage = models.ForeignKey(Stage, on_delete=models.PROTECT, related_name="deals")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN, db_index=True)
    value = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0"))
    currency = models.CharField(max_length=3, default="EUR")
    person = models.ForeignKey(
        "contacts.Person", null=True, blank=True, on_delete=models.SET_NULL, related_name="deals"
    )
    organization = models.ForeignKey(
        "contacts.Organization", null=True, blank=True, on_delete=models.SET_NULL, related_name="deals"
    )
    expected_close_date = models.DateField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    notes = models.TextField(blank=True, max_length=NOTES_MAX_LENGTH)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.CheckConstraint(condition=models.Q(value__gte=0), name="deal_value_not_negative"),
        ]

    def __str__(self) -> str:
        return self.title

    def clean(self) -> None:
        super().clean()
        if self.pipeline_id and self.stage_id and self.stage.pipeline_id != self.pipeline_id:
            raise ValidationError(
                {"stage": f"Stage “{self.stage.name}” is not part of the pipeline “{self.pipeline.name}”."}
            )

    def get_absolute_url(self) -> str:
        return reverse("deals:deal_detail", args=[self.pk])
