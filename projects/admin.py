from django.contrib import admin

from .models import Project


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["title", "status", "person", "organization", "deal", "due_date", "owner"]
    list_filter = ["status", "visibility", "owner__team", "due_date"]
    search_fields = ["title", "person__first_name", "person__last_name", "organization__name", "deal__title"]
    autocomplete_fields = ["person", "organization", "deal", "owner"]
    list_select_related = ["person", "organization", "deal", "owner"]
    readonly_fields = ["created_at", "updated_at"]
    date_hierarchy = "created_at"

    def get_queryset(self, request):
        # Person.__str__ falls back to an email address: fetch them with the page, not per row.
        return super().get_queryset(request).prefetch_related("person__emails")
