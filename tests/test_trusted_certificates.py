"""Company CAs trusted in the product (issue 17, point 5; SPEC A4) and the add-account form's kept password.

Issue 10's rule holds: nobody but the owner decides where the owner's password goes. A CA added by an admin
applies to an account only after its owner typed the password with it in effect; the servers of public
providers cannot be listed; non-admins cannot see or change the list.
"""

import pytest
from django.core.exceptions import PermissionDenied
from django.urls import reverse

from conftest import client_for
from mailsync.accounts import certificates, services
from mailsync.connection import config as connection_config
from mailsync.models import EmailAccount, TrustedCertificate
from mailsync.workspace import kept_password

pytestmark = pytest.mark.django_db
State = EmailAccount.State


def make_account(user, host="mail.acme.test", address="alice@acme.test") -> EmailAccount:
    account = EmailAccount(user=user, email_address=address, username=address, imap_host=host, smtp_host=host)
    account.set_secret("alice-secret")
    account.save()
    return account


def test_only_company_admins_see_and_change_the_list(alice, admin_user, test_ca):
    url = reverse("mailsync:trusted_certificates")
    form = {"name": "Acme CA", "hosts": "mail.acme.test", "pem": test_ca.ca_pem}
    assert client_for(alice).get(url).status_code == 404
    assert client_for(alice).post(url, form).status_code == 404
    assert not TrustedCertificate.objects.exists()
    with pytest.raises(PermissionDenied):
        certificates.add_trusted_certificate(admin=alice, name="x", pem=test_ca.ca_pem, hosts="mail.acme.test")

    admin = client_for(admin_user)
    assert admin.post(url, form).status_code == 302
    certificate = TrustedCertificate.objects.get()
    assert certificate.hosts == "mail.acme.test" and len(certificate.fingerprint) == 64
    assert certificate.added_by == admin_user
    remove = reverse("mailsync:trusted_certificate_remove", args=[certificate.pk])
    assert client_for(alice).post(remove).status_code == 404
    assert admin.get(remove).status_code == 405
    assert admin.post(remove).status_code == 302 and not TrustedCertificate.objects.exists()


@pytest.mark.parametrize(
    ("pem", "hosts", "message"),
    [
        ("not a certificate", "mail.acme.test", "Not a PEM certificate"),
        ("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----", "mail.acme.test", "private key"),
        ("", "mail.acme.test", "This field is required"),
        (None, "imap.gmail.com", "public mail provider"),
        (None, "*.gmail.com", "public mail provider"),
        (None, "*.com", "not a server name"),
        (None, ", ;", "Enter the server names"),
        (None, "http://mail.acme.test", "not a server name"),
    ],
)
def test_bad_input_is_refused_with_a_reason_and_nothing_saved(admin_user, test_ca, pem, hosts, message):
    response = client_for(admin_user).post(
        reverse("mailsync:trusted_certificates"),
        {"name": "Acme CA", "hosts": hosts, "pem": test_ca.ca_pem if pem is None else pem},
    )
    assert response.status_code == 200 and message in response.content.decode()
    assert not TrustedCertificate.objects.exists()


def test_a_ca_added_later_never_applies_to_a_stored_password(alice, admin_user, test_ca):
    account = make_account(alice)
    other = make_account(alice, host="mail.other.test", address="alice@other.test")
    certificate = certificates.add_trusted_certificate(
        admin=admin_user, name="Acme CA", pem=test_ca.ca_pem, hosts="*.acme.test"
    )
    # The stored password still goes only to servers with a public certificate: the CA is not in effect.
    assert connection_config.account_ca_pem(account, "mail.acme.test") == ""
    assert test_ca.ca_pem.strip() not in connection_config.account_imap_config(account).trusted_ca_pem
    # The owner types the password again (re-authenticate / add again): from then on it is.
    certificates.accept_certificates_for(account=account)
    certificates.accept_certificates_for(account=other)
    assert list(account.accepted_certificates.all()) == [certificate]
    assert test_ca.ca_pem.strip() in connection_config.account_imap_config(account).trusted_ca_pem
    assert not other.accepted_certificates.exists()  # another server: not covered by *.acme.test
    # Removing it stops its use at once.
    certificates.remove_trusted_certificate(admin=admin_user, certificate=certificate)
    assert connection_config.account_ca_pem(account, "mail.acme.test") == ""


def test_an_accepted_ca_is_trusted_only_for_the_servers_it_lists(alice, admin_user, test_ca):
    """A CA listed for the company's IMAP server never vouches for the account's SMTP server elsewhere
    (smtp.gmail.com here): its holder could otherwise read the password sent there."""
    account = make_account(alice)
    account.smtp_host = "smtp.gmail.com"
    account.save(update_fields=["smtp_host"])
    certificates.add_trusted_certificate(admin=admin_user, name="Acme CA", pem=test_ca.ca_pem, hosts="mail.acme.test")
    certificates.accept_certificates_for(account=account)
    assert account.accepted_certificates.count() == 1
    assert test_ca.ca_pem.strip() in connection_config.account_imap_config(account).trusted_ca_pem
    assert test_ca.ca_pem.strip() not in connection_config.account_smtp_config(account).trusted_ca_pem


def test_host_patterns_match_like_tls_wildcards():
    assert connection_config.host_matches("mail.acme.test", "MAIL.acme.test")
    assert connection_config.host_matches("*.acme.test", "imap.acme.test")
    assert not connection_config.host_matches("*.acme.test", "acme.test")
    assert not connection_config.host_matches("*.acme.test", "a.b.acme.test")
    assert not connection_config.host_matches("*.acme.test", "evilacme.test")


def test_connect_accepts_the_matching_cas(alice, admin_user, test_ca):
    certificate = certificates.add_trusted_certificate(
        admin=admin_user, name="Acme CA", pem=test_ca.ca_pem, hosts="mail.acme.test"
    )
    settings_ = connection_config.AccountSettings(
        email_address="alice@acme.test",
        provider="custom",
        username="alice@acme.test",
        auth_kind="password",
        imap_host="mail.acme.test",
        imap_port=993,
        imap_security="ssl",
        smtp_host="",
        smtp_port=465,
        smtp_security="ssl",
    )
    account = services.connect_account(user=alice, account_settings=settings_, secret="alice-secret")
    assert list(account.accepted_certificates.all()) == [certificate]
    assert account.smtp_host == ""  # saved without sending


def test_kept_password_is_encrypted_bound_to_the_address_and_never_rendered(alice, client):
    client.force_login(alice)
    url = reverse("mailsync:account_add")
    form = {"email_address": "alice@unknown-provider.test", "password": "kept-secret-123"}
    response = client.post(url, form)  # unknown provider: it asks for the servers
    html = response.content.decode()
    assert "kept-secret-123" not in html and "Kept from your last try" in html
    session = client.session
    assert "kept-secret-123" not in str(dict(session.items()))  # encrypted in the server-side session
    request = type("R", (), {"session": session})()
    assert kept_password.kept_for(request, "alice@unknown-provider.test") == "kept-secret-123"
    assert kept_password.kept_for(request, "someone@else.test") == ""
    # Another address: not used, the password is asked again.
    html = client.post(url, {"email_address": "other@unknown-provider.test"}).content.decode()
    assert "Enter the password" in html and "Kept from your last try" not in html
