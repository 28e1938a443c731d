"""Deals: services, selectors and pages, by persona (alice owner, bob teammate, charlie outsider, admin)."""

import re
from decimal import Decimal

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404
from django.urls import reverse

from conftest import client_for
from crm.models import Visibility
from deals import selectors, services
from deals.models import Deal
from tests.factories import (
    DealFactory,
    OrganizationFactory,
    PersonEmailFactory,
    PersonFactory,
    PipelineFactory,
    ProjectFactory,
    StageFactory,
)

HTMX = {"HTTP_HX_REQUEST": "true"}
DEAL_LINK = re.compile(r'href="/deals/\d+/"')


@pytest.fixture
def sales_pipeline(db):
    return PipelineFactory(name="Sales")


@pytest.fixture
def qualified(sales_pipeline):
    return StageFactory(pipeline=sales_pipeline, name="Qualified", order=1)


@pytest.fixture
def proposal(sales_pipeline):
    return StageFactory(pipeline=sales_pipeline, name="Proposal", order=2)


@pytest.fixture
def renewals_stage(db):
    return StageFactory(pipeline=PipelineFactory(name="Renewals"), name="Due", order=1)


@pytest.fixture
def team_deal(alice, qualified):
    """A deal alice owns and shares with her team."""
    return services.create_deal(
        owner=alice,
        title="Anvils for Acme",
        pipeline=qualified.pipeline,
        stage=qualified,
        value=Decimal("1200.50"),
        currency="eur",
        visibility=Visibility.TEAM,
    )


def deal_form_data(chosen_stage, **overrides):
    data = {
        "title": "Rocket skates",
        "pipeline": chosen_stage.pipeline_id,
        "stage": chosen_stage.pk,
        "status": "open",
        "value": "500",
        "currency": "usd",
        "person": "",
        "organization": "",
        "expected_close_date": "",
        "visibility": "company",
        "notes": "",
    }
    data.update(overrides)
    return data


# --- services -------------------------------------------------------------------------------------


def test_create_deal_upper_cases_currency_and_leaves_open_deals_unclosed(team_deal):
    assert team_deal.currency == "EUR"
    assert team_deal.closed_at is None


def test_status_change_sets_and_clears_closed_at(team_deal, alice):
    fields = {
        "owner": alice,
        "title": team_deal.title,
        "pipeline": team_deal.pipeline,
        "stage": team_deal.stage,
        "value": team_deal.value,
        "currency": "EUR",
        "person": None,
        "organization": None,
        "expected_close_date": None,
        "notes": "",
        "visibility": Visibility.TEAM,
    }
    services.update_deal(deal=team_deal, status=Deal.Status.WON, **fields)
    team_deal.refresh_from_db()
    won_at = team_deal.closed_at
    assert won_at is not None
    services.update_deal(deal=team_deal, status=Deal.Status.LOST, **fields)
    team_deal.refresh_from_db()
    assert team_deal.closed_at == won_at
    services.update_deal(deal=team_deal, status=Deal.Status.OPEN, **fields)
    team_deal.refresh_from_db()
    assert team_deal.closed_at is None


def test_create_deal_rejects_stage_from_another_pipeline_and_negative_value(alice, qualified, renewals_stage):
    with pytest.raises(ValidationError, match="not part of the pipeline"):
        services.create_deal(owner=alice, title="X", pipeline=qualified.pipeline, stage=renewals_stage)
    with pytest.raises(ValidationError, match="cannot be negative"):
        services.create_deal(owner=alice, title="X", pipeline=qualified.pipeline, stage=qualified, value=Decimal(-1))
    assert not Deal.objects.exists()


def test_delete_deal_requires_owner_or_admin(team_deal, bob, admin_user):
    with pytest.raises(PermissionDenied):
        services.delete_deal(deal=team_deal, user=bob)
    services.delete_deal(deal=team_deal, user=admin_user)
    assert not Deal.objects.exists()


# --- selectors ------------------------------------------------------------------------------------


def test_deal_visibility_persona_matrix(team_deal, alice, bob, charlie, admin_user):
    for user in (alice, bob, admin_user):
        assert selectors.get_deal_for_user(user, team_deal.pk) == team_deal
    with pytest.raises(Http404):
        selectors.get_deal_for_user(charlie, team_deal.pk)
    assert list(selectors.deal_list(charlie)) == []


def test_deal_list_filters_and_search(alice, qualified, proposal, renewals_stage):
    person = PersonFactory(owner=alice, first_name="Wile", last_name="Coyote")
    organization = OrganizationFactory(owner=alice, name="Acme Corporation")
    by_person = DealFactory(owner=alice, stage=qualified, title="First", person=person)
    by_org = DealFactory(owner=alice, stage=proposal, title="Second", organization=organization, status="won")
    renewal = DealFactory(owner=alice, stage=renewals_stage, title="Renewal 2027")
    assert set(selectors.deal_list(alice, status="open")) == {by_person, renewal}
    assert list(selectors.deal_list(alice, pipeline=renewals_stage.pipeline)) == [renewal]
    assert list(selectors.deal_list(alice, stage=proposal)) == [by_org]
    assert list(selectors.deal_list(alice, query="coyote")) == [by_person]
    assert list(selectors.deal_list(alice, query="acme corp")) == [by_org]
    assert list(selectors.deal_list(alice, query="renewal")) == [renewal]


