from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from crm.records import can_delete, delete_record_view, paginate, render_list, save_record_form

from . import selectors, services
from .forms import LeadFilterForm, LeadForm


@require_GET
def lead_list(request: HttpRequest) -> HttpResponse:
    filter_form = LeadFilterForm(request.GET, results_url=request.path)
    filters = filter_form.values()
    leads = selectors.lead_list(request.user, query=filters["q"], status=filters.get("status", ""))
    return render_list(
        request,
        template="leads/lead_list.html",
        partial="leads/_lead_table.html",
        context={
            "page_obj": paginate(request, leads),
            "filter_form": filter_form,
            "is_filtered": any(filters.values()),
        },
    )


@require_GET
def lead_detail(request: HttpRequest, pk: int) -> HttpResponse:
    lead = selectors.get_lead_for_user(request.user, pk)
    context = {
        "lead": lead,
        "can_delete": can_delete(request.user, lead),
        "timeline_threads": selectors.timeline_for_lead(request.user, lead),
    }
    return render(request, "leads/lead_detail.html", context)


@require_http_methods(["GET", "POST"])
def lead_create(request: HttpRequest) -> HttpResponse:
    form = LeadForm(request.POST if request.method == "POST" else None, user=request.user)
    return save_record_form(
        request,
        form,
        lambda data: services.create_lead(**data),
        verb="created",
        title="New lead",
        cancel_url=reverse("leads:lead_list"),
    )


@require_http_methods(["GET", "POST"])
def lead_edit(request: HttpRequest, pk: int) -> HttpResponse:
    lead = selectors.get_lead_for_user(request.user, pk)
    form = LeadForm(request.POST if request.method == "POST" else None, instance=lead, user=request.user)
    return save_record_form(
        request,
        form,
        lambda data: services.update_lead(lead=lead, **data),
        verb="saved",
        title=f"Edit {lead.title}",
        cancel_url=lead.get_absolute_url(),
    )


@require_http_methods(["GET", "POST"])
def lead_delete(request: HttpRequest, pk: int) -> HttpResponse:
    lead = selectors.get_lead_for_user(request.user, pk)
    return delete_record_view(
        request,
        lead,
        lambda: services.delete_lead(lead=lead, user=request.user),
        list_url=reverse("leads:lead_list"),
        consequences="",
    )
