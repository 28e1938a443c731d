"""Certificate authorities a company admin trusts for self-hosted mail servers (SPEC A4), in the product:
no environment variable, no restart (the connection code reads them at every connection).

Rules that keep a password where its owner sent it (issue 10's rule for staff changes):
- only company admins add or remove one; a CA lists the server names it is trusted for and applies to
  connections to those names only; the servers of the known providers (Gmail, Microsoft...) cannot be
  listed: their certificates are public and a private CA for them could only serve to intercept;
- an account uses a company CA only once its owner has entered the password with that CA in effect
  (adding the account, or re-authenticating with a new password): `accepted_certificates`. A CA added
  later never applies to a password already stored; removing a CA stops its use at once. Even then a CA
  vouches only for the servers it lists: one listed for the company's IMAP server is not trusted for an
  SMTP server elsewhere (mailsync.connection.config.ca_pem_for_host).
- the PEM must be one or more certificates (never a private key), currently valid and loadable for TLS.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from crm.models import User
from mailsync.connection.config import matching_certificates
from mailsync.models import EmailAccount, TrustedCertificate
from mailsync.protocols import errors, imap

from . import providers

MAX_PEM_CHARS = 65536
_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class ParsedCertificate:
    pem: str
    fingerprint: str
    subject: str
    not_after: dt.datetime


def parse_certificate_pem(text: str) -> ParsedCertificate:
    """A pasted PEM -> what is stored; ValidationError with a clear reason otherwise."""
    pem = (text or "").strip()
    if not pem:
        raise ValidationError("Paste the certificate of the authority (-----BEGIN CERTIFICATE----- ...).")
    if len(pem) > MAX_PEM_CHARS:
        raise ValidationError("That is too long for a certificate.")
    if "PRIVATE KEY" in pem:
        raise ValidationError(
            "This contains a private key. Never paste a private key here: only the CA's public certificate."
        )
    try:
        certificates = x509.load_pem_x509_certificates(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise ValidationError("Not a PEM certificate: it must start with -----BEGIN CERTIFICATE-----.") from None
    now = timezone.now()
    for certificate in certificates:
        if certificate.not_valid_after_utc < now:
            raise ValidationError(f"The certificate {certificate.subject.rfc4514_string()} has expired.")
    try:
        imap.tls_context(pem)
    except errors.TlsError as error:
        raise ValidationError(error.message) from None
    first = certificates[0]
    return ParsedCertificate(
        pem=pem + "\n",
        fingerprint=first.fingerprint(hashes.SHA256()).hex(),
        subject=first.subject.rfc4514_string()[:500],
        not_after=min(certificate.not_valid_after_utc for certificate in certificates),
    )


def _provider_hosts() -> set[str]:
    hosts = set()
    for preset in providers.PRESETS:
        for host in (preset.imap_host, preset.smtp_host):
            if host and "{domain}" not in host:
                hosts.add(host.lower())
    return hosts


def clean_host_patterns(text: str) -> list[str]:
    """ "mail.acme.test *.acme.internal" -> the names; ValidationError for anything else."""
    patterns = [item.strip().lower().rstrip(".") for item in re.split(r"[\s,;]+", text or "") if item.strip()]
    if not patterns:
        raise ValidationError("Enter the server names this authority is trusted for, e.g. mail.example.com.")
    provider_hosts = _provider_hosts()
    for pattern in patterns:
        labels = pattern.removeprefix("*.").split(".")
        if len(labels) < 2 or not all(_HOST_LABEL.match(label) for label in labels):
            raise ValidationError(
                f"“{pattern}” is not a server name. Use names like mail.example.com or *.example.com."
            )
        if any(host == pattern or _wildcard_covers(pattern, host) for host in provider_hosts):
            raise ValidationError(
                f"{pattern} is a server of a public mail provider: it has a public certificate, so a private "
                "authority is never needed for it."
            )
    return patterns


def _wildcard_covers(pattern: str, host: str) -> bool:
    return pattern.startswith("*.") and host.endswith(pattern[1:])


def _require_admin(user: User) -> None:
    if not user.is_company_admin:
        raise PermissionDenied("Only company administrators manage trusted certificate authorities.")


@transaction.atomic
def add_trusted_certificate(*, admin: User, name: str, pem: str, hosts: str) -> TrustedCertificate:
    _require_admin(admin)
    name = (name or "").strip()
    if not name:
        raise ValidationError("Give it a name, e.g. “Acme internal CA”.")
    parsed = parse_certificate_pem(pem)
    host_list = clean_host_patterns(hosts)
    if TrustedCertificate.objects.filter(fingerprint=parsed.fingerprint).exists():
        raise ValidationError("This certificate is already trusted.")
    return TrustedCertificate.objects.create(
        name=name[:200],
        pem=parsed.pem,
        hosts=" ".join(host_list),
        fingerprint=parsed.fingerprint,
        subject=parsed.subject,
        not_after=parsed.not_after,
        added_by=admin,
    )


@transaction.atomic
def remove_trusted_certificate(*, admin: User, certificate: TrustedCertificate) -> None:
    """Stops its use at once: the accounts that accepted it no longer trust it."""
    _require_admin(admin)
    certificate.delete()


@transaction.atomic
def accept_certificates_for(*, account: EmailAccount) -> list[TrustedCertificate]:
    """Called when the owner has just entered the password with the current CAs in effect (connect,
    re-authenticate with a new password): from now on the account trusts the company CAs of its servers."""
    matching = matching_certificates([account.imap_host, account.smtp_host])
    account.accepted_certificates.set(matching)
    return matching
