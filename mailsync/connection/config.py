"""How to reach a saved mail account's servers: its settings, its credentials, its IMAP and SMTP configs.

`account_imap_config(account)` / `account_smtp_config(account)` build the plain configs that
mailsync.protocols needs, decrypting the secret and refreshing an OAuth2 token when it is about to
expire (the new token is stored at once). `check_connection` logs in over IMAP and SMTP with settings
that are not saved yet (the add-account form) and `check_account` with a saved account's.

Used by the sync engine, the IDLE watcher, the outbox replay, sending and the account services; none of
them needs another to know how an account connects. Network I/O here never runs inside a transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import transaction

from mailsync.models import AuthKind, EmailAccount, TrustedCertificate
from mailsync.protocols import errors, hosts, imap, oauth, smtp

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AccountSettings:
    """Where and how to connect (everything except the secret)."""

    email_address: str
    provider: str
    username: str
    auth_kind: str
    imap_host: str
    imap_port: int
    imap_security: str
    smtp_host: str
    smtp_port: int
    smtp_security: str
    attachment_limit_mb: int = 25
    display_name: str = ""


def deployment_trusted_ca_pem() -> str:
    """The CA an admin trusts for every account (settings.MAILSYNC_TRUSTED_CA_FILE), or ""."""
    path = getattr(settings, "MAILSYNC_TRUSTED_CA_FILE", "")
    if not path:
        return ""
    try:
        return Path(path).read_text()
    except OSError:
        logger.warning("MAILSYNC_TRUSTED_CA_FILE %s cannot be read", path)
        return ""


def trusted_ca_for(extra_pem: str = "") -> str:
    return "\n".join(pem.strip() for pem in (deployment_trusted_ca_pem(), extra_pem) if pem.strip())


def host_matches(pattern: str, host: str) -> bool:
    """ "mail.acme.test" matches itself; "*.acme.test" matches one level below (as TLS wildcards do)."""
    host = host.strip().lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return host == pattern


def matching_certificates(hosts: list[str]) -> list[TrustedCertificate]:
    """The company's trusted CAs (mailsync.accounts.certificates) listed for any of these server names."""
    wanted = [host for host in hosts if host]
    return [
        certificate
        for certificate in TrustedCertificate.objects.all()
        if any(host_matches(pattern, host) for pattern in certificate.host_list for host in wanted)
    ]


def ca_pem_for_host(host: str, *, own_pem: str = "", certificates: Iterable[TrustedCertificate] = ()) -> str:
    """What one connection trusts beyond the system CAs: `own_pem` (an account's CA set by support staff)
    and those of the company CAs that are listed for this very server (never for another one)."""
    company = [
        certificate.pem.strip()
        for certificate in certificates
        if any(host_matches(pattern, host) for pattern in certificate.host_list)
    ]
    return "\n".join(pem for pem in (own_pem.strip(), *company) if pem)


def account_ca_pem(account: EmailAccount, host: str) -> str:
    """For a saved account's connection to `host`: its own CA and the company CAs its owner accepted (by
    entering the password while they were in effect) that are listed for `host`."""
    return ca_pem_for_host(host, own_pem=account.trusted_ca_pem, certificates=account.accepted_certificates.all())


def mail_host_resolver() -> hosts.Resolver:
    """Every connection made for a mail account goes to public addresses only, unless the operator allows
    private ones (MAILSYNC_ALLOW_PRIVATE_HOSTS); see mailsync.protocols.hosts."""
    return hosts.checked_resolver(allow_private=settings.MAILSYNC_ALLOW_PRIVATE_HOSTS)


def _protocol_auth_kind(auth_kind: str) -> str:
    return imap.AUTH_OAUTH2 if auth_kind == AuthKind.OAUTH2 else "password"


def imap_config(account_settings: AccountSettings, *, secret: str, trusted_ca_pem: str = "") -> imap.ImapConfig:
    return imap.ImapConfig(
        host=account_settings.imap_host,
        port=account_settings.imap_port,
        security=account_settings.imap_security,
        username=account_settings.username,
        secret=secret,
        auth_kind=_protocol_auth_kind(account_settings.auth_kind),
        trusted_ca_pem=trusted_ca_for(trusted_ca_pem),
        timeout=settings.MAILSYNC_CONNECT_TIMEOUT,
        resolve_host=mail_host_resolver(),
    )


