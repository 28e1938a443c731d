from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from crm.params import parse_id
from crm.records import can_delete, delete_record_view, paginate, render_list, save_record_form
from projects.selectors import projects_linked_to

from . import selectors, services
from .forms import DealFilterForm, DealForm


@require_GET
def deal_list(request: HttpRequest) -> HttpResponse:
    filter_form = DealFilterForm(request.GET, results_url=request.path)
    filters = filter_form.values()
    deals = selectors.deal_list(
        request.user,
        query=filters["q"],
        status=filters.get("status", ""),
        pipeline=filters.get("pipeline"),
        stage=filters.get("stage"),
    )
    return render_list(
        request,
        template="deals/deal_list.html",
        partial="deals/_deal_table.html",
        context={
            "page_obj": paginate(request, deals),
            "filter_form": filter_form,
            "is_filtered": any(filters.values()),
        },
    )


@require_GET
def deal_detail(request: HttpRequest, pk: int) -> HttpResponse:
    deal = selectors.get_deal_for_user(request.user, pk)
    context = {
        "deal": deal,
        "can_delete": can_delete(request.user, deal),
        "projects": projects_linked_to(request.user, deal=deal),
        "timeline_threads": selectors.timeline_for_deal(request.user, deal),
    }
    return render(request, "deals/deal_detail.html", context)


@require_http_methods(["GET", "POST"])
def deal_create(request: HttpRequest) -> HttpResponse:
    form = DealForm(request.POST if request.method == "POST" else None, user=request.user)
    return save_record_form(
        request,
        form,
        lambda data: services.create_deal(**data),
        verb="created",
        title="New deal",
        cancel_url=reverse("deals:deal_list"),
    )


@require_http_methods(["GET", "POST"])
def deal_edit(request: HttpRequest, pk: int) -> HttpResponse:
    deal = selectors.get_deal_for_user(request.user, pk)
    form = DealForm(request.POST if request.method == "POST" else None, instance=deal, user=request.user)
    return save_record_form(
        request,
        form,
        lambda data: services.update_deal(deal=deal, **data),
        verb="saved",
        title=f"Edit {deal.title}",
        cancel_url=deal.get_absolute_url(),
    )


@require_http_methods(["GET", "POST"])
def deal_delete(request: HttpRequest, pk: int) -> HttpResponse:
    deal = selectors.get_deal_for_user(request.user, pk)
    return delete_record_view(
        request,
        deal,
        lambda: services.delete_deal(deal=deal, user=request.user),
        list_url=reverse("deals:deal_list"),
        consequences="Projects linked to this deal stay, without the link.",
    )


@require_GET
def stage_options(request: HttpRequest) -> HttpResponse:
    """The <option>s of one pipeline's stages, for the deal form's dependent select."""
    raw = request.GET.get("pipeline", "")
    stages = selectors.stages_of(parse_id(raw))
    return render(request, "deals/_stage_options.html", {"stages": stages})
