"""Shared pieces of the pages for owned CRM records (people, organizations, deals, leads, projects).

Who may do what, in one place so every app agrees:
- seeing a record: `Model.objects.visible_to(user)` (selectors);
- editing: anyone who can see it;
- deleting and handing the record to another owner: its owner or a company admin.
"""

import re
from collections.abc import Callable

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Page, Paginator
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.cache import patch_vary_headers
from django.utils.text import capfirst

from crm.models import OwnedRecord, User

PAGE_SIZE = 25
# More words than this in a search box is not a search; ignoring the rest keeps the query bounded.
MAX_SEARCH_TERMS = 6
CURRENCY_RE = re.compile(r"^[A-Z]{3}$")


def can_delete(user: User, record: OwnedRecord) -> bool:
    return user.is_authenticated and (user.is_company_admin or record.owner_id == user.pk)


def can_change_owner(user: User, record: OwnedRecord) -> bool:
    return record.pk is None or can_delete(user, record)


def require_can_delete(user: User, record: OwnedRecord) -> None:
    if not can_delete(user, record):
        raise PermissionDenied("Only the owner or a company admin may delete this record.")


def search_terms(query: str) -> list[str]:
    return query.split()[:MAX_SEARCH_TERMS]


def filter_by_terms(queryset: QuerySet, query: str, condition_for: Callable[[str], Q]) -> QuerySet:
    """Every word of the query must match somewhere ("ann acme" finds Ann at Acme)."""
    for term in search_terms(query):
        queryset = queryset.filter(condition_for(term))
    return queryset


def is_partial_request(request: HttpRequest) -> bool:
    """A non-boosted htmx request (search box, filters) wants only the fragment it will swap in."""
    htmx = getattr(request, "htmx", None)
    return bool(htmx) and not htmx.boosted and not htmx.history_restore_request


def paginate(request: HttpRequest, queryset: QuerySet, per_page: int = PAGE_SIZE) -> Page:
    return Paginator(queryset, per_page).get_page(request.GET.get("page"))


def render_list(request: HttpRequest, *, template: str, partial: str, context: dict) -> HttpResponse:
    response = render(request, partial if is_partial_request(request) else template, context)
    # The same URL answers with a page or a fragment: caches must keep them apart.
    patch_vary_headers(response, ["HX-Request"])
    return response


class CurrencyField(forms.CharField):
    """A three-letter ISO 4217 code; "eur" is accepted and stored as "EUR"."""

    def __init__(self, **kwargs):
        kwargs.setdefault("initial", "EUR")
        kwargs.setdefault("widget", forms.TextInput(attrs={"size": 4, "autocapitalize": "characters"}))
        super().__init__(**kwargs)

    def clean(self, value):
        value = super().clean(value).upper()
        if not CURRENCY_RE.match(value):
            raise forms.ValidationError("Enter a three-letter currency code such as EUR or USD.")
        return value


class DateInput(forms.DateInput):
    input_type = "date"

    def __init__(self, attrs=None):
        super().__init__(attrs=attrs, format="%Y-%m-%d")


class PlainLabels:
    """Labels without the colon Django appends, as on the sign-in page: every form reads the same."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)


class OwnedRecordForm(PlainLabels, forms.ModelForm):
    """A form for a record with owner and visibility, filled in by `user`.

    The owner defaults to the user; only the owner or an admin may hand the record to someone else.
    Relations to other records offer only what the user may see, plus the current value, so that
    editing a record linked to something private does not silently drop the link.
    """

    def __init__(self, *args, user: User, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user
        if "visibility" in self.fields:
            self.fields["visibility"].label = "Visible to"
        owner_field = self.fields.get("owner")
        if owner_field is not None:
            owners = User.objects.filter(is_active=True)
            if self.instance.owner_id:
                owners = owners | User.objects.filter(pk=self.instance.owner_id)
            owner_field.queryset = owners.order_by("first_name", "last_name", "email")
            owner_field.label_from_instance = lambda owner: f"{owner} <{owner.email}>"
            if self.instance.pk is None:
                owner_field.initial = user.pk
            elif not can_change_owner(user, self.instance):
                owner_field.disabled = True
                owner_field.help_text = "Only the owner or an admin can hand this record to someone else."

    def limit_to_visible(self, field_name: str, queryset: QuerySet) -> None:
        current_id = getattr(self.instance, f"{field_name}_id", None)
        if current_id:
            queryset = queryset | queryset.model.objects.filter(pk=current_id)
        self.fields[field_name].queryset = queryset


class ListFilterForm(forms.Form):
    """The search box (and filters of subclasses) above a list; each control refreshes only the results.

    Unknown or invalid filter values are ignored rather than reported: they come from URLs.
    """

    q = forms.CharField(
        required=False,
        max_length=200,
        label="Search",
        widget=forms.SearchInput(attrs={"placeholder": "Search…", "autocomplete": "off"}),
    )

    def __init__(self, data, *, results_url: str, **kwargs):
        super().__init__(data, **kwargs)
        live_filter_fields(self, results_url)

    def values(self) -> dict:
        self.is_valid()
        values = {name: value for name, value in self.cleaned_data.items() if value not in (None, "")}
        values["q"] = (values.get("q") or "").strip()
        return values


def live_filter_fields(form, results_url: str) -> None:
    """Make every field of a filter form refresh the #results list over htmx as the user types/picks."""
    for name, field in form.fields.items():
        field.widget.attrs.update(
            {
                "hx-get": results_url,
                "hx-target": "#results",
                "hx-include": "closest form",
                "hx-push-url": "true",
                # A slow answer to an older query must not overwrite the newer one.
                "hx-sync": "closest form:replace",
                "hx-trigger": "input changed delay:300ms, search" if name == "q" else "change",
                "aria-label": field.label,
            }
        )


def save_record_form(request, form, save, *, verb: str, title: str, cancel_url: str):
    """The body of every create/edit view: a valid form goes to the service (`save(cleaned_data)`);
    a service ValidationError lands on the form; success says so and shows the record."""
    if form.is_bound and form.is_valid():
        try:
            record = save(form.cleaned_data)
        except ValidationError as error:
            form.add_error(None, error)
        else:
            messages.success(request, f"{capfirst(record._meta.verbose_name)} “{record}” {verb}.")
            return redirect(record)
    return render(request, "partials/record_form.html", {"form": form, "title": title, "cancel_url": cancel_url})


def delete_record_view(request, record, delete, *, list_url: str, consequences: str = ""):
    """The body of every delete view: owner or admin only; GET confirms, POST deletes (`delete()`)."""
    require_can_delete(request.user, record)
    if request.method == "POST":
        label = str(record)
        delete()
        messages.success(request, f"{capfirst(record._meta.verbose_name)} “{label}” deleted.")
        return redirect(list_url)
    return render(
        request,
        "partials/record_confirm_delete.html",
        {
            "record": record,
            "title": f"Delete {record}?",
            "consequences": consequences,
            "cancel_url": record.get_absolute_url(),
        },
    )
