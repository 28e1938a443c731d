"""Linking conversations to CRM records (SPEC L1-L5, L7): rules, reasons, stickiness, retroactivity."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from contacts.models import PersonEmail
from crm.models import Visibility
from deals.models import Deal
from leads.models import Lead
from mailsync.linking.rules import (
    MASS_EMAIL_PARTICIPANTS,
    link_threads,
    relink_for_addresses,
    relink_for_domains,
    relink_for_organization,
    relink_for_person,
    relink_for_record,
    suggestions_for_thread,
)
from mailsync.models import MailSettings, ThreadLink
from mailsync.workspace import conversation_services
from projects.models import Project
from tests.factories import (
    DealFactory,
    LeadFactory,
    OrganizationDomainFactory,
    OrganizationFactory,
    PersonEmailFactory,
    PersonFactory,
    ProjectFactory,
)
from tests.mail_factories import (
    AccountAddressFactory,
    EmailAccountFactory,
    create_message,
    create_thread,
    fast_password_hashing,
)

pytestmark = pytest.mark.django_db

ANN = "ann@acme.example"


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    fast_password_hashing(settings)


def make_person(owner, email=ANN, first="Ann", last="Smith", **fields):
    person = PersonFactory(owner=owner, first_name=first, last_name=last, **fields)
    PersonEmailFactory(person=person, email=email)
    return person


def links(thread, **filters):
    return ThreadLink.objects.filter(thread=thread, **filters)


def linked_deals(thread):
    return set(links(thread, state=ThreadLink.State.LINKED, deal__isnull=False).values_list("deal_id", flat=True))


def suggested_deals(thread):
    return set(links(thread, state=ThreadLink.State.SUGGESTED, deal__isnull=False).values_list("deal_id", flat=True))


# --- People and organizations ---------------------------------------------------------------------------


def test_participant_address_links_person_with_rule_and_reason(alice):
    ann = make_person(alice)
    thread = create_thread(alice, sender="Ann Smith <Ann@ACME.example>")
    link_threads([thread.pk])
    link = links(thread, person=ann).get()
    assert link.state == ThreadLink.State.LINKED
    assert link.rule == "person_address"
    assert link.reason == "ann@acme.example is Ann Smith's address"


def test_any_address_of_a_person_and_any_role_links_them(alice):
    ann = make_person(alice)
    PersonEmailFactory(person=ann, email="ann.private@mailbox.example")
    sent = create_thread(alice, sender=alice.email, to=["someone@else.example"])
    create_message(sent, sender=alice.email, to=["x@else.example"], cc=["ann.private@mailbox.example"])
    link_threads([sent.pk])
    assert links(sent, person=ann, state=ThreadLink.State.LINKED).exists()


def test_thread_owner_own_addresses_never_link(alice):
    account = EmailAccountFactory(user=alice)
    AccountAddressFactory(account=account, address="alice.alias@company.test")
    # Somebody recorded Alice's alias as a contact: her own mail must not all land on that record.
    make_person(alice, email="alice.alias@company.test", first="Alice", last="Alias")
    thread = create_thread(alice, sender="stranger@nowhere.example", to=["alice.alias@company.test"])
    link_threads([thread.pk])
    assert not links(thread).exists()


def test_organization_by_exact_domain_and_free_mail_is_ignored(alice):
    acme = OrganizationFactory(owner=alice, name="Acme")
    OrganizationDomainFactory(organization=acme, domain="acme.example")
    gmail_org = OrganizationFactory(owner=alice, name="Someone put gmail here")
    OrganizationDomainFactory(organization=gmail_org, domain="gmail.com")
    thread = create_thread(alice, sender="sales@acme.example", cc=["friend@gmail.com", "x@eu.acme.example"])
    link_threads([thread.pk])
    link = links(thread, organization=acme).get()
    assert (link.state, link.rule) == (ThreadLink.State.LINKED, "org_domain")
    assert link.reason == "acme.example is a domain of Acme"
    assert not links(thread, organization=gmail_org).exists()
    assert links(thread).count() == 1


def test_linked_person_brings_their_organization(alice):
    globex = OrganizationFactory(owner=alice, name="Globex")
    ann = make_person(alice, email="ann@gmail.com", organization=globex)
    thread = create_thread(alice, sender="ann@gmail.com")
    link_threads([thread.pk])
    link = links(thread, organization=globex).get()
    assert (link.rule, link.reason) == ("person_organization", "Ann Smith works at Globex")
    assert links(thread, person=ann, state=ThreadLink.State.LINKED).exists()


def test_only_records_the_thread_owner_may_see_are_linked(alice, bob, charlie):
    secret = make_person(charlie, visibility=Visibility.OWNER)
    DealFactory(owner=charlie, person=secret, visibility=Visibility.OWNER)
    thread = create_thread(alice, sender=ANN)
    link_threads([thread.pk])
    assert not links(thread).exists()

    team_person = make_person(bob, email="tim@team.example", visibility=Visibility.TEAM)
    other = create_thread(alice, sender="tim@team.example")
    link_threads([other.pk])
    assert links(other, person=team_person).exists()


def test_deleted_messages_no_longer_count(alice):
    ann = make_person(alice)
    thread = create_thread(alice, sender="someone@other.example")
    message = create_message(thread, sender=ANN, to=[alice.email])
    link_threads([thread.pk])
    assert links(thread, person=ann).exists()
    message.deleted_at = timezone.now()
    message.save(update_fields=["deleted_at"])
    link_threads([thread.pk])
    assert not links(thread, person=ann).exists()


# --- Deals, leads and projects (L2, L3) -----------------------------------------------------------------


def test_single_open_deal_is_linked_with_rule_naming_the_person(alice):
    ann = make_person(alice)
    deal = DealFactory(owner=alice, person=ann, title="Big order")
    DealFactory(owner=alice, person=ann, status=Deal.Status.WON)
    thread = create_thread(alice, sender=ANN)
    link_threads([thread.pk])
    link = links(thread, deal=deal).get()
    assert (link.state, link.rule) == (ThreadLink.State.LINKED, "single_open_deal")
    assert "Ann Smith" in link.reason
    assert linked_deals(thread) == {deal.pk}
    assert not suggested_deals(thread)


def test_several_open_deals_link_none_and_suggest_all(alice, bob):
    ann = make_person(alice)
    deals = [DealFactory(owner=alice, person=ann) for _ in range(3)]
    thread = create_thread(alice, sender=ANN)
    link_threads([thread.pk])
    assert linked_deals(thread) == set()
    assert suggested_deals(thread) == {deal.pk for deal in deals}
    suggestion = links(thread, deal=deals[0]).get()
    assert suggestion.rule == "several_open_deals"
    assert suggestion.reason == "Ann Smith has 3 open deals: choose one"
    # The thread view offers them to whoever may see both.
    assert {link.deal_id for link in suggestions_for_thread(thread, alice)} == {deal.pk for deal in deals}


def test_open_deals_of_two_people_are_ambiguous_too(alice):
    ann = make_person(alice)
    bea = make_person(alice, email="bea@acme.example", first="Bea", last="Jones")
    deal_a, deal_b = DealFactory(owner=alice, person=ann), DealFactory(owner=alice, person=bea)
    thread = create_thread(alice, sender=ANN, cc=["bea@acme.example"])
    link_threads([thread.pk])
    assert linked_deals(thread) == set()
    assert suggested_deals(thread) == {deal_a.pk, deal_b.pk}
    assert links(thread, deal=deal_a).get().reason == "2 open deals among Ann Smith, Bea Jones: choose one"


def test_organization_deal_is_only_suggested(alice):
    acme = OrganizationFactory(owner=alice, name="Acme")
    OrganizationDomainFactory(organization=acme, domain="acme.example")
    deal = DealFactory(owner=alice, organization=acme)
    thread = create_thread(alice, sender="buyer@acme.example")
    link_threads([thread.pk])
    link = links(thread, deal=deal).get()
    assert (link.state, link.rule) == (ThreadLink.State.SUGGESTED, "organization_deal")


def test_deal_of_the_organization_next_to_a_person_deal_is_suggested(alice):
    acme = OrganizationFactory(owner=alice, name="Acme")
    ann = make_person(alice, organization=acme)
    person_deal = DealFactory(owner=alice, person=ann, organization=acme)
    organization_deal = DealFactory(owner=alice, organization=acme)
    thread = create_thread(alice, sender=ANN)
    link_threads([thread.pk])
    assert linked_deals(thread) == {person_deal.pk}
    assert suggested_deals(thread) == {organization_deal.pk}


def test_leads_and_projects_follow_the_same_rules(alice):
    ann = make_person(alice)
    lead = LeadFactory(owner=alice, person=ann)
    LeadFactory(owner=alice, person=ann, status=Lead.Status.ARCHIVED)
    projects = [ProjectFactory(owner=alice, person=ann), ProjectFactory(owner=alice, person=ann)]
    ProjectFactory(owner=alice, person=ann, status=Project.Status.COMPLETED)
    thread = create_thread(alice, sender=ANN)
    link_threads([thread.pk])
    assert links(thread, lead=lead).get().rule == "single_open_lead"
    project_links = links(thread, project__isnull=False)
    assert {link.project_id for link in project_links} == {project.pk for project in projects}
    assert {(link.state, link.rule) for link in project_links} == {
        (ThreadLink.State.SUGGESTED, "several_open_projects")
    }


def test_deal_not_visible_to_the_thread_owner_is_not_linked(alice, charlie):
    ann = make_person(alice)
    DealFactory(owner=charlie, person=ann, visibility=Visibility.OWNER)
    visible = DealFactory(owner=alice, person=ann)
    thread = create_thread(alice, sender=ANN)
    link_threads([thread.pk])
    # Charlie's private deal neither counts as a second candidate nor is revealed as a suggestion.
    assert linked_deals(thread) == {visible.pk}
    assert not suggested_deals(thread)


def test_manual_mode_links_people_but_only_suggests_deals(alice):
    MailSettings.objects.create(user=alice, linking_mode=MailSettings.LinkingMode.MANUAL)
    ann = make_person(alice)
    deal = DealFactory(owner=alice, person=ann)
    thread = create_thread(alice, sender=ANN)
    link_threads([thread.pk])
    assert links(thread, person=ann, state=ThreadLink.State.LINKED).exists()
    link = links(thread, deal=deal).get()
    assert (link.state, link.rule) == (ThreadLink.State.SUGGESTED, "manual_mode")
    assert "Ann Smith" in link.reason


def test_mass_email_links_people_but_only_suggests_deals(alice):
    ann = make_person(alice)
    deal = DealFactory(owner=alice, person=ann)
    recipients = [f"reader{n}@list.example" for n in range(MASS_EMAIL_PARTICIPANTS)]
    thread = create_thread(alice, sender=ANN, to=[alice.email, *recipients])
    link_threads([thread.pk])
    assert links(thread, person=ann, state=ThreadLink.State.LINKED).exists()
    link = links(thread, deal=deal).get()
    assert link.state == ThreadLink.State.SUGGESTED
    assert link.reason == f"mass email with {MASS_EMAIL_PARTICIPANTS + 1} recipients: not linked to deals automatically"


def test_exactly_the_threshold_is_not_mass_email(alice):
    ann = make_person(alice)
    deal = DealFactory(owner=alice, person=ann)
    recipients = [f"reader{n}@list.example" for n in range(MASS_EMAIL_PARTICIPANTS - 1)]
    thread = create_thread(alice, sender=ANN, to=[alice.email, *recipients])
    link_threads([thread.pk])
    assert linked_deals(thread) == {deal.pk}


# --- Users have the last word (L4, L5) ------------------------------------------------------------------


def test_unlink_sticks_for_later_replies_until_linked_again(alice):
    ann = make_person(alice)
    deal = DealFactory(owner=alice, person=ann)
    thread = create_thread(alice, sender=ANN)
    link_threads([thread.pk])
    assert linked_deals(thread) == {deal.pk}

    conversation_services.unlink_thread(user=alice, thread=thread, record=deal)
    assert links(thread, deal=deal).get().state == ThreadLink.State.UNLINKED

    # The next reply in the chain joins the same thread; ingestion re-runs linking on it.
    create_message(thread, sender=ANN, to=[alice.email], in_reply_to="<previous@mail.test>")
    create_message(thread, sender=alice.email, to=[ANN])
    link_threads([thread.pk])
    assert linked_deals(thread) == set()
    assert links(thread, deal=deal).get().state == ThreadLink.State.UNLINKED

    conversation_services.link_thread(user=alice, thread=thread, record=deal)
    link = links(thread, deal=deal).get()
    assert (link.state, link.rule, link.created_by) == (ThreadLink.State.LINKED, "manual", alice)
    create_message(thread, sender=ANN, to=[alice.email])
    link_threads([thread.pk])
    assert linked_deals(thread) == {deal.pk}


def test_dismissed_suggestion_is_not_offered_again(alice):
    ann = make_person(alice)
    first, second = DealFactory(owner=alice, person=ann), DealFactory(owner=alice, person=ann)
    thread = create_thread(alice, sender=ANN)
    link_threads([thread.pk])
    conversation_services.unlink_thread(user=alice, thread=thread, record=first)
    create_message(thread, sender=ANN, to=[alice.email])
    link_threads([thread.pk])
    assert suggested_deals(thread) == {second.pk}
    # ... and one remaining candidate after a dismissal is still not linked silently.
    assert linked_deals(thread) == set()


def test_unlinking_a_person_removes_what_was_derived_from_them(alice):
    acme = OrganizationFactory(owner=alice, name="Acme")
    ann = make_person(alice, organization=acme)
    deal = DealFactory(owner=alice, person=ann)
    thread = create_thread(alice, sender=ANN)
    link_threads([thread.pk])
    assert linked_deals(thread) == {deal.pk}
    conversation_services.unlink_thread(user=alice, thread=thread, record=ann)
    assert links(thread, person=ann).get().state == ThreadLink.State.UNLINKED
    assert not links(thread, organization=acme).exists()
    assert linked_deals(thread) == set()


def test_accepting_a_suggestion_makes_a_manual_link(alice):
    ann = make_person(alice)
    first, second = DealFactory(owner=alice, person=ann), DealFactory(owner=alice, person=ann)
    thread = create_thread(alice, sender=ANN)
    link_threads([thread.pk])
    suggestion = links(thread, deal=second).get()
    conversation_services.accept_suggestion(user=alice, link=suggestion)
    suggestion.refresh_from_db()
    assert (suggestion.state, suggestion.rule) == (ThreadLink.State.LINKED, "manual")
    assert suggested_deals(thread) == {first.pk}


def test_manual_links_survive_automatic_linking(alice):
    ann = make_person(alice)
    unrelated = DealFactory(owner=alice, title="Unrelated")
    thread = create_thread(alice, sender=ANN)
    conversation_services.link_thread(user=alice, thread=thread, record=unrelated)
    PersonEmail.objects.filter(person=ann).delete()
    link_threads([thread.pk])
    assert linked_deals(thread) == {unrelated.pk}


def test_manual_deal_link_stops_guessing_another_deal(alice):
    ann = make_person(alice)
    chosen = DealFactory(owner=alice, title="Chosen")
    other = DealFactory(owner=alice, person=ann)
    thread = create_thread(alice, sender=ANN)
    conversation_services.link_thread(user=alice, thread=thread, record=chosen)
    assert linked_deals(thread) == {chosen.pk}
    assert links(thread, deal=other).get().rule == "another_deal_linked"


def test_automatic_link_stays_when_the_deal_is_won_or_a_second_deal_appears(alice):
    ann = make_person(alice)
    deal = DealFactory(owner=alice, person=ann)
    thread = create_thread(alice, sender=ANN)
    link_threads([thread.pk])
    new_deal = DealFactory(owner=alice, person=ann)
    relink_for_record(new_deal)
    # History does not vanish from the first deal; the newcomer is only offered.
    assert linked_deals(thread) == {deal.pk}
    assert suggested_deals(thread) == {new_deal.pk}
    deal.status = Deal.Status.WON
    deal.save(update_fields=["status"])
    relink_for_record(deal)
    assert deal.pk in linked_deals(thread)
    # A brand-new conversation with Ann now has exactly one open deal again: linked.
    fresh = create_thread(alice, sender=ANN)
    link_threads([fresh.pk])
    assert linked_deals(fresh) == {new_deal.pk}


def test_link_needs_the_thread_and_the_record_to_be_visible(alice, bob, charlie):
    from django.core.exceptions import PermissionDenied

    thread = create_thread(alice, sender=ANN)
    deal = DealFactory(owner=alice)
    with pytest.raises(PermissionDenied):
        conversation_services.link_thread(user=bob, thread=thread, record=deal)  # private thread
    private_deal = DealFactory(owner=charlie, visibility=Visibility.OWNER)
    with pytest.raises(PermissionDenied):
        conversation_services.link_thread(user=alice, thread=thread, record=private_deal)
    assert not links(thread).exists()


# --- Retroactive linking (L7) ---------------------------------------------------------------------------


def test_person_created_later_gets_existing_conversations(alice):
    thread = create_thread(alice, sender="zed@newcustomer.example")
    old = create_thread(alice, sender="someone@else.example", cc=["zed@newcustomer.example"])
    unrelated = create_thread(alice, sender="other@else.example")
    link_threads([thread.pk, old.pk, unrelated.pk])
    assert not ThreadLink.objects.exists()

    zed = make_person(alice, email="zed@newcustomer.example", first="Zed", last="New")
    relink_for_addresses(["Zed <ZED@newcustomer.example>"])
    assert set(ThreadLink.objects.filter(person=zed).values_list("thread_id", flat=True)) == {thread.pk, old.pk}
    assert not links(unrelated).exists()


def test_address_added_and_removed_relinks(alice):
    ann = make_person(alice)
    deal = DealFactory(owner=alice, person=ann)
    thread = create_thread(alice, sender="ann@home.example")
    link_threads([thread.pk])
    assert not links(thread).exists()

    PersonEmailFactory(person=ann, email="ann@home.example")
    relink_for_addresses(["ann@home.example"])
    assert links(thread, person=ann, rule="person_address").exists()
    assert linked_deals(thread) == {deal.pk}

    PersonEmail.objects.filter(email="ann@home.example").delete()
    relink_for_addresses(["ann@home.example"])
    assert not links(thread).exists()


def test_relink_for_person_and_organization(alice):
    thread = create_thread(alice, sender="kim@initech.example")
    link_threads([thread.pk])
    initech = OrganizationFactory(owner=alice, name="Initech")
    OrganizationDomainFactory(organization=initech, domain="initech.example")
    relink_for_organization(initech)
    assert links(thread, organization=initech, rule="org_domain").exists()

    kim = make_person(alice, email="kim@initech.example", first="Kim", last="Lee")
    relink_for_person(kim)
    assert links(thread, person=kim).exists()

    # Made private by someone else: alice may no longer see Kim, so the link goes.
    kim.owner = PersonFactory().owner
    kim.visibility = Visibility.OWNER
    kim.save(update_fields=["owner", "visibility"])
    relink_for_person(kim)
    assert not links(thread, person=kim).exists()


def test_relink_for_domains(alice):
    thread = create_thread(alice, sender="x@hooli.example")
    hooli = OrganizationFactory(owner=alice, name="Hooli")
    OrganizationDomainFactory(organization=hooli, domain="hooli.example")
    relink_for_domains(["@Hooli.example"])
    assert links(thread, organization=hooli).exists()


# --- Batch cost and idempotence -------------------------------------------------------------------------


def _threads_with_people(owner, count, prefix="c"):
    threads = []
    for n in range(count):
        domain = f"{prefix}{n}.example"
        person = make_person(owner, email=f"p@{domain}", first=f"P{n}", last=prefix)
        organization = OrganizationFactory(owner=owner, name=f"Customer {prefix}{n}")
        OrganizationDomainFactory(organization=organization, domain=domain)
        DealFactory(owner=owner, person=person)
        threads.append(create_thread(owner, sender=f"p@{domain}"))
    return threads


def _queries_for_linking(threads) -> int:
    with CaptureQueriesContext(connection) as captured:
        link_threads([thread.pk for thread in threads])
    return len(captured.captured_queries)


def test_linking_costs_the_same_number_of_queries_for_3_and_30_threads(alice):
    few = _threads_with_people(alice, 3, prefix="few")
    many = _threads_with_people(alice, 30, prefix="many")
    assert _queries_for_linking(few) == _queries_for_linking(many)
    assert ThreadLink.objects.filter(thread__in=many, state=ThreadLink.State.LINKED).count() == 30 * 3


def test_relinking_is_idempotent(alice):
    threads = _threads_with_people(alice, 3)
    link_threads([thread.pk for thread in threads])
    before = list(ThreadLink.objects.order_by("pk").values("pk", "state", "rule", "reason", "updated_at"))
    link_threads([thread.pk for thread in threads])
    after = list(ThreadLink.objects.order_by("pk").values("pk", "state", "rule", "reason", "updated_at"))
    assert before == after


def test_thread_participants_query_gives_what_the_orm_query_gives(alice, bob):
    """The PostgreSQL statement of the linking's participant read (an index lookup per message) against
    the ORM query it replaces there (and which other databases run)."""
    from mailsync.linking.rules import _thread_participants
    from mailsync.models import MessageParticipant

    first = create_thread(alice, sender=ANN, to=["x@acme.example", "alice@company.test"], cc=[ANN])
    create_message(first, sender="x@acme.example", to=[ANN, "y@other.example"])
    gone = create_message(first, sender="deleted@else.example", to=["z@else.example"])
    gone.deleted_at = timezone.now()
    gone.save(update_fields=["deleted_at"])
    second = create_thread(alice, sender="y@other.example", to=[ANN])
    empty = create_thread(alice, sender="q@quiet.example")
    MessageParticipant.objects.filter(message__thread=empty).delete()  # a message without participants
    elsewhere = create_thread(bob, sender="b@bob.example")  # not asked for
    asked = [first.pk, second.pk, empty.pk]

    orm = set(
        MessageParticipant.objects.filter(message__thread_id__in=asked, message__deleted_at__isnull=True)
        .values_list("message__thread_id", "address")
        .distinct()
    )
    rows = list(_thread_participants(asked))
    assert len(rows) == len(set(rows))  # distinct
    assert set(rows) == orm
    assert "deleted@else.example" not in {address for _thread, address in rows}
    assert elsewhere.pk not in {thread for thread, _address in rows}
    assert list(_thread_participants([])) == []
