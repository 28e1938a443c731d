"""Issue 13: templates, signatures and smart fields (W3): who sees what, filling from the record and the
recipient, and user-written text never reaching a template engine."""

import json
from decimal import Decimal

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from conftest import client_for
from crm.models import Visibility
from mailsync.models import EmailTemplate, Signature
from mailsync.sending import smart_fields, template_selectors, template_services
from tests.factories import (
    DealFactory,
    OrganizationDomainFactory,
    OrganizationFactory,
    PersonEmailFactory,
    PersonFactory,
)
from tests.mail_factories import EmailAccountFactory

pytestmark = pytest.mark.django_db

PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
    b"\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82"
)


def make_template(owner, visibility=Visibility.OWNER, **fields):
    values = {"name": "Follow-up", "subject": "Hello {{person.first_name}}", "body_html": "<p>Hi</p>"}
    values.update(fields)
    return template_services.create_template(user=owner, visibility=visibility, **values)


@pytest.fixture
def world(alice):
    organization = OrganizationFactory(owner=alice, name="Acme & Sons", visibility=Visibility.COMPANY)
    OrganizationDomainFactory(organization=organization, domain="acme.example")
    ann = PersonFactory(owner=alice, first_name="Ann", last_name="Buyer", organization=organization, phone="+1 555")
    PersonEmailFactory(person=ann, email="ann@acme.example", is_primary=True)
    deal = DealFactory(owner=alice, title="Acme renewal", value=Decimal("12500"), currency="EUR", person=ann,
                       organization=organization)  # fmt: skip
    return {"organization": organization, "ann": ann, "deal": deal}


# -- visibility of templates


def test_templates_by_visibility_as_owner_teammate_outsider_and_admin(alice, bob, charlie, admin_user):
    private = make_template(alice, name="Private one")
    team = make_template(alice, Visibility.TEAM, name="Team one")
    company = make_template(alice, Visibility.COMPANY, name="Company one")
    names = {user.email: set(template_selectors.templates_for(user).values_list("name", flat=True))
             for user in (alice, bob, charlie, admin_user)}  # fmt: skip
    assert names[alice.email] == {"Private one", "Team one", "Company one"}
    assert names[bob.email] == {"Team one", "Company one"}
    assert names[charlie.email] == {"Company one"}
    # A private template is its author's own writing: an admin gets no wider view, like with private mail.
    assert names[admin_user.email] == {"Company one"}
    for user, template in ((bob, private), (charlie, team), (admin_user, private)):
        assert client_for(user).get(reverse("mailsync:email_template_edit", args=[template.pk])).status_code == 404
        response = client_for(user).post(reverse("mailsync:email_template_duplicate", args=[template.pk]))
        assert response.status_code == 404
    assert company.pk


def test_only_the_author_changes_or_deletes_a_shared_template(alice, bob):
    shared = make_template(alice, Visibility.TEAM)
    bob_client = client_for(bob)
    edit = reverse("mailsync:email_template_edit", args=[shared.pk])
    assert bob_client.get(edit).status_code == 404
    data = {"name": "Taken over", "subject": "x", "body_html": "", "visibility": "company"}
    assert bob_client.post(edit, data).status_code == 404
    assert bob_client.post(reverse("mailsync:email_template_delete", args=[shared.pk])).status_code == 404
    shared.refresh_from_db()
    assert shared.name == "Follow-up" and shared.visibility == Visibility.TEAM
    # ...but a teammate may make a private copy of it and change that.
    response = bob_client.post(reverse("mailsync:email_template_duplicate", args=[shared.pk]))
    copy = EmailTemplate.objects.get(owner=bob)
    assert response.status_code == 302 and response["Location"] == reverse(
        "mailsync:email_template_edit", args=[copy.pk]
    )
    assert copy.name == "Copy of Follow-up" and copy.visibility == Visibility.OWNER and copy.subject == shared.subject


