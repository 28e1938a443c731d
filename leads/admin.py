from django.contrib import admin

from .models import Lead


@admin.register(Lead)
class LeadAdmin(admin.ModelAdmin):
    list_display = ["title", "status", "source", "value", "currency", "person", "organization", "owner"]
    list_filter = ["status", "visibility", "owner__team", "created_at"]
    search_fields = ["title", "source", "person__first_name", "person__last_name", "organization__name"]
    autocomplete_fields = ["person", "organization", "owner"]
    list_select_related = ["person", "organization", "owner"]
    readonly_fields = ["created_at", "updated_at"]
    date_hierarchy = "created_at"

    def get_queryset(self, request):
        # Person.__str__ falls back to an email address: fetch them with the page, not per row.
        return super().get_queryset(request).prefetch_related("person__emails")
