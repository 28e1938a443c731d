"""Every page in a real browser, on demo data: nothing scrolls sideways on a phone (390 px), the main
pages have no serious or critical accessibility violation (axe-core), and screenshots of the main pages
at 1400 and 390 px for a person to look at.

The pages are found from the URL resolver: every pattern's URL, its arguments filled from the demo data,
is opened in Chromium by the demo user, then by the company admin, a teammate and an anonymous visitor
until one of them gets a full HTML page, which is then measured. POST-only endpoints (405), redirects,
fragments, downloads and non-HTML answers are not pages. Patterns that need a one-time token from an
email (password reset, address confirmation) are the only ones left out.

Screenshots are taken when $CRM_SCREENSHOT_DIR names a folder for them (e.g.
`CRM_SCREENSHOT_DIR=var/screenshots make test PYTEST_ARGS="tests/test_browser_pages.py"`).
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.contrib import admin
from django.core.management import call_command
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from conftest import browser_login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1400, "height": 900}
AXE_VERSION = "4.14.1"
AXE_FILE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
# Patterns whose arguments are one-time tokens sent by email: no page to visit without that email.
TOKEN_ONLY = {
    "account_confirm_email",
    "account_reset_password_from_key",
    "mailsync:smart_bcc_confirm",
    "tracking_open",  # the pixel and the links of tracked mail: signed, not pages
    "tracking_click",
}
DEMO_PASSWORD = "demo-password-123"
PNG_PIXEL = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
    b"\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82"
)
ADMIN_PASSWORD = "admin-password-123"


@dataclass
class Demo:
    """The `make run` demo company, plus a teammate of the demo user who sees one shared conversation."""

    demo: object
    admin: object
    teammate: object
    objects: dict


@pytest.fixture
def demo_company(db):
    from django.core.files.base import ContentFile

    from crm.models import User
    from mailsync.models import (
        Attachment,
        BlockedAddress,
        EmailAccount,
        EmailTemplate,
        EmailThread,
        Signature,
        SignatureImage,
        SmartBccSender,
        ThreadLink,
    )
    from tests.factories import PASSWORD, UserFactory

    call_command("seed_demo", stdout=open(os.devnull, "w"))  # noqa: SIM115
    demo = User.objects.get(email="demo@example.com")
    admin_user = User.objects.get(email="admin@example.com")
    teammate = UserFactory(email="bob@example.com", first_name="Bob", last_name="Teammate", team=demo.team)
    teammate.set_password(PASSWORD)
    teammate.save(update_fields=["password"])
    shared = EmailThread.objects.filter(owner=demo, subject="Anvils for 2027").get()
    shared.visibility = EmailThread.Visibility.SHARED
    shared.save(update_fields=["visibility"])
    blocked = BlockedAddress.objects.create(user=demo, pattern="@spam.example")
    deal = shared.links.filter(state=ThreadLink.State.LINKED, deal__isnull=False).get().deal
    signature = Signature.objects.filter(account__user=demo).order_by("pk").first()
    image = SignatureImage(signature=signature, content_type="image/png", size=len(PNG_PIXEL))
    image.file.save("logo.png", ContentFile(PNG_PIXEL), save=False)
    image.save()
    objects = {
        "person": deal.person,
        "organization": deal.organization,
        "deal": deal,
        "lead": demo_lead(),
        "project": demo_project(),
        "thread": shared,
        "account": EmailAccount.objects.get(user=demo),
        "attachment": Attachment.objects.filter(message__thread=shared).first(),
        "blocked": blocked,
        "link": shared.links.first(),
        "sender": SmartBccSender.objects.create(user=demo, address="demo.alias@example.com"),
        **demo_outgoing(demo, shared),
        "template": EmailTemplate.objects.filter(owner=demo).order_by("pk").first(),
        "signature": signature,
        "signature_image": image,
        "certificate": demo_certificate(admin_user),
    }
    return Demo(demo=demo, admin=admin_user, teammate=teammate, objects=objects)


def demo_outgoing(demo, thread) -> dict:
    """A reply being written (with an attachment) and a message that failed to send, for the composer,
    the outgoing message page and the drafts list."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    from mailsync.models import OutgoingMessage
    from mailsync.sending import services

    source = thread.messages.order_by("date").last()
    draft = services.create_draft(user=demo, kind=OutgoingMessage.Kind.REPLY, source=source)
    services.save_draft(
        outgoing=draft,
        to=draft.to_addresses,
        cc="",
        bcc="",
        subject=draft.subject,
        body_html="<div>Thanks, we will send the <b>signed order</b> on Monday.</div><div>مع أطيب التحيات</div>",
    )
    attachment = services.add_attachment(
        outgoing=draft,
        upload=SimpleUploadedFile("Order form 2027 (signed).pdf", b"%PDF-1.4 demo", content_type="application/pdf"),
    )
    failed = services.create_draft(user=demo, to="procurement@anvil-industries.example")
    OutgoingMessage.objects.filter(pk=failed.pk).update(
        subject="Delivery schedule",
        state=OutgoingMessage.State.FAILED,
        error_code="smtp_auth_refused",
        error_message="The outgoing (SMTP) server refused the login.",
        error_fix="Check the password. Some providers need SMTP sign-in switched on for the mailbox.",
    )
    return {"outgoing": draft, "outgoing_attachment": attachment, "failed_outgoing": failed, "message": source}