def smtp_config(account_settings: AccountSettings, *, secret: str, trusted_ca_pem: str = "") -> smtp.SmtpConfig:
    return smtp.SmtpConfig(
        host=account_settings.smtp_host,
        port=account_settings.smtp_port,
        security=account_settings.smtp_security,
        username=account_settings.username,
        secret=secret,
        auth_kind=_protocol_auth_kind(account_settings.auth_kind),
        trusted_ca_pem=trusted_ca_for(trusted_ca_pem),
        timeout=settings.MAILSYNC_CONNECT_TIMEOUT,
        resolve_host=mail_host_resolver(),
    )


def check_connection(
    *,
    account_settings: AccountSettings,
    secret: str,
    trusted_ca_pem: str = "",
    certificates: Iterable[TrustedCertificate] = (),
) -> None:
    """Log in over IMAP (and list the folders), then over SMTP. Raises a classified errors.MailError.
    `certificates`: company CAs in effect, each used only for the servers it is listed for."""
    certificates = list(certificates)
    imap_ca = ca_pem_for_host(account_settings.imap_host, own_pem=trusted_ca_pem, certificates=certificates)
    with imap.connect(imap_config(account_settings, secret=secret, trusted_ca_pem=imap_ca)) as session:
        session.list_folders()
    if account_settings.smtp_host:
        smtp_ca = ca_pem_for_host(account_settings.smtp_host, own_pem=trusted_ca_pem, certificates=certificates)
        smtp.verify_login(smtp_config(account_settings, secret=secret, trusted_ca_pem=smtp_ca))


def settings_of(account: EmailAccount) -> AccountSettings:
    return AccountSettings(
        email_address=account.email_address,
        provider=account.provider,
        username=account.username,
        auth_kind=account.auth_kind,
        imap_host=account.imap_host,
        imap_port=account.imap_port,
        imap_security=account.imap_security,
        smtp_host=account.smtp_host,
        smtp_port=account.smtp_port,
        smtp_security=account.smtp_security,
        attachment_limit_mb=account.attachment_limit_mb,
        display_name=account.display_name,
    )


def current_secret(account: EmailAccount) -> str:
    """The password, or a fresh OAuth2 access token (refreshed and stored when about to expire)."""
    secret = account.get_secret()
    if not secret and account.last_error_code == errors.ServerSettingsChanged.code:
        raise errors.ServerSettingsChanged(detail="empty secret", protocol="imap")  # still waiting for the owner
    if not secret:
        raise errors.AuthFailed("No credentials are stored for this account.", detail="empty secret")
    if account.auth_kind != AuthKind.OAUTH2:
        return secret
    tokens = oauth.OAuthTokens.from_secret(secret)
    if tokens.expires_soon():
        tokens = oauth.refresh_access_token(tokens.provider, refresh_token=tokens.refresh_token)
        store_secret(account=account, secret=tokens.to_secret())
    return tokens.access_token


@transaction.atomic
def store_secret(*, account: EmailAccount, secret: str) -> None:
    account.set_secret(secret)
    account.save(update_fields=["secret_encrypted", "updated_at"])


def account_imap_config(account: EmailAccount) -> imap.ImapConfig:
    """The IMAP config of a saved account, for the sync engine (may refresh the OAuth2 token)."""
    trusted = account_ca_pem(account, account.imap_host)
    return imap_config(settings_of(account), secret=current_secret(account), trusted_ca_pem=trusted)


def account_smtp_config(account: EmailAccount) -> smtp.SmtpConfig:
    trusted = account_ca_pem(account, account.smtp_host)
    return smtp_config(settings_of(account), secret=current_secret(account), trusted_ca_pem=trusted)


def check_account(account: EmailAccount, *, secret: str | None = None) -> None:
    """Test a saved account with its stored credentials, or with a `secret` its owner has just typed: only
    then do the company CAs of its servers apply that it has not accepted yet. Raises errors.MailError."""
    if secret is None:
        secret, certificates = current_secret(account), list(account.accepted_certificates.all())
    else:
        certificates = matching_certificates([account.imap_host, account.smtp_host])
    check_connection(
        account_settings=settings_of(account),
        secret=secret,
        trusted_ca_pem=account.trusted_ca_pem,
        certificates=certificates,
    )
