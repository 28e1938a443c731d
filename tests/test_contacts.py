"""People and organizations: services, selectors and pages, by persona.

alice owns records shared with her team (Sales); bob is her teammate; charlie (Support) is an outsider;
admin_user is a company admin.
"""

import re

import pytest
from django.core.exceptions import ValidationError
from django.http import Http404
from django.urls import reverse

from conftest import client_for
from contacts import selectors, services
from contacts.models import Organization, OrganizationDomain, Person, PersonEmail
from crm.models import Visibility
from tests.factories import (
    DealFactory,
    LeadFactory,
    OrganizationDomainFactory,
    OrganizationFactory,
    PersonEmailFactory,
    PersonFactory,
    ProjectFactory,
)

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def ann(alice):
    """A person alice owns and shares with her team."""
    person = services.create_person(
        owner=alice,
        first_name="Ann",
        last_name="Example",
        emails=["Ann@Example.com", "ann.private@home.example"],
        visibility=Visibility.TEAM,
    )
    return person


@pytest.fixture
def acme(alice):
    return services.create_organization(
        owner=alice, name="Acme Corporation", domains=["ACME.example"], visibility=Visibility.TEAM
    )


def person_form_data(**overrides):
    data = {
        "first_name": "Zoe",
        "last_name": "Newcomer",
        "emails": "zoe@newco.example",
        "organization": "",
        "job_title": "",
        "phone": "",
        "visibility": "company",
        "notes": "",
    }
    data.update(overrides)
    return data


def organization_form_data(**overrides):
    data = {
        "name": "Newco",
        "domains": "newco.example",
        "website": "",
        "address": "",
        "visibility": "company",
        "notes": "",
    }
    data.update(overrides)
    return data


# --- services -------------------------------------------------------------------------------------


def test_create_person_stores_normalised_addresses_first_is_primary(ann):
    emails = list(ann.emails.order_by("-is_primary", "email").values_list("email", "is_primary"))
    assert emails == [("ann@example.com", True), ("ann.private@home.example", False)]


def test_update_person_replaces_the_address_set(ann, alice):
    services.update_person(
        person=ann,
        owner=alice,
        first_name="Ann",
        last_name="Example",
        emails=["new@example.com", "ANN@example.com"],
        organization=None,
        job_title="",
        phone="",
        notes="",
        visibility=Visibility.TEAM,
    )
    assert dict(PersonEmail.objects.filter(person=ann).values_list("email", "is_primary")) == {
        "new@example.com": True,
        "ann@example.com": False,
    }


def test_set_person_emails_refuses_an_address_of_someone_else(ann, alice):
    other = services.create_person(owner=alice, first_name="Other")
    with pytest.raises(ValidationError) as raised:
        services.set_person_emails(person=other, emails=["ANN@example.COM"])
    assert "ann@example.com already belongs to another person" in str(raised.value)
    assert PersonEmail.objects.get(email="ann@example.com").person == ann


def test_organization_domains_are_normalised_unique_and_not_free_mail(acme, alice):
    assert list(acme.domains.values_list("domain", flat=True)) == ["acme.example"]
    with pytest.raises(ValidationError, match="free email provider"):
        services.create_organization(owner=alice, name="Gmail users", domains=["gmail.com"])
    with pytest.raises(ValidationError, match="already used"):
        services.create_organization(owner=alice, name="Acme copy", domains=["acme.example"])
    assert not Organization.objects.filter(name__in=["Gmail users", "Acme copy"]).exists()


def test_delete_person_only_by_owner_or_admin(ann, bob, admin_user):
    from django.core.exceptions import PermissionDenied

    with pytest.raises(PermissionDenied):
        services.delete_person(person=ann, user=bob)
    services.delete_person(person=ann, user=admin_user)
    assert not Person.objects.filter(pk=ann.pk).exists()
    assert not PersonEmail.objects.filter(email="ann@example.com").exists()


# --- selectors ------------------------------------------------------------------------------------