def demo_certificate(admin_user):
    """A company CA on the admin's trusted certificate authorities page."""
    import tempfile

    from devtools.mailservers import TestCA
    from mailsync.accounts import certificates

    with tempfile.TemporaryDirectory() as directory:
        pem = TestCA(Path(directory)).ca_pem
    return certificates.add_trusted_certificate(
        admin=admin_user, name="Demo company CA", pem=pem, hosts="mail.example.com *.corp.example.com"
    )


def demo_lead():
    from leads.models import Lead

    return Lead.objects.order_by("pk").first()


def demo_project():
    from projects.models import Project

    return Project.objects.order_by("pk").first()


def _patterns(patterns, prefix="", namespace=""):
    """(route, url name, argument names) of every named pattern outside the admin."""
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            if pattern.app_name == "admin":
                continue
            inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
            yield from _patterns(pattern.url_patterns, prefix + str(pattern.pattern), inner)
        elif isinstance(pattern, URLPattern) and pattern.name:
            yield prefix + str(pattern.pattern), namespace + pattern.name, list(pattern.pattern.regex.groupindex)


def _arguments(name: str, arguments: list[str], objects: dict) -> dict | None:
    """Fill a pattern's arguments from the demo records; None when it needs something the demo lacks."""
    short = name.split(":")[-1]
    values = {}
    for argument in arguments:
        if argument == "pk":
            kind = next(
                (
                    kind
                    for prefix, kind in (
                        ("person_", "person"),
                        ("organization_", "organization"),
                        ("deal_", "deal"),
                        ("lead_", "lead"),
                        ("project_", "project"),
                        ("thread_", "thread"),
                        ("account_", "account"),
                        ("past_sync", "account"),
                        ("attachment_", "attachment"),
                        ("blocked_", "blocked"),
                        ("record_timeline", "deal"),
                        ("smart_bcc_resend", "sender"),
                        ("smart_bcc_remove_sender", "sender"),
                        ("compose_file", "outgoing_attachment"),
                        ("compose_reply", "message"),
                        ("compose", "outgoing"),
                        ("outgoing_", "outgoing"),
                        ("email_template_", "template"),
                        ("template_fill", "template"),
                        ("signature_image", "signature_image"),
                        ("signature_", "signature"),
                        ("trusted_certificate", "certificate"),
                    )
                    if short.startswith(prefix)
                ),
                None,
            )
            record = objects.get(kind)
            if record is None:
                return None
            values["pk"] = record.pk
        elif argument == "account_pk":
            values["account_pk"] = objects["account"].pk
        elif argument == "link_pk" and objects.get("link"):
            values["link_pk"] = objects["link"].pk
        elif argument == "email_pk" and objects.get("person") and objects["person"].emails.exists():
            values["email_pk"] = objects["person"].emails.first().pk
        elif argument == "kind":
            values["kind"] = "deal"
        elif argument == "provider":
            values["provider"] = "google"
        else:
            return None
    return values


