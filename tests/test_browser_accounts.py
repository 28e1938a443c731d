"""Settings > Email sync in a real browser, against the test Dovecot and aiosmtpd (tests/mailservers.py).

The test servers' certificates come from the suite's own CA. Like an admin of a self-hosted deployment,
the test trusts that CA for every account (settings.MAILSYNC_TRUSTED_CA_FILE, A4); the user's form
offers no way to skip certificate checks, and unencrypted connections only to localhost.
"""

import pytest

from conftest import browser_login, client_for
from mailsync.models import EmailAccount

pytestmark = [pytest.mark.browser, pytest.mark.dovecot, pytest.mark.usefixtures("celery_eager")]


def fill_servers(page, dovecot, smtp_server):
    page.click("summary")  # "Server settings (custom IMAP over SSL/TLS)"
    page.select_option("select[name=provider]", "custom")
    page.fill("input[name=imap_host]", dovecot.host)
    page.fill("input[name=imap_port]", str(dovecot.imaps_port))
    page.select_option("select[name=imap_security]", "ssl")
    page.fill("input[name=smtp_host]", smtp_server.host)
    page.fill("input[name=smtp_port]", str(smtp_server.port))
    page.select_option("select[name=smtp_security]", "starttls")


@pytest.mark.django_db(transaction=True)
def test_add_account_wrong_password_then_right_one(page, alice, dovecot, smtp_server, mail_user, settings, test_ca):
    settings.MAILSYNC_TRUSTED_CA_FILE = str(test_ca.ca_path)
    browser_login(page, alice)
    page.click("nav >> text=Email sync")
    page.wait_for_url("**/mail/settings/")
    page.click("text=Add account")
    page.wait_for_url("**/mail/settings/accounts/add/")

    page.fill("input[name=email_address]", mail_user.address)
    page.locator("#provider-hint").filter(has_text="We do not know this provider").wait_for()  # htmx hint
    page.fill("input[name=password]", "definitely-wrong")
    fill_servers(page, dovecot, smtp_server)
    page.click("button:has-text('Connect')")

    error = page.locator(".connection-error")
    error.wait_for()
    assert "did not accept the username or password" in error.inner_text()
    assert "How to fix it" in error.inner_text()
    assert page.input_value("input[name=email_address]") == mail_user.address  # kept
    assert page.input_value("input[name=imap_port]") == str(dovecot.imaps_port)  # kept
    assert page.input_value("input[name=password]") == ""  # never rendered back
    assert not EmailAccount.objects.exists()

    page.fill("input[name=password]", mail_user.password)
    page.click("button:has-text('Connect')")
    page.wait_for_url("**/mail/settings/")
    row = page.locator("tr.account-row", has_text=mail_user.address)
    row.wait_for()
    assert "Up to date" in row.inner_text()  # connected, and the (eager) initial sync of the empty mailbox ran
    assert mail_user.password not in page.content()

    row.locator("button:has-text('Test connection')").click()  # htmx swaps the row in place
    page.locator("tr.account-row .account-notice", has_text="the connection works").wait_for()
    account = EmailAccount.objects.get(user=alice)
    assert account.email_address == mail_user.address and account.last_error_code == ""


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.django_db(transaction=True)
def test_reading_only_account_when_smtp_fails_and_the_password_is_kept(
    page, alice, dovecot, smtp_server, mail_user, settings, test_ca
):
    """Point 5: reading works without a working SMTP server; the password survives the failed try."""
    settings.MAILSYNC_TRUSTED_CA_FILE = str(test_ca.ca_path)
    browser_login(page, alice)
    page.goto("/mail/settings/accounts/add/")
    page.fill("input[name=email_address]", mail_user.address)
    page.fill("input[name=password]", mail_user.password)
    fill_servers(page, dovecot, smtp_server)
    page.fill("input[name=smtp_port]", str(free_port()))  # nothing listens there
    page.click("button:has-text('Connect')")

    page.locator(".reading-works", has_text="Reading works").wait_for()
    assert "SMTP" in page.locator(".connection-error").inner_text()
    password = page.locator("input[name=password]")
    assert password.input_value() == "" and "Kept from your last try" in password.get_attribute("placeholder")
    assert mail_user.password not in page.content()
    assert not EmailAccount.objects.exists()

    page.click("button:has-text('Save without sending')")  # without typing the password again
    page.wait_for_url("**/mail/settings/")
    assert "Sending is not set up" in page.locator(".messages").inner_text()
    row = page.locator("tr.account-row", has_text=mail_user.address)
    assert "Sending is not set up" in row.inner_text()
    account = EmailAccount.objects.get(user=alice)
    assert account.smtp_host == "" and account.get_secret() == mail_user.password
    assert mail_user.password not in page.content()