def test_create_edit_search_and_delete_through_the_pages(alice_client, alice):
    response = alice_client.post(
        reverse("mailsync:email_template_create"),
        {"name": "Pricing", "subject": "Our prices\r\nBcc: evil@x.example", "visibility": "team",
         "body_html": '<p onclick="steal()">See <a href="javascript:alert(1)">this</a></p><script>x()</script>'},
    )  # fmt: skip
    assert response.status_code == 302
    template = EmailTemplate.objects.get(owner=alice)
    assert template.subject == "Our prices Bcc: evil@x.example"  # one line: no header can be injected
    assert "onclick" not in template.body_html and "script" not in template.body_html
    assert "javascript" not in template.body_html
    make_template(alice, name="Welcome", subject="Welcome aboard")
    listing = alice_client.get(reverse("mailsync:email_templates"), {"q": "pric"}, HTTP_HX_REQUEST="true")
    assert b"Pricing" in listing.content and b"Welcome" not in listing.content
    response = alice_client.post(
        reverse("mailsync:email_template_edit", args=[template.pk]),
        {"name": "Pricing 2026", "subject": "New prices", "body_html": "<p>Hi</p>", "visibility": "company"},
    )
    template.refresh_from_db()
    assert response.status_code == 302 and template.name == "Pricing 2026" and template.visibility == "company"
    confirm = alice_client.get(reverse("mailsync:email_template_delete", args=[template.pk]))
    assert b"for everyone you shared it with" in confirm.content
    alice_client.post(reverse("mailsync:email_template_delete", args=[template.pk]))
    assert not EmailTemplate.objects.filter(pk=template.pk).exists()


def test_a_template_needs_a_name_and_the_form_says_so(alice_client):
    response = alice_client.post(
        reverse("mailsync:email_template_create"), {"name": "  ", "subject": "", "body_html": "", "visibility": "owner"}
    )
    assert response.status_code == 200 and b"errorlist" in response.content
    assert not EmailTemplate.objects.exists()


def test_wrong_methods_and_anonymous_users(client, alice):
    template = make_template(alice)
    assert client.get(reverse("mailsync:email_templates")).status_code == 302  # to the login page
    alice_client = client_for(alice)
    assert alice_client.get(reverse("mailsync:email_template_duplicate", args=[template.pk])).status_code == 405
    assert alice_client.get(reverse("mailsync:sender_details")).status_code == 405
    assert alice_client.delete(reverse("mailsync:email_templates")).status_code == 405


# -- smart fields: safe rendering


@pytest.mark.parametrize(
    "source",
    [
        "{{ settings.SECRET_KEY }}",
        "{% load static %}{% debug %}",
        "{{ person.organization.owner.password }}",
        "{{ person.__class__ }}",
        "{{ request.user.password }}",
        "{{person.first_name.__globals__}}",
    ],
)
def test_template_syntax_that_is_no_field_stays_text(alice, world, source, settings):
    values = smart_fields.values_for(smart_fields.sources_for(alice, record=world["deal"]))
    rendered = smart_fields.render(source, values, in_html=True)
    assert rendered.text == source
    assert settings.SECRET_KEY not in rendered.text


def test_a_hostile_name_comes_out_as_text(alice):
    evil = PersonFactory(owner=alice, first_name="<img src=x onerror=alert(1)>", last_name='"><script>x</script>')
    PersonEmailFactory(person=evil, email="evil@hostile.example")
    values = smart_fields.values_for(smart_fields.sources_for(alice, recipients=["evil@hostile.example"]))
    body = smart_fields.render("<p>Dear {{person.full_name}}</p>", values, in_html=True).text
    assert "<img" not in body and "<script" not in body
    assert "&lt;img src=x onerror=alert(1)&gt; &quot;&gt;&lt;script&gt;" in body
    # In the subject (plain text, a header): the text itself, on one line.
    subject = smart_fields.render("Hi {{person.first_name}}", values, in_html=False).text
    assert subject == "Hi <img src=x onerror=alert(1)>"


def test_fields_fill_from_a_deal_with_its_person_and_organization(alice, world):
    account = EmailAccountFactory(user=alice, email_address="alice@company.test")
    template_services.update_sender_details(user=alice, job_title="Account executive", phone="+44 20 1234")
    sources = smart_fields.sources_for(alice, record=world["deal"], account=account)
    values = smart_fields.values_for(sources)
    text = (
        "{{person.first_name}} {{person.last_name}} <{{person.email}}> of {{organization.name}} "
        "({{organization.domain}}): {{deal.title}} for {{deal.value}} at {{deal.stage}}. "
        "{{sender.full_name}}, {{sender.job_title}}, {{sender.phone}}, {{sender.email}}"
    )
    rendered = smart_fields.render(text, values, in_html=False)
    assert rendered.text == (
        "Ann Buyer <ann@acme.example> of Acme & Sons (acme.example): Acme renewal for 12,500 EUR at Qualified. "
        "Alice Owner, Account executive, +44 20 1234, alice@company.test"
    )
    assert rendered.missing == ()
    html = smart_fields.render("<p>{{organization.name}}</p>", values, in_html=True).text
    assert html == "<p>Acme &amp; Sons</p>"


