"""The Django admin for CRM records, as support staff use it."""

import pytest
from django.urls import reverse

from conftest import client_for
from contacts.models import PersonEmail
from deals.models import Deal, Pipeline
from tests.factories import (
    DealFactory,
    LeadFactory,
    OrganizationDomainFactory,
    OrganizationFactory,
    PersonEmailFactory,
    PersonFactory,
    ProjectFactory,
    StageFactory,
)

CHANGELISTS = [
    "admin:contacts_person_changelist",
    "admin:contacts_personemail_changelist",
    "admin:contacts_organization_changelist",
    "admin:contacts_organizationdomain_changelist",
    "admin:deals_pipeline_changelist",
    "admin:deals_stage_changelist",
    "admin:deals_deal_changelist",
    "admin:leads_lead_changelist",
    "admin:projects_project_changelist",
]


@pytest.fixture
def support(db):
    from crm.models import User

    return User.objects.create_superuser(email="support@company.test", password="support-password-1")


@pytest.fixture
def support_client(support):
    return client_for(support)


@pytest.fixture
def records(alice):
    organization = OrganizationFactory(owner=alice, name="Acme Corporation")
    OrganizationDomainFactory(organization=organization, domain="acme.example")
    person = PersonFactory(owner=alice, first_name="Wile", last_name="Coyote", organization=organization)
    PersonEmailFactory(person=person, email="wile@acme.example")
    deal = DealFactory(owner=alice, person=person, organization=organization, title="Anvils")
    LeadFactory(owner=alice, person=person, title="Rocket lead")
    ProjectFactory(owner=alice, deal=deal, title="Anvil delivery")
    return {"organization": organization, "person": person, "deal": deal}


@pytest.mark.parametrize("url_name", CHANGELISTS)
def test_every_changelist_loads(url_name, support_client, records):
    assert support_client.get(reverse(url_name)).status_code == 200


def test_changelists_have_no_n_plus_one(support_client, alice, django_assert_max_num_queries):
    for _ in range(30):
        person = PersonFactory(owner=alice, first_name="", last_name="")
        PersonEmailFactory(person=person)
        DealFactory(owner=alice, person=person)
    for url_name in ("admin:contacts_person_changelist", "admin:deals_deal_changelist"):
        with django_assert_max_num_queries(15):
            assert support_client.get(reverse(url_name)).status_code == 200


def test_support_finds_a_person_by_any_address(support_client, records):
    response = support_client.get(reverse("admin:contacts_person_changelist"), {"q": "wile@acme"})
    assert "Wile Coyote" in response.text
    response = support_client.get(reverse("admin:deals_deal_changelist"), {"q": "wile@acme"})
    assert "Anvils" in response.text
    response = support_client.get(reverse("admin:contacts_organization_changelist"), {"q": "acme.example"})
    assert "Acme Corporation" in response.text


def test_change_pages_show_the_inlines(support_client, records):
    person_page = support_client.get(reverse("admin:contacts_person_change", args=[records["person"].pk]))
    assert "wile@acme.example" in person_page.text and "emails-TOTAL_FORMS" in person_page.text
    org_page = support_client.get(reverse("admin:contacts_organization_change", args=[records["organization"].pk]))
    assert "acme.example" in org_page.text and "domains-TOTAL_FORMS" in org_page.text
    pipeline = records["deal"].pipeline
    pipeline_page = support_client.get(reverse("admin:deals_pipeline_change", args=[pipeline.pk]))
    assert "stages-TOTAL_FORMS" in pipeline_page.text


def test_autocomplete_for_people(support_client, records):
    response = support_client.get(
        reverse("admin:autocomplete"),
        {"app_label": "deals", "model_name": "deal", "field_name": "person", "term": "wile"},
    )
    assert response.status_code == 200
    assert [item["text"] for item in response.json()["results"]] == ["Wile Coyote"]


def test_admin_adds_a_pipeline_with_stages(support_client):
    response = support_client.post(
        reverse("admin:deals_pipeline_add"),
        {
            "name": "Renewals",
            "order": "2",
            "stages-TOTAL_FORMS": "2",
            "stages-INITIAL_FORMS": "0",
            "stages-0-name": "Due",
            "stages-0-order": "1",
            "stages-0-probability": "50",
            "stages-1-name": "Signed",
            "stages-1-order": "2",
            "stages-1-probability": "100",
        },
    )
    assert response.status_code == 302
    pipeline = Pipeline.objects.get(name="Renewals")
    assert list(pipeline.stages.values_list("name", flat=True)) == ["Due", "Signed"]


def deal_admin_data(deal, **overrides):
    data = {
        "title": deal.title,
        "pipeline": deal.pipeline_id,
        "stage": deal.stage_id,
        "status": "open",
        "value": "10",
        "currency": "EUR",
        "person": "",
        "organization": "",
        "expected_close_date": "",
        "notes": "",
        "owner": deal.owner_id,
        "visibility": "company",
    }
    data.update(overrides)
    return data


def test_admin_deal_stage_must_belong_to_pipeline_and_close_date_follows_status(support_client, records):
    deal = records["deal"]
    other_stage = StageFactory(pipeline=Pipeline.objects.create(name="Other"), name="Elsewhere")
    url = reverse("admin:deals_deal_change", args=[deal.pk])
    response = support_client.post(url, deal_admin_data(deal, stage=other_stage.pk))
    assert response.status_code == 200
    assert "is not part of the pipeline" in response.text
    response = support_client.post(url, deal_admin_data(deal, status="won"))
    assert response.status_code == 302
    deal.refresh_from_db()
    assert deal.status == Deal.Status.WON and deal.closed_at is not None


def test_admin_person_email_inline_is_normalised_and_unique(support_client, records, alice):
    other = PersonFactory(owner=alice, first_name="Road", last_name="Runner")
    url = reverse("admin:contacts_person_change", args=[other.pk])
    data = {
        "first_name": "Road",
        "last_name": "Runner",
        "organization": "",
        "job_title": "",
        "phone": "",
        "notes": "",
        "owner": alice.pk,
        "visibility": "company",
        "emails-TOTAL_FORMS": "1",
        "emails-INITIAL_FORMS": "0",
        "emails-0-email": "WILE@Acme.example",
        "emails-0-is_primary": "on",
    }
    response = support_client.post(url, data)
    assert response.status_code == 200
    assert "already exists" in response.text
    data["emails-0-email"] = "Road@Acme.Example"
    assert support_client.post(url, data).status_code == 302
    assert PersonEmail.objects.get(person=other).email == "road@acme.example"


def test_admin_rejects_free_mail_domain(support_client, records):
    organization = records["organization"]
    url = reverse("admin:contacts_organizationdomain_add")
    response = support_client.post(url, {"organization": organization.pk, "domain": "GMAIL.com"})
    assert response.status_code == 200 and "free email provider" in response.text


def test_regular_users_cannot_use_the_admin(alice_client):
    response = alice_client.get(reverse("admin:contacts_person_changelist"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