PRODUCT_APPS = {"crm", "contacts", "deals", "leads", "projects", "mailsync"}


def _admin_urls(objects) -> list[str]:
    """The admin's home, the list of each registered model, and a change page of each of the product's
    own models (the libraries' change pages are theirs)."""
    urls = [reverse("admin:index")]
    for model in admin.site._registry:
        info = (model._meta.app_label, model._meta.model_name)
        urls.append(reverse("admin:{}_{}_changelist".format(*info)))
        first = model._default_manager.order_by("pk").first()
        if first is not None and model._meta.app_label in PRODUCT_APPS:
            urls.append(reverse("admin:{}_{}_change".format(*info), args=[first.pk]))
    return urls


def candidate_urls(company: Demo) -> list[str]:
    """A URL for every pattern of the resolver (arguments from the demo data), then the admin's pages."""
    urls = []
    for _route, name, arguments in _patterns(get_resolver().url_patterns):
        if name in TOKEN_ONLY:
            continue
        values = _arguments(name, arguments, company.objects)
        assert values is not None, f"the demo data cannot fill the arguments of {name} ({arguments})"
        url = reverse(name, kwargs=values)
        if name == "mailsync:thread_detail":
            url += "?in=inbox"  # opened from the list: the reading pane with the list beside it
        urls.append(url)
    # A colleague's view of the shared conversation (no list beside it, Back to the deal).
    thread, deal = company.objects["thread"], company.objects["deal"]
    urls.append(f"{thread.get_absolute_url()}?back={deal.get_absolute_url()}")
    return urls + _admin_urls(company.objects)


def _is_page(page, url: str) -> bool:
    """Whether `url` answers this visitor with a full HTML page (not a redirect, a download, an error,
    a fragment or JSON). Asked through the browser context's own HTTP client (same cookies), so that
    probing the POST-only endpoints and downloads navigates nowhere."""
    response = page.context.request.get(url, max_redirects=0)
    try:
        return (
            response.status == 200
            and response.headers.get("content-type", "").startswith("text/html")
            and response.text().lstrip()[:15].lower() == "<!doctype html>"
        )
    finally:
        response.dispose()


def _overflow(page) -> dict:
    """The document's width, and the elements that stick out of the viewport (for the message)."""
    return page.evaluate(
        """() => {
          const width = document.documentElement.clientWidth;
          const wide = [];
          for (const el of document.body.querySelectorAll('*')) {
            const box = el.getBoundingClientRect();
            if (box.width && box.right > width + 1) {
              let clipped = false;
              for (let up = el.parentElement; up && up !== document.body; up = up.parentElement) {
                if (getComputedStyle(up).overflowX !== 'visible' && up.getBoundingClientRect().right <= width + 1) {
                  clipped = true; break;
                }
              }
              if (!clipped) wide.push(`${el.tagName.toLowerCase()}.${el.className} (${Math.round(box.right)}px)`);
            }
          }
          return {scroll: document.documentElement.scrollWidth, viewport: width, wide: wide.slice(0, 5)};
        }"""
    )


def _login(page, who: str, company: Demo) -> None:
    if who == "anonymous":
        return
    user = {"demo": company.demo, "admin": company.admin, "teammate": company.teammate}[who]
    password = {"demo": DEMO_PASSWORD, "admin": ADMIN_PASSWORD, "teammate": None}[who]
    browser_login(page, user, password)


