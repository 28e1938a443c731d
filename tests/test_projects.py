"""Projects: services, selectors and pages, by persona (alice owner, bob teammate, charlie outsider, admin)."""

import re
from datetime import date

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404
from django.urls import reverse

from conftest import client_for
from crm.models import Visibility
from projects import selectors, services
from projects.models import Project
from tests.factories import DealFactory, OrganizationFactory, PersonFactory, ProjectFactory

HTMX = {"HTTP_HX_REQUEST": "true"}
PROJECT_LINK = re.compile(r'href="/projects/\d+/"')


@pytest.fixture
def team_project(alice):
    """A project alice owns and shares with her team, sold in one of her deals."""
    deal = DealFactory(owner=alice, title="Anvil deal", visibility=Visibility.TEAM)
    return services.create_project(owner=alice, title="Anvil installation", deal=deal, visibility=Visibility.TEAM)


def project_form_data(**overrides):
    data = {
        "title": "Onboarding",
        "status": "open",
        "person": "",
        "organization": "",
        "deal": "",
        "start_date": "",
        "due_date": "",
        "visibility": "company",
        "notes": "",
    }
    data.update(overrides)
    return data


def test_project_services(team_project, bob, admin_user):
    with pytest.raises(ValidationError, match="due date"):
        services.create_project(owner=bob, title="Backwards", start_date=date(2026, 5, 2), due_date=date(2026, 5, 1))
    with pytest.raises(PermissionDenied):
        services.delete_project(project=team_project, user=bob)
    services.delete_project(project=team_project, user=admin_user)
    assert not Project.objects.exists()


def test_project_visibility_and_search(team_project, alice, bob, charlie, admin_user):
    for user in (alice, bob, admin_user):
        assert selectors.get_project_for_user(user, team_project.pk) == team_project
    with pytest.raises(Http404):
        selectors.get_project_for_user(charlie, team_project.pk)
    ProjectFactory(owner=alice, title="Other", status=Project.Status.COMPLETED)
    assert list(selectors.project_list(bob, query="anvil deal")) == [team_project]
    assert [p.title for p in selectors.project_list(bob, status="completed")] == ["Other"]
    assert list(selectors.projects_linked_to(bob, deal=team_project.deal)) == [team_project]
    assert selectors.timeline_for_project(alice, team_project) == []


def test_anonymous_user_is_sent_to_login(client, db):
    response = client.get(reverse("projects:project_list"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("account_login"))


def test_project_list_success_outsider_wrong_method_and_htmx(team_project, alice, bob, charlie):
    ProjectFactory(owner=alice, title="Website relaunch")
    response = client_for(bob).get(reverse("projects:project_list"))
    assert response.status_code == 200 and "Anvil installation" in response.text and "Anvil deal" in response.text
    assert "Anvil installation" not in client_for(charlie).get(reverse("projects:project_list")).text
    assert client_for(bob).post(reverse("projects:project_list")).status_code == 405
    partial = client_for(bob).get(reverse("projects:project_list"), {"q": "relaunch"}, **HTMX)
    assert "<html" not in partial.text
    assert "Website relaunch" in partial.text and "Anvil installation" not in partial.text


def test_project_list_without_n_plus_one(alice, alice_client, django_assert_max_num_queries):
    organization = OrganizationFactory(owner=alice)
    deal = DealFactory(owner=alice)
    for _ in range(30):
        ProjectFactory(owner=alice, person=PersonFactory(owner=alice), organization=organization, deal=deal)
    with django_assert_max_num_queries(10):
        response = alice_client.get(reverse("projects:project_list"))
    assert len(PROJECT_LINK.findall(response.text)) == 25


def test_project_detail(team_project, bob, charlie):
    response = client_for(bob).get(team_project.get_absolute_url())
    assert response.status_code == 200
    assert "Anvil deal" in response.text and "No email conversations yet." in response.text
    assert client_for(charlie).get(team_project.get_absolute_url()).status_code == 404
    assert client_for(bob).post(team_project.get_absolute_url()).status_code == 405


def test_project_create_success(alice_client, alice):
    deal = DealFactory(owner=alice)
    organization = OrganizationFactory(owner=alice)
    response = alice_client.post(
        reverse("projects:project_create"),
        project_form_data(
            owner=alice.pk, deal=deal.pk, organization=organization.pk, start_date="2026-05-01", due_date="2026-06-30"
        ),
    )
    project = Project.objects.get(title="Onboarding")
    assert response.status_code == 302 and response["Location"] == project.get_absolute_url()
    assert project.deal == deal and project.organization == organization and project.due_date == date(2026, 6, 30)


def test_project_create_rejects_bad_input(alice_client, alice, charlie):
    private_deal = DealFactory(owner=charlie, visibility="owner")
    response = alice_client.post(
        reverse("projects:project_create"),
        project_form_data(owner=alice.pk, deal=private_deal.pk, start_date="2026-05-02", due_date="2026-05-01"),
    )
    assert response.status_code == 200
    assert "Select a valid choice" in response.text
    assert "The due date cannot be before the start date." in response.text
    assert not Project.objects.exists()


def test_project_edit(team_project, alice, bob, charlie):
    url = reverse("projects:project_edit", args=[team_project.pk])
    assert client_for(bob).get(url).status_code == 200
    response = client_for(bob).post(
        url, project_form_data(title="Anvil installation, phase 2", deal=team_project.deal_id, visibility="team")
    )
    assert response.status_code == 302
    team_project.refresh_from_db()
    assert team_project.title == "Anvil installation, phase 2" and team_project.owner == alice
    assert client_for(charlie).get(url).status_code == 404
    assert client_for(bob).put(url).status_code == 405


def test_project_delete_permissions(team_project, bob, charlie, alice_client):
    url = reverse("projects:project_delete", args=[team_project.pk])
    assert client_for(bob).post(url).status_code == 403
    assert client_for(charlie).post(url).status_code == 404
    assert alice_client.get(url).status_code == 200
    assert alice_client.post(url).status_code == 302
    assert not Project.objects.exists()
