import pytest
from django.db import IntegrityError

from contacts.models import PersonEmail
from crm.addresses import domain_of, is_free_mail_domain, normalize_email
from crm.models import User
from tests.factories import PersonFactory


def test_normalize_email_variants():
    assert normalize_email("  Ann Example <Ann@Example.COM> ") == "ann@example.com"
    assert normalize_email("BOB@Example.com") == "bob@example.com"
    assert normalize_email("not-an-address") == ""
    assert normalize_email("a@b@c") == ""
    assert domain_of("x@Sub.Example.org") == "sub.example.org"
    assert is_free_mail_domain("GMAIL.com")
    assert not is_free_mail_domain("acme.example")


@pytest.mark.django_db
def test_person_email_is_unique_case_insensitively():
    person = PersonFactory()
    PersonEmail.objects.create(person=person, email="Ann@Example.com")
    assert PersonEmail.objects.get().email == "ann@example.com"
    with pytest.raises(IntegrityError):
        PersonEmail.objects.create(person=PersonFactory(), email="ANN@example.COM")


@pytest.mark.django_db
def test_user_email_login_identity():
    user = User.objects.create_user(email="Mixed@Company.Test", password="x" * 12)
    assert user.email == "mixed@company.test"
    assert not user.is_company_admin
    admin = User.objects.create_superuser(email="root@company.test", password="x" * 12)
    assert admin.is_company_admin and admin.is_staff


def test_healthz_needs_no_login(client, db):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_seed_demo_is_idempotent_and_links_the_sample_mail():
    from django.core.management import call_command

    from deals.models import Deal
    from mailsync.models import EmailMessage, ThreadLink

    call_command("seed_demo")
    messages = EmailMessage.objects.count()
    call_command("seed_demo")
    assert EmailMessage.objects.count() == messages == 9
    deal = Deal.objects.get(title="Acme anvils 2027")
    linked = ThreadLink.objects.filter(deal=deal, state=ThreadLink.State.LINKED)
    assert linked.get().thread.messages.count() == 3
    assert User.objects.get(email="demo@example.com").check_password("demo-password-123")
    # What the demo user sent is read; what others sent arrives unread.
    sent = EmailMessage.objects.filter(from_address="demo@example.com")
    assert sent.exists() and not sent.filter(is_read=False).exists()
    assert not EmailMessage.objects.exclude(from_address="demo@example.com").filter(is_read=True).exists()
