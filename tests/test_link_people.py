"""Linking by hand to people and organizations, and "create a person from this sender" (issue 17, point 6).

Visibility rules stay: only the thread's owner links (its links are its audience), others suggest; a
person created from a sender never makes a private conversation visible to anyone else."""

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from conftest import client_for
from contacts.models import Person
from crm.models import Visibility
from mailsync.linking import access
from mailsync.linking.rules import link_threads
from mailsync.models import EmailThread, MessageParticipant, ThreadLink
from mailsync.workspace import conversation_services
from tests.factories import OrganizationDomainFactory, OrganizationFactory, PersonEmailFactory, PersonFactory
from tests.mail_factories import create_message, create_thread, fast_password_hashing

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    fast_password_hashing(settings)


def named_thread(owner, sender: str, name: str, **fields) -> EmailThread:
    thread = create_thread(owner, sender=sender, **fields)
    MessageParticipant.objects.filter(message__thread=thread, role="from").update(name=name)
    return thread


def test_owner_links_by_hand_to_a_person_and_an_organization(alice, bob):
    thread = create_thread(alice, sender="ann@customer.example", visibility=EmailThread.Visibility.SHARED)
    person = PersonFactory(owner=alice, visibility=Visibility.COMPANY)
    organization = OrganizationFactory(owner=alice, visibility=Visibility.COMPANY, name="Globex")
    client = client_for(alice)
    html = client.get(reverse("mailsync:thread_detail", args=[thread.pk])).content.decode()
    assert f'value="person:{person.pk}"' in html and f'value="organization:{organization.pk}"' in html
    url = reverse("mailsync:thread_link", args=[thread.pk])
    for target in (f"person:{person.pk}", f"organization:{organization.pk}"):
        assert client.post(url, {"target": target}, HTTP_HX_REQUEST="true").status_code == 200
    links = ThreadLink.objects.filter(thread=thread, state=ThreadLink.State.LINKED)
    assert {link.person_id for link in links} >= {person.pk} and organization.pk in {
        link.organization_id for link in links
    }
    # The link widened the shared thread's audience to who may see the person: bob now sees it.
    assert access.visible_threads(bob).filter(pk=thread.pk).exists()


def test_a_teammate_only_suggests_a_person_and_an_outsider_gets_404(alice, bob, charlie):
    thread = create_thread(alice, sender="ann@customer.example", visibility=EmailThread.Visibility.SHARED)
    ann = PersonFactory(owner=alice, visibility=Visibility.TEAM)  # bob's team, not charlie's
    PersonEmailFactory(person=ann, email="ann@customer.example")
    link_threads([thread.pk])  # linked to ann by her address: the team sees the shared thread
    other = PersonFactory(owner=bob, visibility=Visibility.COMPANY)
    url = reverse("mailsync:thread_link", args=[thread.pk])
    assert client_for(bob).post(url, {"target": f"person:{other.pk}"}).status_code == 302
    assert ThreadLink.objects.get(thread=thread, person=other).state == ThreadLink.State.SUGGESTED
    assert client_for(charlie).post(url, {"target": f"person:{other.pk}"}).status_code == 404


def test_unknown_senders_with_their_organization_from_the_domain(alice):
    globex = OrganizationFactory(owner=alice, visibility=Visibility.COMPANY, name="Globex")
    OrganizationDomainFactory(organization=globex, domain="globex.example")
    thread = named_thread(alice, "hank@globex.example", "Hank Scorpio")
    create_message(thread, sender="someone@gmail.com")
    create_message(thread, sender="known@customer.example")
    create_message(thread, sender=alice.email_accounts.first().email_address)  # alice's own reply
    PersonEmailFactory(email="known@customer.example")  # someone else's person: not "unknown"
    senders = conversation_services.unknown_senders(alice, thread)
    assert [(s.address, s.name, s.organization) for s in senders] == [
        ("hank@globex.example", "Hank Scorpio", globex),
        ("someone@gmail.com", "", None),  # a free-mail domain says nothing about the organization
    ]


def test_create_person_from_sender_links_the_thread_and_keeps_private_mail_private(alice, bob):
    globex = OrganizationFactory(owner=alice, visibility=Visibility.COMPANY, name="Globex")
    OrganizationDomainFactory(organization=globex, domain="globex.example")
    private = named_thread(alice, "hank@globex.example", "Scorpio, Hank")  # private by default
    client = client_for(alice)
    response = client.post(
        reverse("mailsync:thread_create_person", args=[private.pk]),
        {"address": "Hank@Globex.example"},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 200 and "Not in the CRM yet" not in response.content.decode()
    person = Person.objects.get(emails__email="hank@globex.example")
    assert (person.first_name, person.last_name, person.organization, person.owner) == (
        "Hank",
        "Scorpio",
        globex,
        alice,
    )
    assert ThreadLink.objects.get(thread=private, person=person).state == ThreadLink.State.LINKED
    # Bob may see the person, never alice's private conversation with them.
    assert Person.objects.visible_to(bob).filter(pk=person.pk).exists()
    assert not access.visible_threads(bob).filter(pk=private.pk).exists()
    assert (
        client_for(bob)
        .post(reverse("mailsync:thread_create_person", args=[private.pk]), {"address": "x@y.example"})
        .status_code
        == 404
    )
    # Twice, or an address that did not write: refused with the reason, nothing created.
    with pytest.raises(ValidationError, match="already a person"):
        conversation_services.create_person_from_sender(user=alice, thread=private, address="hank@globex.example")
    response = client.post(
        reverse("mailsync:thread_create_person", args=[private.pk]),
        {"address": "nobody@x.example"},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 400 and "did not write in this conversation" in response.content.decode()
    assert Person.objects.count() == 1
    assert client.get(reverse("mailsync:thread_create_person", args=[private.pk])).status_code == 405
