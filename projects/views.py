from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from crm.records import can_delete, delete_record_view, paginate, render_list, save_record_form

from . import selectors, services
from .forms import ProjectFilterForm, ProjectForm


@require_GET
def project_list(request: HttpRequest) -> HttpResponse:
    filter_form = ProjectFilterForm(request.GET, results_url=request.path)
    filters = filter_form.values()
    projects = selectors.project_list(request.user, query=filters["q"], status=filters.get("status", ""))
    return render_list(
        request,
        template="projects/project_list.html",
        partial="projects/_project_table.html",
        context={
            "page_obj": paginate(request, projects),
            "filter_form": filter_form,
            "is_filtered": any(filters.values()),
        },
    )


@require_GET
def project_detail(request: HttpRequest, pk: int) -> HttpResponse:
    project = selectors.get_project_for_user(request.user, pk)
    context = {
        "project": project,
        "can_delete": can_delete(request.user, project),
        "timeline_threads": selectors.timeline_for_project(request.user, project),
    }
    return render(request, "projects/project_detail.html", context)


@require_http_methods(["GET", "POST"])
def project_create(request: HttpRequest) -> HttpResponse:
    form = ProjectForm(request.POST if request.method == "POST" else None, user=request.user)
    return save_record_form(
        request,
        form,
        lambda data: services.create_project(**data),
        verb="created",
        title="New project",
        cancel_url=reverse("projects:project_list"),
    )


@require_http_methods(["GET", "POST"])
def project_edit(request: HttpRequest, pk: int) -> HttpResponse:
    project = selectors.get_project_for_user(request.user, pk)
    form = ProjectForm(request.POST if request.method == "POST" else None, instance=project, user=request.user)
    return save_record_form(
        request,
        form,
        lambda data: services.update_project(project=project, **data),
        verb="saved",
        title=f"Edit {project.title}",
        cancel_url=project.get_absolute_url(),
    )


@require_http_methods(["GET", "POST"])
def project_delete(request: HttpRequest, pk: int) -> HttpResponse:
    project = selectors.get_project_for_user(request.user, pk)
    return delete_record_view(
        request,
        project,
        lambda: services.delete_project(project=project, user=request.user),
        list_url=reverse("projects:project_list"),
        consequences="",
    )