def test_timeline_for_deal_is_a_list(team_deal, alice):
    assert selectors.timeline_for_deal(alice, team_deal) == []


# --- list page ------------------------------------------------------------------------------------


def test_anonymous_user_is_sent_to_login(client, db):
    for name in ("deals:deal_list", "deals:deal_create"):
        response = client.get(reverse(name))
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("account_login"))


def test_deal_list_success_outsider_and_wrong_method(team_deal, bob, charlie):
    response = client_for(bob).get(reverse("deals:deal_list"))
    assert response.status_code == 200
    assert "Anvils for Acme" in response.text and "1,200.50 EUR" in response.text
    assert "Anvils for Acme" not in client_for(charlie).get(reverse("deals:deal_list")).text
    assert client_for(bob).post(reverse("deals:deal_list")).status_code == 405


def test_deal_list_status_open_from_the_dashboard_link(alice, alice_client, qualified):
    DealFactory(owner=alice, stage=qualified, title="Still open")
    DealFactory(owner=alice, stage=qualified, title="Already won", status="won")
    response = alice_client.get(reverse("deals:deal_list"), {"status": "open"})
    assert "Still open" in response.text and "Already won" not in response.text
    assert '<option value="open" selected>' in response.text
    # A nonsense filter value from a hand-written URL is ignored, not an error.
    response = alice_client.get(reverse("deals:deal_list"), {"status": "bogus", "pipeline": "abc"})
    assert response.status_code == 200 and "Still open" in response.text and "Already won" in response.text


def test_deal_list_htmx_filter_returns_only_the_table(alice, alice_client, qualified, renewals_stage):
    DealFactory(owner=alice, stage=qualified, title="Sales deal")
    DealFactory(owner=alice, stage=renewals_stage, title="Renewal deal")
    response = alice_client.get(reverse("deals:deal_list"), {"pipeline": renewals_stage.pipeline_id}, **HTMX)
    assert response.status_code == 200
    assert "<html" not in response.text and 'name="q"' not in response.text
    assert "Renewal deal" in response.text and "Sales deal" not in response.text
    response = alice_client.get(reverse("deals:deal_list"), {"q": "sales"}, **HTMX)
    assert "Sales deal" in response.text and "Renewal deal" not in response.text


def test_deal_list_hides_the_name_of_a_person_not_shared(alice, bob, qualified):
    private_person = PersonFactory(owner=alice, first_name="Secret", last_name="Contact", visibility="owner")
    DealFactory(owner=bob, stage=qualified, title="Bob's deal", person=private_person)
    response = client_for(bob).get(reverse("deals:deal_list"))
    assert "Secret Contact" not in response.text
    assert "not shared" in response.text


def test_deal_list_paginates_without_n_plus_one(alice, alice_client, qualified, django_assert_max_num_queries):
    organization = OrganizationFactory(owner=alice)
    for _ in range(30):
        person = PersonFactory(owner=alice, first_name="", last_name="")
        PersonEmailFactory(person=person)
        DealFactory(owner=alice, stage=qualified, person=person, organization=organization)
    with django_assert_max_num_queries(10):
        response = alice_client.get(reverse("deals:deal_list"))
    assert len(DEAL_LINK.findall(response.text)) == 25
    assert "Page 1 of 2" in response.text


# --- detail ---------------------------------------------------------------------------------------


def test_deal_detail_success_outsider_and_wrong_method(team_deal, alice, bob, charlie):
    ProjectFactory(owner=alice, deal=team_deal, title="Anvil installation")
    response = client_for(bob).get(team_deal.get_absolute_url())
    assert response.status_code == 200
    assert "Anvils for Acme" in response.text and "Qualified" in response.text
    assert "Anvil installation" in response.text
    assert "No email conversations yet." in response.text
    assert client_for(charlie).get(team_deal.get_absolute_url()).status_code == 404
    assert client_for(bob).post(team_deal.get_absolute_url()).status_code == 405


# --- create / edit --------------------------------------------------------------------------------


def test_deal_create_form_defaults(alice_client, alice, qualified, proposal):
    response = alice_client.get(reverse("deals:deal_create"))
    assert response.status_code == 200
    assert f'<option value="{alice.pk}" selected>' in response.text
    assert f'<option value="{qualified.pk}" selected>Qualified</option>' in response.text
    assert 'hx-get="/deals/stages/"' in response.text


