from django.contrib import admin
from django.db.models import Count

from . import services
from .models import Deal, Pipeline, Stage


class StageInline(admin.TabularInline):
    model = Stage
    extra = 1
    fields = ["name", "order", "probability"]


@admin.register(Pipeline)
class PipelineAdmin(admin.ModelAdmin):
    list_display = ["name", "order", "stage_count"]
    list_editable = ["order"]
    search_fields = ["name"]
    inlines = [StageInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(number_of_stages=Count("stages"))

    @admin.display(description="Stages", ordering="number_of_stages")
    def stage_count(self, pipeline: Pipeline) -> int:
        return pipeline.number_of_stages


@admin.register(Stage)
class StageAdmin(admin.ModelAdmin):
    list_display = ["name", "pipeline", "order", "probability"]
    list_filter = ["pipeline"]
    search_fields = ["name", "pipeline__name"]
    list_select_related = ["pipeline"]


@admin.register(Deal)
class DealAdmin(admin.ModelAdmin):
    list_display = ["title", "pipeline", "stage", "status", "value", "currency", "person", "organization", "owner"]
    list_filter = ["status", "pipeline", "visibility", "owner__team", "created_at"]
    search_fields = [
        "title",
        "person__first_name",
        "person__last_name",
        "person__emails__email",
        "organization__name",
    ]
    autocomplete_fields = ["stage", "person", "organization", "owner"]
    list_select_related = ["pipeline", "stage__pipeline", "person", "organization", "owner"]
    readonly_fields = ["closed_at", "created_at", "updated_at"]
    date_hierarchy = "created_at"

    def get_queryset(self, request):
        # Person.__str__ falls back to an email address: fetch them with the page, not per row.
        return super().get_queryset(request).prefetch_related("person__emails")

    def save_model(self, request, obj: Deal, form, change) -> None:
        # The same close-date rule as the product's own form (see deals.services).
        obj.closed_at = services.closed_at_for(obj.status, obj.closed_at)
        super().save_model(request, obj, form, change)