@pytest.mark.django_db(transaction=True)
def test_port_fields_follow_the_security_choice(page, alice):
    browser_login(page, alice)
    page.goto("/mail/settings/accounts/add/?provider=custom")
    assert page.input_value("input[name=imap_port]") == "993"
    assert page.input_value("input[name=smtp_port]") == "465"
    page.select_option("select[name=imap_security]", "starttls")
    page.select_option("select[name=smtp_security]", "starttls")
    assert page.input_value("input[name=imap_port]") == "143"
    assert page.input_value("input[name=smtp_port]") == "587"
    page.fill("input[name=smtp_port]", "2525")  # the user's own port stays
    page.select_option("select[name=smtp_security]", "ssl")
    assert page.input_value("input[name=smtp_port]") == "2525"
    page.select_option("select[name=imap_security]", "ssl")
    assert page.input_value("input[name=imap_port]") == "993"


@pytest.mark.django_db(transaction=True)
def test_company_admin_trusts_a_private_ca_without_a_restart(
    page, chromium, live_server, alice, admin_user, dovecot, smtp_server, mail_user, test_ca
):
    """Point 5 / A4: the test servers' CA is unknown (no MAILSYNC_TRUSTED_CA_FILE), so the first try is refused;
    a company admin trusts it on its page; the owner's next try (password kept) connects."""
    browser_login(page, alice)
    page.goto("/mail/settings/accounts/add/")
    page.fill("input[name=email_address]", mail_user.address)
    page.fill("input[name=password]", mail_user.password)
    fill_servers(page, dovecot, smtp_server)
    page.click("button:has-text('Connect')")
    error = page.locator(".connection-error")
    error.wait_for()
    assert error.get_attribute("data-error-code").startswith("tls")
    assert not EmailAccount.objects.exists()

    admin_context = chromium.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    admin_page = admin_context.new_page()
    try:
        browser_login(admin_page, admin_user)
        admin_page.goto("/mail/settings/")
        admin_page.click("text=trusted certificate authorities")
        admin_page.wait_for_url("**/mail/settings/certificates/")
        admin_page.fill("input[name=name]", "Test servers' CA")
        admin_page.fill("input[name=hosts]", dovecot.host)
        admin_page.fill("textarea[name=pem]", "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----")
        admin_page.click("button:has-text('Trust it')")
        assert "private key" in admin_page.locator(".messages").inner_text()  # refused, nothing saved
        admin_page.fill("textarea[name=pem]", test_ca.ca_pem)
        admin_page.click("button:has-text('Trust it')")
        admin_page.locator("#trusted-certificates", has_text=dovecot.host).wait_for()
    finally:
        admin_context.close()
    assert client_for(alice).get("/mail/settings/certificates/").status_code == 404

    page.click("button:has-text('Connect')")  # the password is kept: no restart, nothing typed again
    page.wait_for_url("**/mail/settings/")
    account = EmailAccount.objects.get(user=alice)
    assert [c.hosts for c in account.accepted_certificates.all()] == [dovecot.host]
    assert account.smtp_host == smtp_server.host