def test_team_visibility_persona_matrix(ann, bob, charlie, admin_user, alice):
    assert selectors.get_person_for_user(alice, ann.pk) == ann
    assert selectors.get_person_for_user(bob, ann.pk) == ann
    assert selectors.get_person_for_user(admin_user, ann.pk) == ann
    with pytest.raises(Http404):
        selectors.get_person_for_user(charlie, ann.pk)
    assert list(selectors.person_list(charlie)) == []


def test_person_search_matches_names_and_any_address(ann, alice):
    PersonFactory(owner=alice, first_name="Bert", last_name="Other")
    assert list(selectors.person_list(alice, query="EXAMPLE ann")) == [ann]
    assert list(selectors.person_list(alice, query="home.example")) == [ann]
    assert list(selectors.person_list(alice, query="bert")) != [ann]
    assert list(selectors.person_list(alice, query="nobody-matches")) == []


def test_organization_search_matches_name_and_domain(acme, alice):
    OrganizationFactory(owner=alice, name="Globex")
    assert list(selectors.organization_list(alice, query="acme.exa")) == [acme]
    assert list(selectors.organization_list(alice, query="corporation")) == [acme]


def test_linked_organization_reads_as_none_when_not_shared(alice, charlie):
    private_org = OrganizationFactory(owner=alice, visibility=Visibility.OWNER, name="Secret Org")
    person = PersonFactory(owner=charlie, organization=private_org)
    shown = selectors.get_person_for_user(charlie, person.pk)
    assert shown.organization is None
    assert shown.organization_id == private_org.pk


def test_timeline_selectors_return_lists(ann, acme, alice):
    assert selectors.timeline_for_person(alice, ann) == []
    assert selectors.timeline_for_organization(alice, acme) == []


# --- person pages ---------------------------------------------------------------------------------


def test_anonymous_user_is_sent_to_login(client, db):
    for url in (reverse("contacts:person_list"), reverse("contacts:organization_list")):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("account_login"))


def test_person_list_success_and_outsider_sees_nothing(ann, bob, charlie):
    response = client_for(bob).get(reverse("contacts:person_list"))
    assert response.status_code == 200
    assert "Ann Example" in response.text
    assert "ann@example.com" in response.text
    assert "<html" in response.text
    response = client_for(charlie).get(reverse("contacts:person_list"))
    assert "Ann Example" not in response.text


def test_person_list_wrong_method(alice_client):
    assert alice_client.post(reverse("contacts:person_list")).status_code == 405


def test_person_list_htmx_search_returns_only_the_table(ann, alice_client, alice):
    PersonFactory(owner=alice, first_name="Bert", last_name="Other")
    response = alice_client.get(reverse("contacts:person_list"), {"q": "ann"}, **HTMX)
    assert response.status_code == 200
    assert "<html" not in response.text
    assert 'class="topbar"' not in response.text
    assert "Ann Example" in response.text
    assert "Bert Other" not in response.text
    assert "HX-Request" in response["Vary"]
    # A boosted navigation (link click) gets the full page.
    boosted = alice_client.get(reverse("contacts:person_list"), HTTP_HX_REQUEST="true", HTTP_HX_BOOSTED="true")
    assert "<html" in boosted.text
    # htmx restoring a page missing from its history cache needs the whole page too.
    restore = alice_client.get(
        reverse("contacts:person_list"), {"q": "ann"}, HTTP_HX_REQUEST="true", HTTP_HX_HISTORY_RESTORE_REQUEST="true"
    )
    assert "<html" in restore.text


def test_person_list_search_box_is_live(alice_client):
    response = alice_client.get(reverse("contacts:person_list"))
    assert 'hx-trigger="input changed delay:300ms, search"' in response.text
    assert 'hx-target="#results"' in response.text


