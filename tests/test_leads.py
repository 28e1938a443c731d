"""Leads: services, selectors and pages, by persona (alice owner, bob teammate, charlie outsider, admin)."""

import re
from decimal import Decimal

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404
from django.urls import reverse

from conftest import client_for
from crm.models import Visibility
from leads import selectors, services
from leads.models import Lead
from tests.factories import LeadFactory, OrganizationFactory, PersonEmailFactory, PersonFactory

HTMX = {"HTTP_HX_REQUEST": "true"}
LEAD_LINK = re.compile(r'href="/leads/\d+/"')


@pytest.fixture
def team_lead(alice):
    """A lead alice owns and shares with her team."""
    return services.create_lead(
        owner=alice, title="Trade fair contact", source="Fair 2026", currency="usd", visibility=Visibility.TEAM
    )


def lead_form_data(**overrides):
    data = {
        "title": "Website enquiry",
        "status": "open",
        "source": "website",
        "value": "250",
        "currency": "eur",
        "person": "",
        "organization": "",
        "visibility": "company",
        "notes": "",
    }
    data.update(overrides)
    return data


def test_create_and_delete_lead_services(team_lead, bob, admin_user):
    assert team_lead.currency == "USD" and team_lead.status == Lead.Status.OPEN
    with pytest.raises(ValidationError):
        services.create_lead(owner=bob, title="Negative", value=Decimal("-1"))
    with pytest.raises(PermissionDenied):
        services.delete_lead(lead=team_lead, user=bob)
    services.delete_lead(lead=team_lead, user=admin_user)
    assert not Lead.objects.exists()


def test_lead_visibility_and_search(team_lead, alice, bob, charlie, admin_user):
    for user in (alice, bob, admin_user):
        assert selectors.get_lead_for_user(user, team_lead.pk) == team_lead
    with pytest.raises(Http404):
        selectors.get_lead_for_user(charlie, team_lead.pk)
    LeadFactory(owner=alice, title="Other", status=Lead.Status.ARCHIVED)
    assert list(selectors.lead_list(bob, query="fair")) == [team_lead]
    assert [lead.title for lead in selectors.lead_list(bob, status="archived")] == ["Other"]
    assert selectors.timeline_for_lead(alice, team_lead) == []


def test_anonymous_user_is_sent_to_login(client, db):
    response = client.get(reverse("leads:lead_list"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("account_login"))


def test_lead_list_success_outsider_wrong_method_and_htmx(team_lead, alice, bob, charlie):
    LeadFactory(owner=alice, title="Cold call")
    response = client_for(bob).get(reverse("leads:lead_list"))
    assert response.status_code == 200 and "Trade fair contact" in response.text
    assert "Trade fair contact" not in client_for(charlie).get(reverse("leads:lead_list")).text
    assert client_for(bob).post(reverse("leads:lead_list")).status_code == 405
    partial = client_for(bob).get(reverse("leads:lead_list"), {"q": "fair"}, **HTMX)
    assert "<html" not in partial.text
    assert "Trade fair contact" in partial.text and "Cold call" not in partial.text


def test_lead_list_without_n_plus_one(alice, alice_client, django_assert_max_num_queries):
    organization = OrganizationFactory(owner=alice)
    for _ in range(30):
        person = PersonFactory(owner=alice, first_name="", last_name="")
        PersonEmailFactory(person=person)
        LeadFactory(owner=alice, person=person, organization=organization)
    with django_assert_max_num_queries(9):
        response = alice_client.get(reverse("leads:lead_list"))
    assert len(LEAD_LINK.findall(response.text)) == 25


def test_lead_detail(team_lead, bob, charlie):
    response = client_for(bob).get(team_lead.get_absolute_url())
    assert response.status_code == 200
    assert "Fair 2026" in response.text and "No email conversations yet." in response.text
    assert client_for(charlie).get(team_lead.get_absolute_url()).status_code == 404
    assert client_for(bob).post(team_lead.get_absolute_url()).status_code == 405


def test_lead_create_success_and_defaults(alice_client, alice):
    person = PersonFactory(owner=alice)
    form = alice_client.get(reverse("leads:lead_create"))
    assert f'<option value="{alice.pk}" selected>' in form.text
    response = alice_client.post(reverse("leads:lead_create"), lead_form_data(owner=alice.pk, person=person.pk))
    lead = Lead.objects.get(title="Website enquiry")
    assert response.status_code == 302 and response["Location"] == lead.get_absolute_url()
    assert lead.person == person and lead.currency == "EUR" and lead.owner == alice


def test_lead_create_rejects_bad_input(alice_client, alice, charlie):
    private_org = OrganizationFactory(owner=charlie, visibility="owner")
    response = alice_client.post(
        reverse("leads:lead_create"),
        lead_form_data(owner=alice.pk, value="-1", currency="E", organization=private_org.pk),
    )
    assert response.status_code == 200
    assert "greater than or equal to 0" in response.text
    assert "three-letter currency code" in response.text
    assert "Select a valid choice" in response.text
    assert not Lead.objects.exists()


def test_lead_edit(team_lead, alice, bob, charlie):
    url = reverse("leads:lead_edit", args=[team_lead.pk])
    response = client_for(bob).post(url, lead_form_data(title="Qualified fair contact", visibility="team"))
    assert response.status_code == 302
    team_lead.refresh_from_db()
    assert team_lead.title == "Qualified fair contact" and team_lead.owner == alice
    assert client_for(charlie).get(url).status_code == 404
    assert client_for(bob).put(url).status_code == 405


def test_lead_delete_permissions(team_lead, bob, charlie, alice_client):
    url = reverse("leads:lead_delete", args=[team_lead.pk])
    assert client_for(bob).post(url).status_code == 403
    assert client_for(charlie).post(url).status_code == 404
    assert alice_client.get(url).status_code == 200
    assert alice_client.post(url).status_code == 302
    assert not Lead.objects.exists()
