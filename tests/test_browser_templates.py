"""Settings > Email templates and Signatures in a real browser (issue 13): the rich-text editor with its
toolbar, the smart-field picker, a right-to-left paragraph and an uploaded signature image, under the site's
own Content-Security-Policy (no inline code)."""

import re

import pytest
from playwright.sync_api import expect

from conftest import browser_login
from mailsync.models import EmailTemplate, Signature, SignatureImage
from tests.mail_factories import EmailAccountFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
    b"\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82"
)


def csp_violations(page) -> list[str]:
    found: list[str] = []
    page.on("console", lambda msg: found.append(msg.text) if "Content Security Policy" in msg.text else None)
    return found


def test_write_a_template_with_bold_text_a_field_and_an_arabic_paragraph(page, alice):
    violations = csp_violations(page)
    browser_login(page, alice)
    page.goto("/mail/settings/")
    page.click("text=Email templates")
    page.wait_for_url("**/mail/settings/templates/")
    page.click("text=New template")
    page.fill("input[name=name]", "Intro")
    page.fill("input[name=subject]", "Hello {{person.first_name|there}}")
    editor = page.locator("#template-body-editor")
    expect(page.locator("textarea[name=body_html]")).to_be_hidden()
    editor.click()
    page.keyboard.type("Dear ")
    page.select_option("#field-picker-template-body-editor", "person.first_name")
    page.keyboard.type(", ")
    page.click("button[data-command=bold]")
    page.keyboard.type("welcome")
    page.click("button[data-command=bold]")
    page.keyboard.press("Enter")
    page.keyboard.type("مرحبا بكم")
    page.click("button[data-command=direction]")
    page.select_option("select[name=visibility]", "team")
    page.click("text=Save template")
    page.wait_for_url("**/mail/settings/templates/")
    expect(page.locator(".template-list")).to_contain_text("Intro")

    template = EmailTemplate.objects.get(owner=alice, name="Intro")
    assert template.visibility == "team"
    assert template.subject == "Hello {{person.first_name|there}}"
    assert re.search(r"Dear(&nbsp;| ){{person.first_name}}, ", template.body_html)
    assert "<b>welcome</b>" in template.body_html
    assert '<p dir="rtl">مرحبا بكم</p>' in template.body_html
    assert not violations, violations


def test_a_signature_with_an_uploaded_logo(page, alice, tmp_path, settings):
    settings.MEDIA_ROOT = str(tmp_path)
    violations = csp_violations(page)
    account = EmailAccountFactory(user=alice, email_address="alice@company.test")
    browser_login(page, alice)
    page.goto("/mail/settings/signatures/")
    page.click("text=Add a signature")
    page.fill("input[name=name]", "With logo")
    page.locator("#signature-body-editor").click()
    page.keyboard.type("Alice, Example Corp")
    page.check("input[name=default_for_new]")
    page.click("text=Save signature")
    page.wait_for_url("**/edit/")  # saved: now an image can be added
    signature = Signature.objects.get(account=account, name="With logo")
    assert signature.is_default_for_new and "Alice, Example Corp" in signature.body_html

    page.locator("#signature-body-editor").click()
    page.keyboard.press("End")
    logo = tmp_path / "logo.png"
    logo.write_bytes(PNG)
    page.set_input_files("input[data-image-upload]", str(logo))
    expect(page.locator(".rich-status")).to_have_text("Image added.")
    image = SignatureImage.objects.get(signature=signature)
    expect(page.locator(f"#signature-body-editor img[src='/mail/signature-images/{image.pk}/']")).to_be_visible()
    # The image really shows (the owner may load it) and is not broken.
    assert page.locator("#signature-body-editor img").evaluate("img => img.complete && img.naturalWidth") == 1
    page.click("text=Save signature")
    page.wait_for_url("**/mail/settings/signatures/")
    signature.refresh_from_db()
    assert f'<img src="/mail/signature-images/{image.pk}/"' in signature.body_html
    expect(page.locator(".template-list")).to_contain_text("Default for new mail")
    assert not violations, violations