def test_person_list_paginates_25_per_page_without_n_plus_one(alice, alice_client, django_assert_max_num_queries):
    organization = OrganizationFactory(owner=alice)
    for number in range(30):
        person = PersonFactory(owner=alice, first_name=f"P{number:02d}", last_name="Many", organization=organization)
        PersonEmailFactory(person=person)
    with django_assert_max_num_queries(8):
        response = alice_client.get(reverse("contacts:person_list"))
    assert response.status_code == 200
    assert len(re.findall(r'href="/people/\d+/"', response.text)) == 25
    assert "Page 1 of 2" in response.text
    second = alice_client.get(reverse("contacts:person_list"), {"page": 2})
    assert len(re.findall(r'href="/people/\d+/"', second.text)) == 5


def test_person_detail_shows_fields_related_records_and_timeline(ann, alice, bob, charlie):
    deal = DealFactory(owner=alice, person=ann, title="Visible anvil deal", visibility=Visibility.TEAM)
    DealFactory(owner=charlie, person=ann, title="Private charlie deal", visibility=Visibility.OWNER)
    LeadFactory(owner=alice, person=ann, title="Ann lead")
    ProjectFactory(owner=alice, person=ann, title="Ann project")
    response = client_for(bob).get(ann.get_absolute_url())
    assert response.status_code == 200
    text = response.text
    assert "ann@example.com" in text and "ann.private@home.example" in text
    assert deal.title in text
    assert "Private charlie deal" not in text
    assert "Ann lead" in text and "Ann project" in text
    assert "Timeline" in text and "No email conversations yet." in text
    # bob is not the owner: no delete button.
    assert reverse("contacts:person_delete", args=[ann.pk]) not in text
    owner_view = client_for(alice).get(ann.get_absolute_url())
    assert reverse("contacts:person_delete", args=[ann.pk]) in owner_view.text


def test_person_detail_outsider_404_and_wrong_method(ann, charlie, alice_client):
    assert client_for(charlie).get(ann.get_absolute_url()).status_code == 404
    assert alice_client.post(ann.get_absolute_url()).status_code == 405
    assert alice_client.get(reverse("contacts:person_detail", args=[999999])).status_code == 404


def test_timeline_partial_renders_threads_defensively():
    from datetime import UTC, datetime

    from django.template.loader import render_to_string

    html = render_to_string(
        "partials/timeline.html",
        {
            "timeline_threads": [
                {"subject": "Quote for anvils", "last_message_at": datetime(2026, 3, 1, 9, 30, tzinfo=UTC)},
                {"snippet": "no subject here"},
            ]
        },
    )
    assert "Quote for anvils" in html and "1 Mar 2026" in html
    assert "(no subject)" in html and "no subject here" in html
    assert "No email conversations yet." in render_to_string("partials/timeline.html", {"timeline_threads": []})


def test_person_create_success(alice_client, alice, acme):
    response = alice_client.get(reverse("contacts:person_create"))
    assert response.status_code == 200 and 'name="emails"' in response.text
    response = alice_client.post(
        reverse("contacts:person_create"),
        person_form_data(emails="Zoe@NewCo.example\nzoe.alt@newco.example", organization=acme.pk, owner=alice.pk),
    )
    person = Person.objects.get(first_name="Zoe")
    assert response.status_code == 302 and response["Location"] == person.get_absolute_url()
    assert person.owner == alice and person.organization == acme
    assert person.primary_email == "zoe@newco.example"
    assert person.emails.count() == 2


def test_person_create_owner_defaults_to_current_user(alice_client, alice):
    response = alice_client.get(reverse("contacts:person_create"))
    assert f'<option value="{alice.pk}" selected>' in response.text


def test_person_create_reports_duplicate_email_with_owner_name(ann, alice_client):
    response = alice_client.post(reverse("contacts:person_create"), person_form_data(emails="ANN@example.com"))
    assert response.status_code == 200
    assert "ann@example.com already belongs to Ann Example." in response.text
    assert not Person.objects.filter(first_name="Zoe").exists()