def _new_page(chromium, live_server, viewport):
    context = chromium.new_context(base_url=live_server.url, viewport=viewport)
    context.set_default_timeout(15_000)
    # Only this test's server: a redirect to an outside sign-in page (OAuth, when configured) stays unvisited.
    context.route(lambda url: not url.startswith(live_server.url), lambda route: route.abort())
    return context, context.new_page()


def test_no_page_scrolls_sideways_on_a_phone(chromium, live_server, demo_company):
    """Each candidate URL is opened by the demo user, then (if it was no page for them) by the company
    admin, the teammate and an anonymous visitor; every full page is measured where it opened."""
    pending = candidate_urls(demo_company)
    pages: dict[str, list[str]] = {}
    failures = []
    for who in ("demo", "admin", "teammate", "anonymous"):
        context, page = _new_page(chromium, live_server, PHONE)
        _login(page, who, demo_company)
        for url in list(pending):
            if not _is_page(page, url):
                continue
            pending.remove(url)
            page.goto(url)
            pages.setdefault(who, []).append(url)
            measured = _overflow(page)
            if measured["scroll"] > measured["viewport"]:
                failures.append((who, url, measured))
        context.close()
    assert not failures, "\n".join(f"{who} {url}: {m}" for who, url, m in failures)
    # The resolver found the product's pages: lists, details, forms, mail, settings, sign-in, the admin.
    assert sum(len(urls) for urls in pages.values()) >= 45, pages
    for expected in ("/", "/people/", "/deals/new/", "/mail/", "/mail/settings/", "/mail/status/", "/admin/"):
        assert any(expected in urls for urls in pages.values()), expected
    assert "/mail/status/" in pages.get("admin", []), (pages, pending)
    assert "/accounts/login/" in pages.get("anonymous", []), (pages, pending)
    # What was no page for anyone: POST-only endpoints, redirects, fragments, downloads, JSON.
    assert "/mail/actions/" in pending and "/healthz" in pending and "/favicon.ico" in pending


def test_the_compact_menu_opens_and_fits_a_phone(chromium, live_server, demo_company):
    from playwright.sync_api import expect

    context, page = _new_page(chromium, live_server, PHONE)
    browser_login(page, demo_company.demo, DEMO_PASSWORD)
    page.goto("/deals/")
    toggle = page.locator("[data-menu-toggle]")
    menu = page.locator("#topbar-menu")
    expect(toggle).to_be_visible()
    expect(menu).to_be_hidden()
    assert page.locator(".topbar").bounding_box()["height"] < 70  # not a 250 px dark block
    toggle.click()
    expect(menu).to_be_visible()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    expect(menu.locator("a[aria-current=page]")).to_have_text("Deals")
    assert _overflow(page)["scroll"] <= PHONE["width"]
    page.keyboard.press("Escape")
    expect(menu).to_be_hidden()
    toggle.click()
    menu.locator("text=Inbox").click()  # a boosted navigation: the new page starts with the menu folded
    page.wait_for_url(re.compile(r"/mail/$"))
    expect(page.locator("#topbar-menu")).to_be_hidden()
    context.close()

    # On a wide screen the menu is simply there.
    context, page = _new_page(chromium, live_server, DESKTOP)
    browser_login(page, demo_company.demo, DEMO_PASSWORD)
    expect(page.locator("[data-menu-toggle]")).to_be_hidden()
    expect(page.locator("#topbar-menu")).to_be_visible()
    context.close()


