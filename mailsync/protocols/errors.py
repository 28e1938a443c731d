"""Classified mail connection errors, shared by IMAP (imap.py), SMTP (smtp.py) and OAuth (oauth.py).

Every error has a stable `code` (stored on the account as `last_error_code`), a user-facing `message`
and a `fix` (what the user or the admin should do). `detail` keeps the server's own words (for support
staff), with any secret scrubbed. No message ever contains a password or token: callers pass secrets
only to `scrub()`.

`needs_reauth` errors move an account to "needs re-authentication" (A6); `transient` errors are worth
retrying later without bothering the user (network, timeouts).
"""

from __future__ import annotations

from typing import ClassVar


class MailError(Exception):
    code: ClassVar[str] = "mail_error"
    default_message: ClassVar[str] = "The mail server could not be reached or refused the connection."
    default_fix: ClassVar[str] = "Check the server settings and try again."
    needs_reauth: ClassVar[bool] = False
    transient: ClassVar[bool] = False

    def __init__(self, message: str = "", *, fix: str = "", detail: str = "", protocol: str = ""):
        self.message = message or self.default_message
        self.fix = fix or self.default_fix
        self.detail = detail[:500]
        self.protocol = protocol  # "imap", "smtp" or "oauth"
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" + (f" ({self.detail})" if self.detail else "")

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "fix": self.fix, "detail": self.detail}


# -- authentication


class AuthFailed(MailError):
    code = "auth_failed"
    default_message = "The mail server did not accept the username or password."
    default_fix = (
        "Check the address and password (type the password again; it is case-sensitive). "
        "If your provider uses two-step verification, create an app password and use it instead."
    )
    needs_reauth = True


class AppPasswordRequired(AuthFailed):
    code = "app_password_required"
    default_message = "Your provider does not accept your normal password here: an app password is required."
    default_fix = (
        "Two-step verification is on for this mailbox. Create an app password in your provider's "
        "security settings and enter it instead of your normal password."
    )


class OAuthFailed(AuthFailed):
    code = "oauth_failed"
    default_message = "The sign-in with your provider has expired or was revoked."
    default_fix = "Click Re-authenticate and sign in with your provider again."


class ServerSettingsChanged(AuthFailed):
    """Support staff changed where this account connects: its password or token was dropped, so that only
    the owner, by entering it again, sends it to the new servers."""

    code = "settings_changed"
    default_message = "Your administrator changed the server settings of this account."
    default_fix = "Check the servers shown on the re-authentication page, then enter your password to connect to them."


class OAuthNotConfigured(MailError):
    code = "oauth_not_configured"
    default_message = "Sign-in with this provider is not configured on this CRM."
    default_fix = "Ask your administrator to configure it, or connect with an app password if your provider allows it."


# -- TLS


class TlsError(MailError):
    code = "tls_error"
    default_message = "A secure (TLS) connection to the mail server could not be established."
    default_fix = "Check the port and the security setting (SSL/TLS or STARTTLS) for this server."


class TlsCertificateError(TlsError):
    """The server's certificate was refused. `kind`: self_signed, expired, hostname_mismatch, untrusted."""

    KINDS: ClassVar[dict[str, tuple[str, str]]] = {
        "self_signed": (
            "The mail server presented a self-signed certificate, so its identity cannot be verified.",
            "Ask the server's administrator to install a certificate from a public authority. "
            "For a self-hosted server, a CRM administrator can trust its certificate authority explicitly.",
        ),
        "expired": (
            "The mail server's certificate has expired (or is not valid yet).",
            "The server's administrator must renew the certificate. Also check this computer's clock.",
        ),
        "hostname_mismatch": (
            "The mail server's certificate is for a different name than the server you entered.",
            "Use the exact server name from your provider's instructions (e.g. imap.example.com, "
            "not an IP address or an alias).",
        ),
        "untrusted": (
            "The mail server's certificate is not issued by an authority this CRM trusts.",
            "Use the server name from your provider's instructions. For a self-hosted server with its own "
            "certificate authority, a CRM administrator can trust that authority explicitly.",
        ),
    }

    def __init__(self, kind: str, *, detail: str = "", protocol: str = ""):
        self.kind = kind if kind in self.KINDS else "untrusted"
        message, fix = self.KINDS[self.kind]
        super().__init__(message, fix=fix, detail=detail, protocol=protocol)

    @property
    def code(self) -> str:  # type: ignore[override]
        return f"tls_{self.kind}"


