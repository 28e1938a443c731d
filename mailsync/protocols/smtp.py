"""SMTP connections for mail accounts: open + secure + log in, with classified errors (errors.py).

`connect(config)` returns a logged-in `smtplib.SMTP` (use it as a context manager); `verify_login(config)`
only proves that sending would work; `send_message` hands over one message. What is sent (MIME, the
Sent copy, states) is mailsync.sending's business.
The TLS policy is the one of imap.py: system CAs + hostname check, plus an admin-trusted CA if set.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
import socket
from dataclasses import dataclass, field

from . import errors, hosts, oauth
from .imap import (
    AUTH_OAUTH2,
    SECURITY_NONE,
    SECURITY_SSL,
    SECURITY_STARTTLS,
    classify_network_error,
    describe_banner,
    tls_context,
)


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    security: str = SECURITY_SSL  # "ssl" (implicit TLS, usually 465), "starttls" (587) or "none"
    username: str = ""
    secret: str = field(default="", repr=False)  # password / app password, or the OAuth2 access token
    auth_kind: str = "password"
    trusted_ca_pem: str = field(default="", repr=False)
    timeout: float = 15.0
    # As in imap.ImapConfig: resolves and checks the host; the connection goes to those addresses only.
    resolve_host: hosts.Resolver | None = field(default=None, repr=False, compare=False)


_APP_PASSWORD_HINTS = re.compile(
    r"application.specific.password|\bapp.?password|5\.7\.9|web.?login.required|log.?in via (your )?web.?browser",
    re.IGNORECASE,
)
_SMTP_AUTH_DISABLED_HINTS = re.compile(r"SmtpClientAuthentication is disabled|5\.7\.139|basic auth", re.IGNORECASE)


def _server_text(code: int | None, message: bytes | str, config: SmtpConfig) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
    prefix = f"{code} " if code else ""
    return errors.scrub(prefix + " ".join(text.split()), config.secret)


def _classify(exc: BaseException, config: SmtpConfig) -> errors.MailError:
    if isinstance(exc, errors.MailError):
        return exc
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        text = _server_text(exc.smtp_code, exc.smtp_error, config)
        if _APP_PASSWORD_HINTS.search(text):
            return errors.AppPasswordRequired(detail=text, protocol="smtp")
        if config.auth_kind == AUTH_OAUTH2:
            return errors.OAuthFailed(detail=text, protocol="smtp")
        if _SMTP_AUTH_DISABLED_HINTS.search(text):
            return errors.SmtpAuthRefused(
                "The outgoing (SMTP) server does not allow this login method for your mailbox.",
                fix="Ask your administrator to allow authenticated SMTP for the mailbox, or connect with "
                "your provider's sign-in (OAuth2) if it is offered.",
                detail=text,
                protocol="smtp",
            )
        return errors.SmtpAuthRefused(detail=text, protocol="smtp")
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return errors.SmtpAuthUnavailable(detail=_server_text(None, str(exc), config), protocol="smtp")
    if isinstance(exc, (smtplib.SMTPSenderRefused, smtplib.SMTPDataError)):
        return errors.SmtpRefused(detail=_server_text(exc.smtp_code, exc.smtp_error, config), protocol="smtp")
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        refused = ", ".join(f"{addr}: {code}" for addr, (code, _msg) in exc.recipients.items())
        return errors.SmtpRefused(
            "The outgoing (SMTP) server refused the recipients.", detail=refused[:500], protocol="smtp"
        )
    if isinstance(exc, smtplib.SMTPConnectError):
        # Not (yet) a mail server: its greeting is classified, never echoed (see imap.describe_banner).
        kind = describe_banner(_server_text(exc.smtp_code if exc.smtp_code > 0 else None, exc.smtp_error, config))
        return errors.ServerError(
            f"The server on this port did not greet as an SMTP server (it answers like {kind}).",
            fix="Check the SMTP server name and port (465 for SSL/TLS, 587 for STARTTLS).",
            detail=f"greeting of {kind}",
            protocol="smtp",
        )
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        if "timed out" in str(exc):  # smtplib turns a read timeout into a disconnect
            return errors.ConnectionTimeout(detail=f"{config.host}:{config.port}", protocol="smtp")
        return errors.ConnectionLost(
            "The outgoing (SMTP) server closed the connection.",
            fix="Check the port and the security setting (465 is SSL/TLS, 587 is STARTTLS).",
            detail=_server_text(None, str(exc), config),
            protocol="smtp",
        )
    if isinstance(exc, smtplib.SMTPResponseException):
        return errors.ServerError(detail=_server_text(exc.smtp_code, exc.smtp_error, config), protocol="smtp")
    if isinstance(exc, smtplib.SMTPException):
        text = _server_text(None, str(exc), config)
        if "authentication method" in text.lower():
            return errors.SmtpAuthUnavailable(detail=text, protocol="smtp")
        return errors.ServerError(detail=text, protocol="smtp")
    if isinstance(exc, (OSError, EOFError)):
        mapped = classify_network_error(exc, protocol="smtp", host=config.host, port=config.port)
        if mapped is not None:
            return mapped
    return errors.ServerError(detail=type(exc).__name__, protocol="smtp")


class _PinnedSMTP(smtplib.SMTP):
    """smtplib.SMTP connecting to already-checked addresses (hosts.py); STARTTLS still checks the name."""

    def __init__(self, addresses: tuple[str, ...], *args, **kwargs):
        self._addresses = addresses
        super().__init__(*args, **kwargs)

    def _get_socket(self, host, port, timeout):
        return hosts.open_connection(self._addresses, port, timeout)


class _PinnedSMTP_SSL(smtplib.SMTP_SSL):
    def __init__(self, addresses: tuple[str, ...], *args, **kwargs):
        self._addresses = addresses
        super().__init__(*args, **kwargs)

    def _get_socket(self, host, port, timeout) -> socket.socket:
        sock = hosts.open_connection(self._addresses, port, timeout)
        return self.context.wrap_socket(sock, server_hostname=self._host)


def connect(config: SmtpConfig) -> smtplib.SMTP:
    """A secured, logged-in SMTP connection. Raises classified errors only."""
    context = tls_context(config.trusted_ca_pem) if config.security != SECURITY_NONE else None
    client: smtplib.SMTP | None = None
    try:
        if config.resolve_host is not None:
            addresses = config.resolve_host(config.host, config.port)
            if config.security == SECURITY_SSL:
                client = _PinnedSMTP_SSL(addresses, config.host, config.port, timeout=config.timeout, context=context)
            else:
                client = _PinnedSMTP(addresses, config.host, config.port, timeout=config.timeout)
        elif config.security == SECURITY_SSL:
            client = smtplib.SMTP_SSL(config.host, config.port, timeout=config.timeout, context=context)
        else:
            client = smtplib.SMTP(config.host, config.port, timeout=config.timeout)
        client.ehlo()
        if config.security == SECURITY_STARTTLS:
            if not client.has_extn("starttls"):
                raise errors.StartTlsUnavailable(detail=f"{config.host}:{config.port}", protocol="smtp")
            client.starttls(context=context)
            client.ehlo()
        if not client.has_extn("auth"):
            raise errors.SmtpAuthUnavailable(detail=f"{config.host}:{config.port}", protocol="smtp")
        if config.auth_kind == AUTH_OAUTH2:
            sasl = oauth.xoauth2_string(config.username, config.secret)
            # First call: the initial response; a second call answers the server's error challenge.
            client.auth("XOAUTH2", lambda challenge=None: "" if challenge else sasl, initial_response_ok=True)
        else:
            client.login(config.username, config.secret)
        return client
    except BaseException as exc:
        if client is not None:
            with contextlib.suppress(Exception):  # closing a broken connection; the original error matters
                client.close()
        if isinstance(exc, Exception):
            raise _classify(exc, config) from None
        raise


def size_limit(client: smtplib.SMTP) -> int:
    """The server's SIZE limit in bytes (RFC 1870), 0 when it states none."""
    value = client.esmtp_features.get("size", "") if client.has_extn("size") else ""
    return int(value) if value.strip().isdigit() else 0


