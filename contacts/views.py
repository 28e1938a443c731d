from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from crm.records import ListFilterForm, can_delete, delete_record_view, paginate, render_list, save_record_form
from deals.selectors import deals_linked_to
from leads.selectors import leads_linked_to
from projects.selectors import projects_linked_to

from . import selectors, services
from .forms import OrganizationForm, PersonForm


@require_GET
def person_list(request: HttpRequest) -> HttpResponse:
    filter_form = ListFilterForm(request.GET, results_url=request.path)
    query = filter_form.values()["q"]
    page = paginate(request, selectors.person_list(request.user, query=query))
    return render_list(
        request,
        template="contacts/person_list.html",
        partial="contacts/_person_table.html",
        context={"page_obj": page, "filter_form": filter_form, "is_filtered": bool(query)},
    )


@require_GET
def person_detail(request: HttpRequest, pk: int) -> HttpResponse:
    person = selectors.get_person_for_user(request.user, pk)
    context = {
        "person": person,
        "can_delete": can_delete(request.user, person),
        "deals": deals_linked_to(request.user, person=person),
        "leads": leads_linked_to(request.user, person=person),
        "projects": projects_linked_to(request.user, person=person),
        "timeline_threads": selectors.timeline_for_person(request.user, person),
    }
    return render(request, "contacts/person_detail.html", context)


@require_http_methods(["GET", "POST"])
def person_create(request: HttpRequest) -> HttpResponse:
    form = PersonForm(request.POST if request.method == "POST" else None, user=request.user)
    return save_record_form(
        request,
        form,
        lambda data: services.create_person(**data),
        verb="created",
        title="New person",
        cancel_url=reverse("contacts:person_list"),
    )


@require_http_methods(["GET", "POST"])
def person_edit(request: HttpRequest, pk: int) -> HttpResponse:
    person = selectors.get_person_for_user(request.user, pk)
    form = PersonForm(request.POST if request.method == "POST" else None, instance=person, user=request.user)
    return save_record_form(
        request,
        form,
        lambda data: services.update_person(person=person, **data),
        verb="saved",
        title=f"Edit {person.name}",
        cancel_url=person.get_absolute_url(),
    )


@require_POST
def person_email_fine(request: HttpRequest, pk: int, email_pk: int) -> HttpResponse:
    item = services.clear_bouncing(person_email=selectors.get_person_email_for_user(request.user, pk, email_pk))
    messages.success(request, f"{item.email} is no longer marked as bouncing.")
    return redirect(item.person.get_absolute_url())


@require_POST
def person_email_remove(request: HttpRequest, pk: int, email_pk: int) -> HttpResponse:
    item = selectors.get_person_email_for_user(request.user, pk, email_pk)
    person = item.person
    services.remove_person_email(person_email=item, user=request.user)
    messages.success(request, f"{item.email} was removed from {person.name}.")
    return redirect(person.get_absolute_url())


@require_http_methods(["GET", "POST"])
def person_delete(request: HttpRequest, pk: int) -> HttpResponse:
    person = selectors.get_person_for_user(request.user, pk)
    return delete_record_view(
        request,
        person,
        lambda: services.delete_person(person=person, user=request.user),
        list_url=reverse("contacts:person_list"),
        consequences="Their email addresses are removed. Deals, leads and projects linked to "
        "them stay, without the link.",
    )


@require_GET
def organization_list(request: HttpRequest) -> HttpResponse:
    filter_form = ListFilterForm(request.GET, results_url=request.path)
    query = filter_form.values()["q"]
    page = paginate(request, selectors.organization_list(request.user, query=query))
    return render_list(
        request,
        template="contacts/organization_list.html",
        partial="contacts/_organization_table.html",
        context={"page_obj": page, "filter_form": filter_form, "is_filtered": bool(query)},
    )


@require_GET
def organization_detail(request: HttpRequest, pk: int) -> HttpResponse:
    organization = selectors.get_organization_for_user(request.user, pk)
    context = {
        "organization": organization,
        "can_delete": can_delete(request.user, organization),
        "people": selectors.people_of_organization(request.user, organization),
        "deals": deals_linked_to(request.user, organization=organization),
        "leads": leads_linked_to(request.user, organization=organization),
        "projects": projects_linked_to(request.user, organization=organization),
        "timeline_threads": selectors.timeline_for_organization(request.user, organization),
    }
    return render(request, "contacts/organization_detail.html", context)


@require_http_methods(["GET", "POST"])
def organization_create(request: HttpRequest) -> HttpResponse:
    form = OrganizationForm(request.POST if request.method == "POST" else None, user=request.user)
    return save_record_form(
        request,
        form,
        lambda data: services.create_organization(**data),
        verb="created",
        title="New organization",
        cancel_url=reverse("contacts:organization_list"),
    )


@require_http_methods(["GET", "POST"])
def organization_edit(request: HttpRequest, pk: int) -> HttpResponse:
    organization = selectors.get_organization_for_user(request.user, pk)
    form = OrganizationForm(
        request.POST if request.method == "POST" else None, instance=organization, user=request.user
    )
    return save_record_form(
        request,
        form,
        lambda data: services.update_organization(organization=organization, **data),
        verb="saved",
        title=f"Edit {organization.name}",
        cancel_url=organization.get_absolute_url(),
    )


@require_http_methods(["GET", "POST"])
def organization_delete(request: HttpRequest, pk: int) -> HttpResponse:
    organization = selectors.get_organization_for_user(request.user, pk)
    return delete_record_view(
        request,
        organization,
        lambda: services.delete_organization(organization=organization, user=request.user),
        list_url=reverse("contacts:organization_list"),
        consequences="Its email domains are removed. People, deals, leads and projects linked to it "
        "stay, without the link.",
    )