def test_deal_create_success(alice_client, alice, proposal):
    person = PersonFactory(owner=alice, first_name="Road", last_name="Runner")
    response = alice_client.post(
        reverse("deals:deal_create"), deal_form_data(proposal, owner=alice.pk, person=person.pk, status="won")
    )
    deal = Deal.objects.get(title="Rocket skates")
    assert response.status_code == 302 and response["Location"] == deal.get_absolute_url()
    assert deal.owner == alice and deal.stage == proposal and deal.person == person
    assert deal.currency == "USD" and deal.value == Decimal("500")
    assert deal.closed_at is not None


def test_deal_create_rejects_stage_pipeline_mismatch(alice_client, alice, qualified, renewals_stage):
    response = alice_client.post(
        reverse("deals:deal_create"), deal_form_data(qualified, stage=renewals_stage.pk, owner=alice.pk)
    )
    assert response.status_code == 200
    assert "Stage “Due” is not part of the pipeline “Sales”." in response.text
    assert not Deal.objects.exists()


def test_deal_create_rejects_negative_value_and_bad_currency(alice_client, alice, qualified):
    response = alice_client.post(
        reverse("deals:deal_create"), deal_form_data(qualified, value="-5", currency="euro", owner=alice.pk)
    )
    assert response.status_code == 200
    assert "Ensure this value is greater than or equal to 0." in response.text
    assert "Enter a three-letter currency code" in response.text
    assert not Deal.objects.exists()


def test_deal_form_offers_only_visible_people(alice, charlie, qualified):
    private_person = PersonFactory(owner=alice, visibility="owner")
    response = client_for(charlie).post(
        reverse("deals:deal_create"), deal_form_data(qualified, owner=charlie.pk, person=private_person.pk)
    )
    assert response.status_code == 200 and "Select a valid choice" in response.text
    assert not Deal.objects.exists()


def test_deal_edit_by_teammate_cannot_change_owner(team_deal, alice, bob, proposal):
    url = reverse("deals:deal_edit", args=[team_deal.pk])
    assert client_for(bob).get(url).status_code == 200
    response = client_for(bob).post(
        url, deal_form_data(proposal, title="Anvils, bigger", owner=bob.pk, value="2000", visibility="team")
    )
    assert response.status_code == 302
    team_deal.refresh_from_db()
    assert team_deal.title == "Anvils, bigger" and team_deal.stage == proposal
    assert team_deal.owner == alice


def test_deal_edit_outsider_and_wrong_method(team_deal, charlie, alice_client, qualified):
    url = reverse("deals:deal_edit", args=[team_deal.pk])
    assert client_for(charlie).post(url, deal_form_data(qualified)).status_code == 404
    assert alice_client.put(url).status_code == 405


def test_stage_options_for_the_dependent_select(alice_client, qualified, proposal, renewals_stage):
    response = alice_client.get(reverse("deals:stage_options"), {"pipeline": qualified.pipeline_id}, **HTMX)
    assert response.status_code == 200
    assert f'value="{qualified.pk}"' in response.text and f'value="{proposal.pk}"' in response.text
    assert f'value="{renewals_stage.pk}"' not in response.text
    assert "no stages" in alice_client.get(reverse("deals:stage_options"), {"pipeline": "x"}).text
    assert alice_client.post(reverse("deals:stage_options")).status_code == 405


# --- delete ---------------------------------------------------------------------------------------


def test_deal_delete_permissions(team_deal, bob, charlie, alice_client):
    url = reverse("deals:deal_delete", args=[team_deal.pk])
    assert client_for(bob).post(url).status_code == 403
    assert client_for(charlie).post(url).status_code == 404
    assert Deal.objects.filter(pk=team_deal.pk).exists()
    assert alice_client.get(url).status_code == 200
    response = alice_client.post(url)
    assert response.status_code == 302 and response["Location"] == reverse("deals:deal_list")
    assert not Deal.objects.filter(pk=team_deal.pk).exists()


def test_home_dashboard_lists_my_open_deals_without_leaking_private_links(team_deal, alice, bob, qualified):
    response = client_for(alice).get(reverse("home"))
    assert response.status_code == 200 and "Anvils for Acme" in response.text
    private_person = PersonFactory(owner=alice, first_name="Secret", last_name="Contact", visibility="owner")
    DealFactory(owner=bob, stage=qualified, title="Bob's own deal", person=private_person)
    response = client_for(bob).get(reverse("home"))
    assert "Bob&#x27;s own deal" in response.text
    assert "Secret Contact" not in response.text and "not shared" in response.text


def test_person_detail_with_many_deals_without_n_plus_one(
    alice, alice_client, qualified, django_assert_max_num_queries
):
    person = PersonFactory(owner=alice)
    organization = OrganizationFactory(owner=alice)
    for _ in range(30):
        DealFactory(owner=alice, stage=qualified, person=person, organization=organization)
    with django_assert_max_num_queries(14):
        response = alice_client.get(person.get_absolute_url())
    assert len(DEAL_LINK.findall(response.text)) == 30