MAIN_PAGES = [
    ("demo", "home", lambda o: reverse("home")),
    ("demo", "people", lambda o: reverse("contacts:person_list")),
    ("demo", "person", lambda o: o["person"].get_absolute_url()),
    ("demo", "organization", lambda o: o["organization"].get_absolute_url()),
    ("demo", "deals", lambda o: reverse("deals:deal_list")),
    ("demo", "deal", lambda o: o["deal"].get_absolute_url()),
    ("demo", "deal-form", lambda o: reverse("deals:deal_create")),
    ("demo", "lead", lambda o: o["lead"].get_absolute_url()),
    ("demo", "project", lambda o: o["project"].get_absolute_url()),
    ("demo", "inbox", lambda o: reverse("mailsync:inbox")),
    ("demo", "sent", lambda o: reverse("mailsync:sent")),
    ("demo", "thread", lambda o: o["thread"].get_absolute_url() + "?in=inbox"),
    ("demo", "compose", lambda o: reverse("mailsync:compose", args=[o["outgoing"].pk])),
    ("demo", "drafts", lambda o: reverse("mailsync:drafts")),
    ("demo", "outgoing-failed", lambda o: reverse("mailsync:outgoing_detail", args=[o["failed_outgoing"].pk])),
    ("demo", "settings", lambda o: reverse("mailsync:settings")),
    ("demo", "add-account", lambda o: reverse("mailsync:account_add")),
    ("demo", "templates", lambda o: reverse("mailsync:email_templates")),
    ("demo", "template-form", lambda o: reverse("mailsync:email_template_edit", args=[o["template"].pk])),
    ("demo", "signature-form", lambda o: reverse("mailsync:signature_edit", args=[o["signature"].pk])),
    ("admin", "status", lambda o: reverse("mailsync:status")),
    ("admin", "certificates", lambda o: reverse("mailsync:trusted_certificates")),
    ("anonymous", "login", lambda o: reverse("account_login")),
]


def _screenshot_dir() -> Path | None:
    """Where to keep screenshots ($CRM_SCREENSHOT_DIR); None: take none (they cost time, and only a
    person looking at them makes them worth it)."""
    configured = os.environ.get("CRM_SCREENSHOT_DIR")
    if not configured:
        return None
    directory = Path(configured)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _axe(page) -> list[dict]:
    """Serious and critical violations of axe-core on the page as it is (mail bodies in their sandboxed
    frames are the senders' markup and are not checked)."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        # Evaluated through the DevTools protocol, so the page's Content-Security-Policy allows it.
        page.evaluate(AXE_FILE.read_text())
    assert page.evaluate("axe.version") == AXE_VERSION
    result = page.evaluate("async () => (await axe.run(document, {iframes: false, resultTypes: ['violations']}))")
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:3]}
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def test_main_pages_are_accessible_and_photographed(chromium, live_server, demo_company):
    assert AXE_FILE.exists(), f"{AXE_FILE} is missing (see tests/vendor/axe-core/README.md)"
    shots = _screenshot_dir()
    violations = []
    for viewport in (DESKTOP, PHONE):
        contexts = {}
        for who, name, url_of in MAIN_PAGES:
            if who not in contexts:
                contexts[who] = _new_page(chromium, live_server, viewport)
                _login(contexts[who][1], who, demo_company)
            page = contexts[who][1]
            page.goto(url_of(demo_company.objects))
            found = _axe(page)
            if found:
                violations.append((viewport["width"], name, found))
            if shots:
                page.screenshot(path=str(shots / f"{name}-{viewport['width']}.png"), full_page=True)
        # The keyboard shortcuts dialog is part of the page too.
        page = contexts["demo"][1]
        page.goto(reverse("mailsync:inbox"))
        page.keyboard.press("?")
        page.locator("#shortcuts-help").wait_for()
        found = _axe(page)
        if found:
            violations.append((viewport["width"], "shortcuts", found))
        if shots:
            page.screenshot(path=str(shots / f"shortcuts-{viewport['width']}.png"))
        for context, _page in contexts.values():
            context.close()
    assert not violations, violations
    if shots:
        assert len(list(shots.glob("*.png"))) >= 2 * len(MAIN_PAGES)