def test_the_recipient_is_the_person_and_their_only_open_deal_fills_the_deal(alice, world):
    values = smart_fields.values_for(
        smart_fields.sources_for(alice, recipients=["nobody@else.example", "ANN@acme.example"])
    )
    assert values["person.first_name"] == "Ann"
    assert values["deal.title"] == "Acme renewal"
    assert values["organization.name"] == "Acme & Sons"
    DealFactory(owner=alice, title="Second deal", person=world["ann"])
    values = smart_fields.values_for(smart_fields.sources_for(alice, recipients=["ann@acme.example"]))
    assert values["deal.title"] == ""  # two open deals: no guess


def test_fallbacks_and_missing_fields(alice):
    values = smart_fields.values_for(smart_fields.sources_for(alice, recipients=["stranger@unknown.example"]))
    rendered = smart_fields.render(
        "<p>Hi {{person.first_name|there}}, about {{ deal.title }} and {{Person.Last_Name}}</p>", values, in_html=True,
        mark_missing=True,
    )  # fmt: skip
    assert rendered.text.startswith("<p>Hi there, about ")
    assert rendered.missing == ("deal.title", "person.last_name")
    assert '<mark class="smart-field-missing" data-field="deal.title">{{ deal.title }}</mark>' in rendered.text
    assert smart_fields.fields_in("Subject {{deal.title}}", rendered.text, "{{nope.x}}") == [
        "deal.title",
        "person.last_name",
    ]
    hostile_fallback = smart_fields.render("{{person.first_name|<b>friend</b> &amp; co}}", values, in_html=True)
    assert hostile_fallback.text == "friend &amp; co"


def test_nothing_the_sender_may_not_see_fills_a_field(alice, charlie, world):
    world["deal"].visibility = Visibility.OWNER
    world["deal"].save()
    world["ann"].visibility = Visibility.OWNER
    world["ann"].save()
    values = smart_fields.values_for(
        smart_fields.sources_for(charlie, record=world["deal"], recipients=["ann@acme.example"])
    )
    assert values["deal.title"] == "" and values["person.first_name"] == ""
    assert values["organization.name"] == ""  # reached only through the deal and the person charlie cannot see


def test_the_composer_gets_a_filled_template(alice_client, alice, world):
    template = make_template(
        alice, subject="Next steps for {{deal.title}}", body_html="<p>Hi {{person.first_name}}, {{lead.title}}</p>"
    )
    response = alice_client.get(
        reverse("mailsync:template_fill", args=[template.pk]), {"record": f"deal:{world['deal'].pk}"}
    )
    data = json.loads(response.content)
    assert data["subject"] == "Next steps for Acme renewal"
    assert data["body_html"].startswith(
        '<p dir="auto">Hi Ann, <mark class="smart-field-missing" data-field="lead.title">'
    )
    assert data["missing"] == [{"field": "lead.title", "label": "Lead: Title"}]
    # A record id that is not a number, or one the user cannot see, fills nothing (and is no error).
    for record in ("deal:²", "deal:999999", "user:1"):
        response = alice_client.get(reverse("mailsync:template_fill", args=[template.pk]), {"record": record})
        assert response.status_code == 200
        assert json.loads(response.content)["subject"] == "Next steps for {{deal.title}}"


def test_a_private_template_is_not_filled_for_someone_else(alice, charlie):
    template = make_template(alice)
    response = client_for(charlie).get(reverse("mailsync:template_fill", args=[template.pk]))
    assert response.status_code == 404


# -- signatures


def test_signatures_per_account_with_one_default_each(alice):
    account = EmailAccountFactory(user=alice, email_address="alice@company.test")
    first = template_services.save_signature(
        user=alice,
        account=account,
        name="Full",
        body_html="<p>Alice</p>",
        default_for_new=True,
        default_for_replies=True,
    )
    second = template_services.save_signature(
        user=alice,
        account=account,
        name="Short",
        body_html="<p>A.</p>",
        default_for_new=False,
        default_for_replies=True,
    )
    first.refresh_from_db()
    assert first.is_default_for_new and not first.is_default_for_replies
    assert template_selectors.default_signature(account, reply=True) == second
    assert template_selectors.default_signature(account, reply=False) == first