def test_duplicate_email_of_a_person_not_shared_does_not_reveal_the_name(ann, charlie):
    response = client_for(charlie).post(reverse("contacts:person_create"), person_form_data(emails="ann@example.com"))
    assert response.status_code == 200
    assert "ann@example.com already belongs to another person (not shared with you)." in response.text
    assert "Ann Example" not in response.text


def test_person_create_rejects_bad_addresses_and_empty_person(alice_client):
    response = alice_client.post(
        reverse("contacts:person_create"), person_form_data(emails="ok@example.com\nnot-an-address")
    )
    assert "“not-an-address” is not a valid email address." in response.text
    response = alice_client.post(
        reverse("contacts:person_create"), person_form_data(first_name="", last_name="", emails="")
    )
    assert "Give the person a name or at least one email address." in response.text
    assert not Person.objects.exists()


def test_person_form_offers_only_visible_organizations(acme, charlie):
    response = client_for(charlie).post(reverse("contacts:person_create"), person_form_data(organization=acme.pk))
    assert response.status_code == 200
    assert "Select a valid choice" in response.text
    assert not Person.objects.filter(first_name="Zoe").exists()


def test_person_edit_by_teammate(ann, bob, alice):
    client = client_for(bob)
    assert client.get(reverse("contacts:person_edit", args=[ann.pk])).status_code == 200
    response = client.post(
        reverse("contacts:person_edit", args=[ann.pk]),
        person_form_data(first_name="Anne", last_name="Example", emails="ann@example.com", visibility="team"),
    )
    assert response.status_code == 302
    ann.refresh_from_db()
    assert ann.first_name == "Anne"
    # bob may edit, but not give alice's record away: the owner field is disabled for him.
    assert ann.owner == alice
    assert list(ann.emails.values_list("email", flat=True)) == ["ann@example.com"]


def test_person_edit_keeps_a_link_to_an_organization_the_editor_cannot_see(alice, bob):
    private_org = OrganizationFactory(owner=alice, visibility=Visibility.OWNER)
    person = PersonFactory(owner=alice, organization=private_org, visibility=Visibility.TEAM)
    response = client_for(bob).post(
        reverse("contacts:person_edit", args=[person.pk]),
        person_form_data(first_name="Kept", emails="", organization=private_org.pk, visibility="team"),
    )
    assert response.status_code == 302
    person.refresh_from_db()
    assert person.organization == private_org


def test_person_edit_outsider_404_and_wrong_method(ann, charlie, alice_client):
    assert client_for(charlie).get(reverse("contacts:person_edit", args=[ann.pk])).status_code == 404
    assert (
        client_for(charlie).post(reverse("contacts:person_edit", args=[ann.pk]), person_form_data()).status_code == 404
    )
    assert alice_client.put(reverse("contacts:person_edit", args=[ann.pk])).status_code == 405


def test_person_delete_confirmation_then_delete_by_owner(ann, alice_client):
    url = reverse("contacts:person_delete", args=[ann.pk])
    response = alice_client.get(url)
    assert response.status_code == 200 and "cannot be undone" in response.text
    assert Person.objects.filter(pk=ann.pk).exists()
    response = alice_client.post(url)
    assert response.status_code == 302 and response["Location"] == reverse("contacts:person_list")
    assert not Person.objects.filter(pk=ann.pk).exists()


def test_person_delete_refused_for_non_owner_and_outsider(ann, bob, charlie, admin_user):
    url = reverse("contacts:person_delete", args=[ann.pk])
    assert client_for(bob).get(url).status_code == 403
    assert client_for(bob).post(url).status_code == 403
    assert client_for(charlie).post(url).status_code == 404
    assert client_for(bob).delete(url).status_code == 405
    assert Person.objects.filter(pk=ann.pk).exists()
    assert client_for(admin_user).post(url).status_code == 302
    assert not Person.objects.filter(pk=ann.pk).exists()


# --- organization pages ---------------------------------------------------------------------------