class StartTlsUnavailable(TlsError):
    code = "starttls_unavailable"
    default_message = "The server does not offer STARTTLS on this port, so the connection would not be encrypted."
    default_fix = "Use SSL/TLS (usually port 993 for IMAP, 465 for SMTP) or ask the server's administrator."


# -- network


class Unreachable(MailError):
    code = "unreachable"
    default_message = "The mail server could not be reached."
    default_fix = "Check the server name and port. If they are right, the server may be down: try again later."
    transient = True


class ConnectionTimeout(MailError):
    code = "timeout"
    default_message = "The mail server did not answer in time."
    default_fix = (
        "Check the port and the security setting (a wrong port often just stays silent). "
        "If they are right, the server or the network is slow: try again later."
    )
    transient = True


class ConnectionLost(MailError):
    code = "connection_lost"
    default_message = "The connection to the mail server was lost."
    default_fix = "This is usually temporary; the sync retries by itself."
    transient = True


class TooManyConnections(MailError):
    """The server refuses another connection for this mailbox (Gmail: "Too many simultaneous
    connections", Dovecot: "Maximum number of connections"), or the CRM's own cap for the provider
    (mailsync.connection.limits) is reached. Retried later, for this account only."""

    code = "too_many_connections"
    default_message = "The mail server allows no more simultaneous connections to this mailbox right now."
    default_fix = (
        "Other mail apps on phones and computers count too: close some, or wait; the CRM tries again by itself."
    )
    transient = True


class PrivateHostRefused(MailError):
    code = "private_host"
    default_message = "This server name leads to a private, local or reserved network address."
    default_fix = (
        "Enter the public name of your mail server. For a mail server on the company network, an administrator "
        "can allow private addresses (MAILSYNC_ALLOW_PRIVATE_HOSTS=1)."
    )


class TooManyConnectionTests(MailError):
    code = "rate_limited"
    default_message = "Too many connection tests in a short time."
    default_fix = "Wait a few minutes, check the settings, then try again."
    transient = True


# -- protocol / server


class ImapDisabled(MailError):
    code = "imap_disabled"
    default_message = "IMAP access is turned off for this mailbox."
    default_fix = "Turn on IMAP access in your mailbox settings (for Gmail: Settings > Forwarding and POP/IMAP)."


class Pop3Only(ImapDisabled):
    code = "pop3_only"
    default_message = "This server speaks POP3, not IMAP. POP3 is not supported: it cannot sync folders or flags."
    default_fix = "Use your provider's IMAP server and port (usually 993), or ask your provider to enable IMAP."


class NotImap(MailError):
    code = "not_imap"
    default_message = "The server on this port is not an IMAP server."
    default_fix = "Check the port: IMAP uses 993 (SSL/TLS) or 143 (STARTTLS)."


class ServerError(MailError):
    code = "server_error"
    default_message = "The mail server refused a command."
    default_fix = "Try again later. If it keeps happening, contact support with the details below."


class FolderNotFound(ServerError):
    code = "folder_not_found"
    default_message = "The folder does not exist on the mail server (it may have been renamed or deleted)."
    default_fix = "The folder list is refreshed at the next sync."