def test_only_the_account_owner_manages_its_signatures(alice, bob, admin_user):
    account = EmailAccountFactory(user=alice, email_address="alice@company.test")
    signature = template_services.save_signature(
        user=alice,
        account=account,
        name="Full",
        body_html="<p>Alice</p>",
        default_for_new=True,
        default_for_replies=False,
    )
    for user in (bob, admin_user):
        other = client_for(user)
        assert other.get(reverse("mailsync:signature_create", args=[account.pk])).status_code == 404
        assert other.get(reverse("mailsync:signature_edit", args=[signature.pk])).status_code == 404
        assert other.post(reverse("mailsync:signature_delete", args=[signature.pk])).status_code == 404
    assert Signature.objects.filter(pk=signature.pk).exists()


def test_a_signature_image_is_checked_stored_and_shown_only_to_its_owner(alice_client, alice, bob, tmp_path, settings):
    settings.MEDIA_ROOT = str(tmp_path)
    account = EmailAccountFactory(user=alice, email_address="alice@company.test")
    signature = template_services.save_signature(
        user=alice, account=account, name="Logo", body_html="", default_for_new=True, default_for_replies=False
    )
    upload_url = reverse("mailsync:signature_image_upload", args=[signature.pk])
    fake = SimpleUploadedFile("logo.png", b"<svg onload=alert(1)>", content_type="image/png")
    response = alice_client.post(upload_url, {"image": fake})
    assert response.status_code == 400 and "PNG, JPEG, GIF or WebP" in json.loads(response.content)["error"]
    response = alice_client.post(upload_url, {"image": SimpleUploadedFile("logo.png", PNG, content_type="image/png")})
    url = json.loads(response.content)["url"]
    shown = alice_client.get(url)
    assert (
        shown.status_code == 200 and shown["Content-Type"] == "image/png" and b"".join(shown.streaming_content) == PNG
    )
    assert client_for(bob).get(url).status_code == 404
    assert client_for(bob).post(upload_url, {"image": SimpleUploadedFile("l.png", PNG)}).status_code == 404


def test_the_pages_render_for_a_user_with_and_without_accounts(alice_client, alice, bob):
    make_template(alice, Visibility.TEAM, name="Shared <b>one</b>")
    page = alice_client.get(reverse("mailsync:email_templates"))
    assert page.status_code == 200 and b"Shared &lt;b&gt;one&lt;/b&gt;" in page.content
    assert b"{{person.first_name|there}}" in page.content
    assert b"Connect a mail account first" in alice_client.get(reverse("mailsync:signatures")).content
    account = EmailAccountFactory(user=alice, email_address="alice@company.test")
    page = alice_client.get(reverse("mailsync:signatures"))
    assert account.email_address.encode() in page.content
    form = alice_client.get(reverse("mailsync:signature_create", args=[account.pk]))
    assert b"Insert a smart field" in form.content and b"Save the signature first" in form.content
    bob_page = client_for(bob).get(reverse("mailsync:email_templates"))
    assert b"by Alice Owner" in bob_page.content and b"Edit</a>" not in bob_page.content


def test_a_message_about_to_be_sent_is_filled_for_its_recipients_and_says_what_is_missing(alice, world):
    filled = smart_fields.fill_message(
        alice,
        subject="About {{deal.title}}",
        body_html="<p>Hi {{person.first_name}}, {{project.title|our project}} {{lead.source}}</p>",
        recipients=["ann@acme.example"],
    )
    assert filled.subject == "About Acme renewal"
    assert filled.body_html == "<p>Hi Ann, our project {{lead.source}}</p>"
    assert filled.missing == ("lead.source",)
    assert "Lead: Source" in smart_fields.missing_fields_message(filled.missing)


def test_the_signature_field_is_the_signatures_text_without_links_to_this_server(alice):
    account = EmailAccountFactory(user=alice, email_address="alice@company.test")
    signature = template_services.save_signature(
        user=alice,
        account=account,
        name="Logo",
        body_html='<p>Alice</p><p><img src="/mail/signature-images/7/" alt=""></p>',
        default_for_new=True,
        default_for_replies=False,
    )
    values = smart_fields.values_for(smart_fields.sources_for(alice, account=account, signature=signature))
    rendered = smart_fields.render("<div>{{sender.signature}}</div>", values, in_html=True).text
    assert "Alice" in rendered and "signature-images" not in rendered
    assert smart_fields.render("{{sender.signature}}", values, in_html=False).text == "Alice"
    # Without a signature named, the From account's default one.
    values = smart_fields.values_for(smart_fields.sources_for(alice, account=account))
    assert smart_fields.render("{{sender.signature}}", values, in_html=False).text == "Alice"
