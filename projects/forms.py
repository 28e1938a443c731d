from django import forms

from contacts.selectors import visible_organizations, visible_people
from crm.records import DateInput, ListFilterForm, OwnedRecordForm
from deals.selectors import visible_deals

from .models import Project


class ProjectForm(OwnedRecordForm):
    class Meta:
        model = Project
        fields = [
            "title",
            "status",
            "person",
            "organization",
            "deal",
            "start_date",
            "due_date",
            "owner",
            "visibility",
            "notes",
        ]
        widgets = {"start_date": DateInput(), "due_date": DateInput(), "notes": forms.Textarea(attrs={"rows": 4})}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.limit_to_visible("person", visible_people(self.user))
        self.fields["person"].queryset = self.fields["person"].queryset.prefetch_related("emails")
        self.fields["person"].label_from_instance = lambda person: person.name
        self.limit_to_visible("organization", visible_organizations(self.user))
        self.limit_to_visible("deal", visible_deals(self.user))
        self.fields["deal"].help_text = "The deal this work was sold in, if any."

    def clean(self):
        cleaned = super().clean()
        start_date, due_date = cleaned.get("start_date"), cleaned.get("due_date")
        if start_date and due_date and due_date < start_date:
            self.add_error("due_date", "The due date cannot be before the start date.")
        return cleaned


class ProjectFilterForm(ListFilterForm):
    status = forms.ChoiceField(required=False, choices=[("", "Any status"), *Project.Status.choices])