class UidValidityChanged(MailError):
    """The server renumbered a folder (RFC 3501 2.3.1.1): every cached UID of it is void."""

    code = "uidvalidity_changed"
    default_message = "The mail server renumbered a folder; it is matched again without duplicating mail."
    default_fix = "Nothing to do."
    transient = True

    def __init__(self, folder: str, old: int | None, new: int | None):
        self.folder = folder
        self.old = old
        self.new = new
        super().__init__(detail=f"{folder}: UIDVALIDITY {old} -> {new}", protocol="imap")


# -- SMTP


class SmtpAuthRefused(AuthFailed):
    code = "smtp_auth_refused"
    default_message = "The outgoing (SMTP) server refused the login."
    default_fix = (
        "Check the password. Some providers need SMTP sign-in switched on for the mailbox "
        "(Microsoft 365: 'Authenticated SMTP'), or an app password when two-step verification is on."
    )


class SmtpAuthUnavailable(MailError):
    code = "smtp_auth_unavailable"
    default_message = "The outgoing (SMTP) server does not offer a login on this port."
    default_fix = "Use the submission port your provider gives (usually 465 with SSL/TLS or 587 with STARTTLS)."


class SmtpRefused(MailError):
    code = "smtp_refused"
    default_message = "The outgoing (SMTP) server refused the message."
    default_fix = "Check the recipients and the sender address. Details from the server are below."


class RecipientsRefused(SmtpRefused):
    """Every recipient was refused at RCPT: nothing was sent. `refused`: address -> (code, server text)."""

    code = "recipients_refused"
    default_message = "The outgoing (SMTP) server refused every recipient; nothing was sent."
    default_fix = "Check the addresses (a typo, or a mailbox that no longer exists), then send again."

    def __init__(self, *args, refused: dict[str, tuple[int, str]] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.refused = refused or {}


class MessageTooLarge(MailError):
    code = "message_too_large"
    default_message = "The message is larger than the outgoing server accepts."
    default_fix = "Remove or shrink attachments (or share a link to the file instead), then send again."


class TooManyRecipients(MailError):
    code = "too_many_recipients"
    default_message = "The message has more recipients than your provider allows in one message."
    default_fix = "Split the recipients over several messages."


class DeliveryUncertain(MailError):
    """The connection broke after the message was handed over and before the server confirmed it: it may
    have been delivered. Never re-sent by itself (it would arrive twice)."""

    code = "delivery_uncertain"
    default_message = (
        "The connection broke while the server was taking the message: it may or may not have been delivered."
    )
    default_fix = (
        "Look in your mail program's Sent folder or ask a recipient. If it did not arrive, click Retry: "
        "the same message (same Message-ID) is sent again."
    )


ERROR_CLASSES: tuple[type[MailError], ...] = (
    MailError,
    AuthFailed,
    AppPasswordRequired,
    OAuthFailed,
    ServerSettingsChanged,
    OAuthNotConfigured,
    TlsError,
    StartTlsUnavailable,
    Unreachable,
    ConnectionTimeout,
    ConnectionLost,
    PrivateHostRefused,
    TooManyConnectionTests,
    ImapDisabled,
    Pop3Only,
    NotImap,
    ServerError,
    FolderNotFound,
    UidValidityChanged,
    SmtpAuthRefused,
    SmtpAuthUnavailable,
    SmtpRefused,
    RecipientsRefused,
    MessageTooLarge,
    TooManyRecipients,
    DeliveryUncertain,
)


def explain(code: str) -> tuple[str, str]:
    """(message, fix) for a stored `last_error_code`, so a page can show the fix without the exception."""
    if code.startswith("tls_") and code[4:] in TlsCertificateError.KINDS:
        return TlsCertificateError.KINDS[code[4:]]
    for cls in ERROR_CLASSES:
        if cls.code == code:
            return cls.default_message, cls.default_fix
    return MailError.default_message, MailError.default_fix


def scrub(text: str, *secrets: str) -> str:
    """Remove secrets from a server's text before it is stored or shown."""
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, "***")
    return text
