"""Settings > Email sync in a real browser, against the test Dovecot and aiosmtpd (tests/mailservers.py).

The test servers' certificates come from the suite's own CA. Like an admin of a self-hosted deployment,
the test trusts that CA for every account (settings.MAILSYNC_TRUSTED_CA_FILE, A4); the user's form
offers no way to skip certificate checks, and unencrypted connections only to localhost.
"""

import pytest

from conftest import browser_login
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
