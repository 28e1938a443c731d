"""Who sees which conversation (SPEC P1-P3), timelines (C4, L6) and the contacts clean-up (F2, F3)."""

from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404
from django.utils import timezone

from crm.models import Visibility
from mailsync.linking import access
from mailsync.linking.rules import link_threads
from mailsync.models import EmailMessage, EmailThread, MailSettings, ThreadLink
from mailsync.workspace import conversation_services
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
    AttachmentFactory,
    create_message,
    create_thread,
    fast_password_hashing,
)

pytestmark = pytest.mark.django_db

PRIVATE = EmailThread.Visibility.PRIVATE
SHARED = EmailThread.Visibility.SHARED
ANN = "ann@acme.example"


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    fast_password_hashing(settings)


@pytest.fixture(autouse=True)
def media_in_tmp(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path


def make_person(owner, email=ANN, **fields):
    person = PersonFactory(owner=owner, first_name="Ann", last_name="Smith", **fields)
    PersonEmailFactory(person=person, email=email)
    return person


def sees(user, thread) -> bool:
    return access.visible_threads(user).filter(pk=thread.pk).exists()


# --- Visibility of threads ------------------------------------------------------------------------------


def test_private_thread_is_seen_by_its_owner_only_admins_included(alice, bob, charlie, admin_user):
    make_person(alice)  # company-visible contact: linked, but private wins
    thread = create_thread(alice, sender=ANN, visibility=PRIVATE)
    link_threads([thread.pk])
    assert ThreadLink.objects.filter(thread=thread, state=ThreadLink.State.LINKED).exists()
    assert sees(alice, thread)
    for other in (bob, charlie, admin_user):
        assert not sees(other, thread)
        with pytest.raises(Http404):
            access.get_thread_for_user(other, thread.pk)
        assert not access.visible_messages(other).exists()


def test_shared_thread_is_seen_by_who_can_see_a_linked_record(alice, bob, charlie, admin_user):
    deal = DealFactory(owner=alice, visibility=Visibility.TEAM)
    thread = create_thread(alice, sender=ANN, visibility=SHARED)
    assert not sees(bob, thread)  # shared but linked to nothing: nobody else
    conversation_services.link_thread(user=alice, thread=thread, record=deal)
    assert sees(bob, thread)  # same team as the deal's owner
    assert not sees(charlie, thread)  # other team: cannot see the deal
    assert sees(admin_user, thread)  # admins see every record, so every shared linked thread
    assert access.get_thread_for_user(bob, thread.pk) == thread


@pytest.mark.parametrize("state", [ThreadLink.State.SUGGESTED, ThreadLink.State.UNLINKED])
def test_suggested_or_unlinked_records_do_not_share(alice, bob, state):
    deal = DealFactory(owner=alice)
    thread = create_thread(alice, sender=ANN, visibility=SHARED)
    ThreadLink.objects.create(thread=thread, deal=deal, state=state, rule="manual")
    assert not sees(bob, thread)


def test_inactive_or_anonymous_users_see_nothing(alice):
    from django.contrib.auth.models import AnonymousUser

    thread = create_thread(alice, sender=ANN)
    assert not access.visible_threads(AnonymousUser()).exists()
    alice.is_active = False
    alice.save(update_fields=["is_active"])
    assert not sees(alice, thread)


def test_thread_without_visible_messages_is_hidden_from_everyone(alice):
    thread = create_thread(alice, sender=ANN)
    thread.messages.update(deleted_at=timezone.now())
    assert not sees(alice, thread)
    with pytest.raises(Http404):
        access.get_thread_for_user(alice, thread.pk)


def test_attachments_follow_their_thread(alice, bob, admin_user):
    deal = DealFactory(owner=alice)
    thread = create_thread(alice, sender=ANN, visibility=PRIVATE)
    attachment = AttachmentFactory(message=thread.messages.get())
    assert access.get_attachment_for_user(alice, attachment.pk) == attachment
    for other in (bob, admin_user):
        with pytest.raises(Http404):
            access.get_attachment_for_user(other, attachment.pk)
    conversation_services.link_thread(user=alice, thread=thread, record=deal)
    conversation_services.set_thread_visibility(user=alice, thread=thread, visibility=SHARED)
    assert access.get_attachment_for_user(bob, attachment.pk) == attachment
    attachment.message.deleted_at = timezone.now()
    attachment.message.save(update_fields=["deleted_at"])
    with pytest.raises(Http404):
        access.get_attachment_for_user(alice, attachment.pk)


def test_links_box_shows_only_records_the_viewer_may_see(alice, bob, charlie):
    team_deal = DealFactory(owner=alice, visibility=Visibility.TEAM)
    company_deal = DealFactory(owner=alice)
    thread = create_thread(alice, sender=ANN, visibility=SHARED)
    for deal in (team_deal, company_deal):
        conversation_services.link_thread(user=alice, thread=thread, record=deal)
    assert {link.deal for link in access.thread_links_for_user(bob, thread)} == {team_deal, company_deal}
    assert {link.deal for link in access.thread_links_for_user(charlie, thread)} == {company_deal}


# --- Changing visibility (P1-P3) ------------------------------------------------------------------------


def test_only_the_owner_changes_a_thread_visibility(alice, bob, admin_user):
    thread = create_thread(alice, sender=ANN, visibility=SHARED)
    for other in (bob, admin_user):
        with pytest.raises(PermissionDenied):
            conversation_services.set_thread_visibility(user=other, thread=thread, visibility=PRIVATE)
    with pytest.raises(ValidationError):
        conversation_services.set_thread_visibility(user=alice, thread=thread, visibility="public")
    conversation_services.set_thread_visibility(user=alice, thread=thread, visibility=PRIVATE)
    thread.refresh_from_db()
    assert thread.visibility == PRIVATE


def test_changing_the_default_does_not_change_existing_threads(alice):
    private_before = create_thread(alice, sender=ANN, visibility=PRIVATE)
    shared_before = create_thread(alice, sender=ANN, visibility=SHARED)
    settings = conversation_services.set_default_visibility(user=alice, visibility=SHARED)
    assert MailSettings.objects.get(user=alice).default_visibility == SHARED == settings.default_visibility
    conversation_services.set_default_visibility(user=alice, visibility=PRIVATE)
    assert EmailThread.objects.get(pk=private_before.pk).visibility == PRIVATE
    assert EmailThread.objects.get(pk=shared_before.pk).visibility == SHARED
    with pytest.raises(ValidationError):
        conversation_services.set_default_visibility(user=alice, visibility="everyone")


# --- Timelines (C4, L6, L7) -----------------------------------------------------------------------------


def test_timeline_lists_linked_visible_conversations_newest_first(alice, bob):
    ann = make_person(alice)
    now = timezone.now()
    older = create_thread(alice, sender=ANN, visibility=SHARED, date=now - timedelta(days=3), snippet="older one")
    newer = create_thread(alice, sender=ANN, visibility=SHARED, date=now - timedelta(days=1), snippet="first")
    create_message(newer, sender=alice.email, to=[ANN], date=now, snippet="the latest")
    private = create_thread(alice, sender=ANN, visibility=PRIVATE, date=now - timedelta(days=2))
    create_thread(alice, sender="other@else.example", visibility=SHARED)
    link_threads(EmailThread.objects.values_list("pk", flat=True))

    assert access.timeline_for(alice, person=ann) == [newer, private, older]
    bobs = access.timeline_for(bob, person=ann)
    assert bobs == [newer, older]
    entry = bobs[0]
    assert (entry.latest_snippet, entry.visible_message_count, entry.owner) == ("the latest", 2, alice)
    assert entry.snippet == "the latest"
    assert entry.get_absolute_url() == f"/mail/threads/{newer.pk}/"


def test_deleted_mail_leaves_the_deal_timeline(alice):
    ann = make_person(alice)
    deal = DealFactory(owner=alice, person=ann)
    thread = create_thread(alice, sender=ANN)
    reply = create_message(thread, sender=alice.email, to=[ANN], snippet="my reply")
    link_threads([thread.pk])
    [entry] = access.timeline_for(alice, deal=deal)
    assert entry.latest_snippet == "my reply"
    reply.deleted_at = timezone.now()
    reply.save(update_fields=["deleted_at"])
    [entry] = access.timeline_for(alice, deal=deal)
    assert entry.visible_message_count == 1
    assert entry.latest_snippet != "my reply"
    thread.messages.update(deleted_at=timezone.now())
    assert access.timeline_for(alice, deal=deal) == []


def test_organization_timeline_gathers_its_people(alice):
    acme = OrganizationFactory(owner=alice, name="Acme")
    OrganizationDomainFactory(organization=acme, domain="acme.example")
    ann = make_person(alice, email="ann@gmail.com", organization=acme)
    by_domain = create_thread(alice, sender="sales@acme.example")
    by_person = create_thread(alice, sender="ann@gmail.com")
    link_threads([by_domain.pk, by_person.pk])
    # Even when the organization link itself was removed by hand, Ann's thread stays on Acme's page.
    conversation_services.unlink_thread(user=alice, thread=by_person, record=acme)
    assert set(access.timeline_for(alice, organization=acme)) == {by_domain, by_person}
    assert access.timeline_for(alice, person=ann) == [by_person]


def test_lead_and_project_timelines(alice):
    ann = make_person(alice)
    lead, project = LeadFactory(owner=alice, person=ann), ProjectFactory(owner=alice, person=ann)
    thread = create_thread(alice, sender=ANN)
    link_threads([thread.pk])
    assert access.timeline_for(alice, lead=lead) == [thread]
    assert access.timeline_for(alice, project=project) == [thread]
    with pytest.raises(TypeError):
        access.timeline_for(alice)


def test_retroactive_link_reaches_the_timeline_subject_to_visibility(alice, bob):
    from mailsync.linking.rules import relink_for_addresses

    shared = create_thread(alice, sender="zed@new.example", visibility=SHARED)
    private = create_thread(alice, sender="zed@new.example", visibility=PRIVATE)
    zed = make_person(bob, email="zed@new.example")
    assert access.timeline_for(bob, person=zed) == []
    relink_for_addresses(["zed@new.example"])
    assert access.timeline_for(bob, person=zed) == [shared]
    assert set(access.timeline_for(alice, person=zed)) == {shared, private}


def _timeline_with(owner, count):
    for n in range(count):
        thread = create_thread(owner, sender=ANN, visibility=SHARED, snippet=f"message {n}")
        create_message(thread, sender=owner.email, to=[ANN])
        AttachmentFactory(message=thread.messages.first())
    link_threads(EmailThread.objects.values_list("pk", flat=True))


@pytest.mark.parametrize("viewer_name", ["alice", "bob", "admin_user"])
def test_timeline_costs_one_query_whatever_the_number_of_emails(request, alice, viewer_name, django_assert_num_queries):
    viewer = request.getfixturevalue(viewer_name)
    ann = make_person(alice)
    _timeline_with(alice, 3)
    with django_assert_num_queries(1):
        entries = access.timeline_for(viewer, person=ann)
        rendered = [(e.subject, e.latest_snippet, e.visible_message_count, e.owner.email) for e in entries]
    assert len(rendered) == 3
    _timeline_with(alice, 27)
    with django_assert_num_queries(1):
        entries = access.timeline_for(viewer, person=ann)
        rendered = [(e.subject, e.latest_snippet, e.visible_message_count, e.owner.email) for e in entries]
    assert len(rendered) == 30


def test_timeline_limit(alice):
    ann = make_person(alice)
    _timeline_with(alice, 4)
    assert len(access.timeline_for(alice, person=ann, limit=3)) == 3


# --- "From an existing contact" and "remove emails not related to contacts" (F2, F3) ---------------------


@pytest.fixture
def mixed_mailbox(alice, charlie):
    make_person(alice)
    deal = DealFactory(owner=alice)
    hidden_person = PersonFactory(owner=charlie, visibility=Visibility.OWNER)
    PersonEmailFactory(person=hidden_person, email="secret@hidden.example")
    threads = {
        "contact": create_thread(alice, sender=ANN),
        "contact_in_cc": create_thread(alice, sender="x@newsletter.example", cc=[ANN]),
        "stranger": create_thread(alice, sender="x@newsletter.example"),
        "sent_to_stranger": create_thread(alice, sender=alice.email, to=["y@stranger.example"]),
        "linked_by_hand": create_thread(alice, sender="z@stranger.example"),
        "contact_of_someone_else": create_thread(alice, sender="secret@hidden.example"),
    }
    create_message(threads["stranger"], sender="x@newsletter.example", to=[alice.email])
    create_message(threads["stranger"], sender=alice.email, to=["x@newsletter.example"], is_draft=True)
    conversation_services.link_thread(user=alice, thread=threads["linked_by_hand"], record=deal)
    link_threads([thread.pk for thread in threads.values()])
    return threads


def test_from_existing_contact_filter(alice, mixed_mailbox):
    threads = conversation_services.from_existing_contact(EmailThread.objects.all(), alice)
    assert set(threads) == {mixed_mailbox["contact"], mixed_mailbox["contact_in_cc"]}


def test_remove_non_contact_mail_preview_equals_result(alice, bob, mixed_mailbox):
    bobs = create_thread(bob, sender="x@newsletter.example")
    preview = conversation_services.preview_remove_non_contact_mail(alice)
    # stranger (2 received; the draft is kept), sent_to_stranger (1), contact_of_someone_else (1)
    assert preview == 4
    assert conversation_services.remove_non_contact_mail(alice) == preview
    assert set(EmailMessage.objects.filter(deleted_at__isnull=False).values_list("deletion_source", flat=True)) == {
        "user"
    }
    assert conversation_services.preview_remove_non_contact_mail(alice) == 0
    remaining = set(access.visible_threads(alice))
    assert remaining == {
        mixed_mailbox[name] for name in ("contact", "contact_in_cc", "linked_by_hand", "stranger")
    }  # "stranger" only through its draft
    assert EmailMessage.objects.filter(thread=mixed_mailbox["stranger"], deleted_at__isnull=True).get().is_draft
    assert not EmailMessage.objects.filter(thread=bobs, deleted_at__isnull=False).exists()
