"""Shared pieces of the Smart BCC tests: the domain, alice's address and a realistic BCC copy.

Loaded as a pytest plugin from the root conftest, so its fixtures reach every test module.
"""

from __future__ import annotations

import email.utils
from email.message import EmailMessage

import pytest

DOMAIN = "bcc.crm.test"
CUSTOMER = "carol@customer.example"


@pytest.fixture
def smart_bcc_settings(settings):
    settings.MAILSYNC_SMART_BCC_DOMAIN = DOMAIN
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    return settings


@pytest.fixture
def alice_bcc(alice, smart_bcc_settings) -> str:
    """alice's Smart BCC address (created on first use)."""
    from mailsync.inbound import selectors, services

    return selectors.full_address(services.ensure_address(user=alice))


def sent_copy(
    *,
    sender: str = "Alice Owner <alice@company.test>",
    to: str = f"Carol Customer <{CUSTOMER}>",
    subject: str = "Offer for 2027",
    body: str = "Hello Carol,\n\nthe offer is attached.\n\nAlice\n",
    message_id: str | None = None,
    attachment: bytes | None = b"%PDF-1.4 offer\n",
    headers: dict[str, str] | None = None,
) -> bytes:
    """The BCC copy of a message as a mail client sends it (no Bcc header: only the envelope names the
    Smart BCC address), with a PDF attachment."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = email.utils.formatdate(localtime=False)
    message["Message-ID"] = message_id or email.utils.make_msgid(domain="company.test")
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(body)
    if attachment is not None:
        message.add_attachment(attachment, maintype="application", subtype="pdf", filename="offer.pdf")
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
