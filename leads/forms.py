from django import forms

from contacts.selectors import visible_organizations, visible_people
from crm.records import CurrencyField, ListFilterForm, OwnedRecordForm

from .models import Lead


class LeadForm(OwnedRecordForm):
    value = forms.DecimalField(min_value=0, max_digits=14, decimal_places=2, initial=0)
    currency = CurrencyField()

    class Meta:
        model = Lead
        fields = [
            "title",
            "status",
            "source",
            "value",
            "currency",
            "person",
            "organization",
            "owner",
            "visibility",
            "notes",
        ]
        widgets = {
            "notes": forms.Textarea(attrs={"rows": 4}),
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.limit_to_visible("person", visible_people(self.user))
        self.fields["person"].queryset = self.fields["person"].queryset.prefetch_related("emails")
        self.fields["person"].label_from_instance = lambda person: person.name
        self.limit_to_visible("organization", visible_organizations(self.user))
        self.fields["source"].widget.attrs["placeholder"] = "Website form, referral, trade fair…"


class LeadFilterForm(ListFilterForm):
    status = forms.ChoiceField(required=False, choices=[("", "Any status"), *Lead.Status.choices])
