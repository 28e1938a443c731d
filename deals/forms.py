from django import forms
from django.urls import reverse

from contacts.selectors import visible_organizations, visible_people
from crm.params import parse_id
from crm.records import CurrencyField, DateInput, ListFilterForm, OwnedRecordForm

from . import selectors
from .models import Deal


class DealForm(OwnedRecordForm):
    value = forms.DecimalField(min_value=0, max_digits=14, decimal_places=2, initial=0)
    currency = CurrencyField()

    class Meta:
        model = Deal
        fields = [
            "title",
            "pipeline",
            "stage",
            "status",
            "value",
            "currency",
            "person",
            "organization",
            "expected_close_date",
            "owner",
            "visibility",
            "notes",
        ]
        widgets = {
            "expected_close_date": DateInput(),
            "notes": forms.Textarea(attrs={"rows": 4}),
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.limit_to_visible("person", visible_people(self.user))
        self.fields["person"].queryset = self.fields["person"].queryset.prefetch_related("emails")
        self.fields["person"].label_from_instance = lambda person: person.name
        self.limit_to_visible("organization", visible_organizations(self.user))

        pipeline_field = self.fields["pipeline"]
        pipeline_field.queryset = selectors.pipelines()
        pipeline_field.empty_label = None
        # Changing the pipeline reloads the stage choices (deals:stage_options answers with <option>s).
        pipeline_field.widget.attrs.update(
            {"hx-get": reverse("deals:stage_options"), "hx-target": "#id_stage", "hx-trigger": "change"}
        )
        first_pipeline = pipeline_field.queryset.first()
        if first_pipeline is None:
            pipeline_field.help_text = "No pipeline exists yet: an admin creates them in the admin (Deals > Pipelines)."
        elif self.instance.pk is None:
            pipeline_field.initial = first_pipeline.pk

        # Every stage validates (so a mismatch gets a clear message), but only the chosen
        # pipeline's stages are offered.
        stage_field = self.fields["stage"]
        stage_field.queryset = selectors.stages()
        offered = list(selectors.stages_of(self._chosen_pipeline_id()))
        stage_field.widget.choices = [(stage.pk, stage.name) for stage in offered]
        if self.instance.pk is None and offered:
            stage_field.initial = offered[0].pk

    def _chosen_pipeline_id(self) -> int | None:
        if self.is_bound:
            raw = self.data.get(self.add_prefix("pipeline"))
            return parse_id(raw)
        return self.instance.pipeline_id or self.fields["pipeline"].initial


class DealFilterForm(ListFilterForm):
    status = forms.ChoiceField(required=False, choices=[("", "Any status"), *Deal.Status.choices])
    pipeline = forms.ModelChoiceField(required=False, queryset=selectors.pipelines(), empty_label="All pipelines")
    stage = forms.ModelChoiceField(required=False, queryset=selectors.stages(), empty_label="All stages")
