from django import forms
from django.contrib import admin
from django.db import models

from crm.addresses import is_free_mail_domain, normalize_domain, normalize_email

from .models import Organization, OrganizationDomain, Person, PersonEmail


class PersonEmailAdminForm(forms.ModelForm):
    class Meta:
        model = PersonEmail
        fields = ["person", "email", "is_primary"]

    def clean_email(self) -> str:
        # Normalised before the uniqueness check, so "Ann@X.com" clashes with "ann@x.com" cleanly.
        return normalize_email(self.cleaned_data["email"]) or self.cleaned_data["email"]


class OrganizationDomainAdminForm(forms.ModelForm):
    class Meta:
        model = OrganizationDomain
        fields = ["organization", "domain"]

    def clean_domain(self) -> str:
        domain = normalize_domain(self.cleaned_data["domain"])
        if is_free_mail_domain(domain):
            raise forms.ValidationError(f"{domain} is a free email provider and cannot identify an organization.")
        return domain


class PersonEmailInline(admin.TabularInline):
    model = PersonEmail
    form = PersonEmailAdminForm
    extra = 1
    fields = ["email", "is_primary"]


class OrganizationDomainInline(admin.TabularInline):
    model = OrganizationDomain
    form = OrganizationDomainAdminForm
    extra = 1
    fields = ["domain"]


class PersonInline(admin.TabularInline):
    model = Person
    extra = 0
    fields = ["first_name", "last_name", "job_title", "owner"]
    readonly_fields = ["first_name", "last_name", "job_title", "owner"]
    show_change_link = True
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ["name", "domain_list", "owner", "visibility", "created_at"]
    list_filter = ["visibility", "owner__team", "created_at"]
    search_fields = ["name", "domains__domain", "website"]
    autocomplete_fields = ["owner"]
    list_select_related = ["owner"]
    readonly_fields = ["created_at", "updated_at"]
    inlines = [OrganizationDomainInline, PersonInline]
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("domains")

    @admin.display(description="Email domains")
    def domain_list(self, organization: Organization) -> str:
        return ", ".join(item.domain for item in organization.domains.all())


@admin.register(Person)
class PersonAdmin(admin.ModelAdmin):
    list_display = ["__str__", "primary_email", "organization", "job_title", "owner", "visibility", "created_at"]
    list_filter = ["visibility", "owner__team", "created_at"]
    search_fields = ["first_name", "last_name", "emails__email", "organization__name", "phone"]
    autocomplete_fields = ["organization", "owner"]
    list_select_related = ["organization", "owner"]
    readonly_fields = ["created_at", "updated_at"]
    inlines = [PersonEmailInline]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("emails")


@admin.register(PersonEmail)
class PersonEmailAdmin(admin.ModelAdmin):
    """Answers support's usual question: which contact holds this address?"""

    form = PersonEmailAdminForm
    list_display = ["email", "person", "is_primary"]
    list_filter = ["is_primary"]
    search_fields = ["email", "person__first_name", "person__last_name"]
    autocomplete_fields = ["person"]
    list_select_related = ["person"]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("person__emails")


@admin.register(OrganizationDomain)
class OrganizationDomainAdmin(admin.ModelAdmin):
    form = OrganizationDomainAdminForm
    list_display = ["domain", "organization"]
    search_fields = ["domain", "organization__name"]
    autocomplete_fields = ["organization"]
    list_select_related = ["organization"]
