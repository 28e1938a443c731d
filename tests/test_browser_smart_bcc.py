"""Settings > Smart BCC in a real browser: the copy button, "New address", alternates and "Not filed",
under a strict Content-Security-Policy (no inline code), at desktop and phone widths."""

import os
from pathlib import Path

import pytest

from conftest import browser_login
from mailsync.inbound import services
from mailsync.inbound.filing import InboundMail, file_message
from mailsync.models import SmartBccAddress, SmartBccSender
from tests.smart_bcc_support import sent_copy

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
CSP = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:"
SCREENSHOTS = Path(os.environ.get("SCREENSHOT_DIR", "var/screenshots"))


def with_csp(page) -> list[str]:
    """Serve every page with a CSP that forbids inline scripts; return the violations the browser reports."""
    violations: list[str] = []

    def add_header(route):
        response = route.fetch()
        route.fulfill(response=response, headers={**response.headers, "content-security-policy": CSP})

    page.route("**/mail/**", add_header)
    page.on("console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None)
    return violations


def test_copy_button_new_address_and_alternates(page, alice, smart_bcc_settings):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    violations = with_csp(page)
    browser_login(page, alice)
    page.goto("/mail/settings/")
    page.click("text=Your Smart BCC address and senders")
    page.wait_for_url("**/mail/settings/smart-bcc/")

    address = page.input_value("#smart-bcc-value")
    assert address.startswith("u-") and address.endswith("@bcc.crm.test")
    page.click("button:has-text('Copy')")
    page.locator("[data-copy-status]", has_text="Copied").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == address

    page.once("dialog", lambda dialog: dialog.accept())  # "Get a new address? ..."
    page.click("button:has-text('New address')")
    page.locator(".messages", has_text="Your new Smart BCC address is").wait_for()
    new = page.input_value("#smart-bcc-value")
    assert new != address
    assert SmartBccAddress.objects.get(user=alice, retired_at__isnull=True).local_part == new.split("@")[0]
    page.click("button:has-text('Copy')")  # still works after the boosted swap
    page.locator("[data-copy-status]", has_text="Copied").wait_for()

    page.fill("input[name=address]", "alice@home.example")
    page.click("button:has-text('Send confirmation link')")
    page.locator(".messages", has_text="We sent a confirmation link to alice@home.example").wait_for()
    assert "Waiting for confirmation" in page.locator("#smart-bcc-senders").inner_text()
    assert violations == []


def test_not_filed_list_and_screenshots(page, alice, smart_bcc_settings):
    address = services.ensure_address(user=alice)
    recipient = f"{address.local_part}@bcc.crm.test"
    confirmed = services.add_alternate_sender(user=alice, address="alice.owner@gmail.com")
    services.confirm_sender(token=services.confirmation_token(confirmed))
    SmartBccSender.objects.create(user=alice, address="a.owner@partner-agency.example")
    file_message(InboundMail(raw=sent_copy(), recipient=recipient, channel="smtp"))
    for sender, subject in (
        ("Mallory <billing@evil-invoices.example>", "Invoice 2027-118 overdue: please pay today"),
        ("a.owner@partner-agency.example", "Proposal draft for the Hamburg project"),
        ("Assistant <assistant@company.test>", "Meeting notes, 14 March (sent on behalf of Alice)"),
    ):
        file_message(InboundMail(raw=sent_copy(sender=sender, subject=subject), recipient=recipient, channel="mailgun"))

    violations = with_csp(page)
    browser_login(page, alice)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for width in (1400, 390):
        page.set_viewport_size({"width": width, "height": 900})
        page.goto("/mail/settings/smart-bcc/")
        not_filed = page.locator("#smart-bcc-not-filed").inner_text()
        assert "Invoice 2027-118 overdue" in not_filed
        assert "Sent from an alternate address that is not confirmed yet" in not_filed
        assert "1 message filed through Smart BCC" in page.content()
        # nothing wider than the screen
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        page.screenshot(path=str(SCREENSHOTS / f"smart-bcc-{width}.png"), full_page=True)
    page.click("button:has-text('I send from this address: add it') >> nth=0")
    page.locator(".messages", has_text="We sent a confirmation link to assistant@company.test").wait_for()
    assert violations == []