def send_message(
    client: smtplib.SMTP, config: SmtpConfig, *, sender: str, recipients: list[str], data: bytes
) -> dict[str, tuple[int, str]]:
    """Send `data` (CRLF MIME bytes) on a logged-in connection. Returns the recipients the server refused
    while it took the others (address -> (code, text)); raises classified errors:
    MessageTooLarge (the server's SIZE), RecipientsRefused (all refused: nothing sent), SmtpRefused /
    ServerError (refused before or at the end of DATA: not sent), DeliveryUncertain (the connection broke
    after the message was handed over: it may have been delivered)."""
    limit = size_limit(client)
    if limit and len(data) > limit:
        raise errors.MessageTooLarge(
            f"The message is {len(data) / 1_048_576:.1f} MB; the outgoing server accepts up to "
            f"{limit / 1_048_576:.1f} MB.",
            detail=f"{len(data)} > SIZE {limit}",
            protocol="smtp",
        )
    options = [f"SIZE={len(data)}"] if limit or client.has_extn("size") else []
    try:
        code, text = client.mail(sender, options)
        if code != 250:
            raise smtplib.SMTPSenderRefused(code, text, sender)
        refused: dict[str, tuple[int, str]] = {}
        for recipient in recipients:
            code, text = client.rcpt(recipient)
            if code not in (250, 251):
                refused[recipient] = (code, _server_text(None, text, config)[:300])
        if len(refused) == len(recipients):
            with contextlib.suppress(smtplib.SMTPException, OSError):
                client.rset()
            detail = "; ".join(f"{address}: {code} {text}" for address, (code, text) in refused.items())
            raise errors.RecipientsRefused(detail=detail[:500], refused=refused, protocol="smtp")
    except errors.MailError:
        raise
    except Exception as exc:
        raise _classify(exc, config) from None
    try:
        client.data(data)
    except smtplib.SMTPDataError as exc:
        if exc.smtp_code == 552:  # "exceeded storage allocation": the message is too big
            detail = _server_text(exc.smtp_code, exc.smtp_error, config)
            raise errors.MessageTooLarge(detail=detail, protocol="smtp") from None
        raise _classify(exc, config) from None
    except (smtplib.SMTPServerDisconnected, OSError, EOFError) as exc:
        raise errors.DeliveryUncertain(detail=_server_text(None, str(exc) or type(exc).__name__, config)) from None
    return refused


def verify_login(config: SmtpConfig) -> None:
    """Connect, secure and log in, then quit. Raises classified errors."""
    client = connect(config)
    try:
        client.quit()
    except (smtplib.SMTPException, OSError):
        client.close()
