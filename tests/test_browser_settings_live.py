"""Settings > Email sync refreshes itself while an account syncs (issue 17, point 4): one state per account,
updated live without a reload; the "Sync past emails" form appears once the initial sync has finished."""

import pytest
from django.utils import timezone

from conftest import browser_login
from mailsync.models import EmailAccount

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
State = EmailAccount.State


def test_settings_updates_itself_when_the_initial_sync_ends(page, alice):
    account = EmailAccount(
        user=alice,
        email_address="alice@mail.example",
        username="alice@mail.example",
        imap_host="imap.mail.example",
        smtp_host="smtp.mail.example",
        state=State.INITIAL_SYNC,
    )
    account.set_secret("not-used-here")
    account.save()
    browser_login(page, alice)
    page.goto("/mail/settings/")
    row = page.locator(f"#account-{account.pk}")
    badge = row.locator(".badge")
    assert badge.inner_text() == "Syncing"
    assert "Initial sync of the last 3 days is running." in row.inner_text()
    past_sync = page.locator(f"#past-sync-{account.pk}")
    assert "Offered once the initial sync" in past_sync.inner_text()

    now = timezone.now()
    EmailAccount.objects.filter(pk=account.pk).update(
        state=State.SYNCING, last_success_at=now, initial_sync_done_at=now
    )
    # No reload: the list and the section poll every 3 s.
    page.locator(f"#account-{account.pk} .badge", has_text="Up to date").wait_for(timeout=10_000)
    page.locator(f"#past-sync-{account.pk} button", has_text="Sync past emails").wait_for(timeout=10_000)
    row_text = page.locator(f"#account-{account.pk}").inner_text()
    assert "Syncing" not in row_text and "Working" not in row_text and row_text.count("Up to date") == 1
    assert page.locator("#account-list").get_attribute("data-polling") == "false"
    assert page.locator("#account-list[hx-get]").count() == 0  # settled: nothing polls any more
