"""The CRM in a real browser (Playwright + Debian's chromium): create a deal and find it in the list."""

import re

import pytest

from conftest import browser_login


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_create_a_deal_through_the_form_and_find_it_in_the_list(page, alice):
    from playwright.sync_api import expect

    from contacts.models import Person, PersonEmail
    from deals.models import Deal, Pipeline, Stage

    sales = Pipeline.objects.create(name="Sales", order=1)
    Stage.objects.create(pipeline=sales, name="Qualified", order=1)
    proposal = Stage.objects.create(pipeline=sales, name="Proposal sent", order=2)
    renewals = Pipeline.objects.create(name="Renewals", order=2)
    Stage.objects.create(pipeline=renewals, name="Renewal due", order=1)
    person = Person.objects.create(owner=alice, first_name="Wile", last_name="Coyote")
    PersonEmail.objects.create(person=person, email="wile@acme.example", is_primary=True)

    browser_login(page, alice)
    page.click("nav.mainnav >> text=Deals")
    page.wait_for_url(re.compile(r"/deals/$"))
    page.click("text=New deal")
    page.wait_for_url(re.compile(r"/deals/new/$"))

    page.fill("#id_title", "Anvils for the desert")
    # The stage list follows the pipeline (htmx reloads the <option>s).
    page.select_option("#id_pipeline", label="Renewals")
    expect(page.locator("#id_stage option")).to_have_text(["Renewal due"])
    page.select_option("#id_pipeline", label="Sales")
    expect(page.locator("#id_stage option")).to_have_text(["Qualified", "Proposal sent"])
    page.select_option("#id_stage", label="Proposal sent")
    page.fill("#id_value", "1234.50")
    page.fill("#id_currency", "usd")
    page.select_option("#id_person", label="Wile Coyote")
    page.click("form.record-form button[type=submit]")

    expect(page.locator("h1")).to_have_text("Anvils for the desert")
    deal = Deal.objects.get(title="Anvils for the desert")
    assert (deal.stage, deal.owner, deal.person, deal.currency) == (proposal, alice, person, "USD")

    page.click("nav.mainnav >> text=Deals")
    rows = page.locator("#results table tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Anvils for the desert")
    expect(rows.first).to_contain_text("Proposal sent")
    expect(rows.first).to_contain_text("Wile Coyote")

    # Live search swaps only the results.
    page.fill("input[name=q]", "nothing like this")
    expect(page.locator("#results")).to_contain_text("No deal matches these filters.")
    page.fill("input[name=q]", "desert")
    expect(rows).to_have_count(1)
    expect(page.locator("h1")).to_have_text("Deals")
    page.screenshot(path="/tmp/h1-deals.png", full_page=True)