def test_organization_list_success_search_and_htmx(acme, bob, charlie, alice_client):
    response = client_for(bob).get(reverse("contacts:organization_list"))
    assert response.status_code == 200 and "Acme Corporation" in response.text and "acme.example" in response.text
    assert "Acme Corporation" not in client_for(charlie).get(reverse("contacts:organization_list")).text
    partial = alice_client.get(reverse("contacts:organization_list"), {"q": "acme.example"}, **HTMX)
    assert "<html" not in partial.text and "Acme Corporation" in partial.text
    empty = alice_client.get(reverse("contacts:organization_list"), {"q": "zzz"}, **HTMX)
    assert "No organization matches this search." in empty.text
    assert alice_client.post(reverse("contacts:organization_list")).status_code == 405


def test_organization_list_without_n_plus_one(alice, alice_client, django_assert_max_num_queries):
    for _ in range(30):
        OrganizationDomainFactory(organization=OrganizationFactory(owner=alice))
    with django_assert_max_num_queries(7):
        response = alice_client.get(reverse("contacts:organization_list"))
    assert len(re.findall(r'href="/organizations/\d+/"', response.text)) == 25


def test_organization_detail_shows_people_deals_and_timeline(acme, alice, bob, charlie):
    PersonFactory(owner=alice, organization=acme, first_name="Wile", last_name="Coyote")
    PersonFactory(owner=charlie, organization=acme, first_name="Hidden", last_name="Person", visibility="owner")
    DealFactory(owner=alice, organization=acme, title="Anvils")
    response = client_for(bob).get(acme.get_absolute_url())
    assert response.status_code == 200
    assert "Wile Coyote" in response.text and "Anvils" in response.text
    assert "Hidden Person" not in response.text
    assert "No email conversations yet." in response.text
    assert client_for(charlie).get(acme.get_absolute_url()).status_code == 404
    assert client_for(bob).post(acme.get_absolute_url()).status_code == 405


def test_organization_create_success(alice_client, alice):
    response = alice_client.post(
        reverse("contacts:organization_create"),
        organization_form_data(domains="@NewCo.example\nsales@newco-group.example", owner=alice.pk),
    )
    organization = Organization.objects.get(name="Newco")
    assert response.status_code == 302 and response["Location"] == organization.get_absolute_url()
    assert sorted(organization.domains.values_list("domain", flat=True)) == ["newco-group.example", "newco.example"]


def test_organization_create_rejects_free_mail_and_taken_domains(acme, alice_client, alice):
    response = alice_client.post(
        reverse("contacts:organization_create"),
        organization_form_data(domains="gmail.com\nacme.example\nnot a domain!", owner=alice.pk),
    )
    assert response.status_code == 200
    assert "gmail.com is a free email provider" in response.text
    assert "acme.example is already used by Acme Corporation." in response.text
    assert "“domain!” is not a valid email domain." in response.text
    assert not Organization.objects.filter(name="Newco").exists()


def test_organization_edit_by_teammate_and_outsider(acme, bob, charlie):
    url = reverse("contacts:organization_edit", args=[acme.pk])
    response = client_for(bob).post(
        url, organization_form_data(name="Acme Corp", domains="acme.example\nacme.test", visibility="team")
    )
    assert response.status_code == 302
    acme.refresh_from_db()
    assert acme.name == "Acme Corp"
    assert set(OrganizationDomain.objects.filter(organization=acme).values_list("domain", flat=True)) == {
        "acme.example",
        "acme.test",
    }
    assert client_for(charlie).get(url).status_code == 404
    assert client_for(bob).patch(url).status_code == 405


def test_organization_delete_permissions(acme, bob, charlie, alice_client):
    person = PersonFactory(owner=bob, organization=acme)
    url = reverse("contacts:organization_delete", args=[acme.pk])
    assert client_for(bob).post(url).status_code == 403
    assert client_for(charlie).post(url).status_code == 404
    assert alice_client.get(url).status_code == 200
    assert alice_client.post(url).status_code == 302
    assert not Organization.objects.filter(pk=acme.pk).exists()
    person.refresh_from_db()
    assert person.organization is None
