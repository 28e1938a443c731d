"""The only module that talks IMAP (through imapclient). No ORM, no Django: plain data in, plain data out.

    config = ImapConfig(host="imap.example.com", port=993, security="ssl", username="me@example.com",
                        secret="app-password")
    with connect(config) as session:            # TLS + login, or a classified MailError (errors.py)
        for folder in session.list_folders():   # Folder(name, delimiter, role, flags, noselect)
            ...
        selected = session.select("INBOX", readonly=True, expected_uidvalidity=stored_uidvalidity)
        for message in session.fetch_messages(session.search_uids_since(date)):
            ...                                 # FetchedMessage(uid, flags, internaldate, size, raw)

Rules encoded here (DESIGN.md, notes/imap-sync.md):
- TLS is verified against the system CAs with a hostname check; `trusted_ca_pem` adds only that CA.
- Every failure is raised as a classified error from `mailsync.errors` (never an imaplib exception),
  and no message carries the password or token.
- CONDSTORE / QRESYNC are ENABLEd right after login, before any SELECT (ENABLE is illegal later).
- UID sets are sent as lists of ints, at most MAX_UIDS_PER_COMMAND per command (imapclient rejects
  '1:*' strings in fetch(); the one '1:*' query, CHANGEDSINCE, is sent by hand).
- Bodies are fetched with BODY.PEEK[] so reading never sets \\Seen on the server.
- FETCH responses are read straight from the connection (`_stream_fetch`: one read per literal, one
  regular expression for the text around it; twice as fast as imapclient's parser); a response of any
  other form sends that command, and the rest of the session, through imapclient.
- The STATUS of several folders is asked in one write and the answers read after (`folder_statuses`,
  pipelining as RFC 3501 5.5 allows): a pass over 40 folders waits for one round trip, not 40.
  STATUS and LIST lines of the usual form are read by a regular expression each (`_fast_status`,
  `_fast_list_item`), anything else by imapclient's parser; tests compare the two on random lines.
"""

from __future__ import annotations

import ast
import contextlib
import datetime as dt
import functools
import imaplib
import logging
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from imapclient import IMAPClient, imap_utf7
from imapclient import exceptions as imap_exc
from imapclient import imap4 as imapclient_imap4
from imapclient import tls as imapclient_tls
from imapclient.datetime_util import parse_to_datetime
from imapclient.response_parser import parse_fetch_response, parse_response

from . import errors, hosts

logger = logging.getLogger(__name__)

MAX_UIDS_PER_COMMAND = 5000
DEFAULT_FETCH_BATCH = 200
# Read FETCH responses with _stream_fetch (False: imapclient's parser only; tests compare both).
STREAM_FETCH = True
# STATUS commands sent together by folder_statuses (answers are a line each: no buffer fills up).
STATUS_PIPELINE = 64
IDLE_MAX_SECONDS = 29 * 60  # servers may drop an IDLE after 30 minutes (RFC 2177)

SECURITY_SSL = "ssl"
SECURITY_STARTTLS = "starttls"
SECURITY_NONE = "none"
AUTH_OAUTH2 = "oauth2"


@dataclass(frozen=True)
class ImapConfig:
    host: str
    port: int
    security: str = SECURITY_SSL  # "ssl" (implicit TLS), "starttls" or "none"
    username: str = ""
    secret: str = field(default="", repr=False)  # password / app password, or the OAuth2 access token
    auth_kind: str = "password"  # "password", "app_password" or "oauth2" (XOAUTH2)
    trusted_ca_pem: str = field(default="", repr=False)  # extra CA an admin trusts (A4)
    timeout: float = 15.0
    enable_qresync: bool = True
    # Resolves and checks the host (hosts.checked_resolver); the connection then goes to those addresses
    # only. None: plain resolution by the socket library (tests and tools that build a config by hand).
    resolve_host: hosts.Resolver | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Folder:
    name: str  # decoded from modified UTF-7
    delimiter: str
    role: str  # "inbox", "sent", "archive", "trash", "junk", "drafts", "all" or "" (MailFolder.Role values)
    flags: tuple[str, ...]
    noselect: bool


@dataclass(frozen=True)
class FolderStatus:
    name: str
    messages: int
    uidnext: int | None
    uidvalidity: int | None
    highestmodseq: int | None  # None when the server has no CONDSTORE


@dataclass(frozen=True)
class SelectedFolder:
    name: str
    uidvalidity: int | None
    uidnext: int | None
    exists: int
    highestmodseq: int | None
    readonly: bool


@dataclass(frozen=True)
class FetchedMessage:
    uid: int
    flags: tuple[str, ...]
    internaldate: dt.datetime | None  # timezone-aware
    size: int
    raw: bytes  # the whole message (fetch_messages) or only its header (fetch_headers)


@dataclass(frozen=True)
class FlagChanges:
    changed: dict[int, tuple[str, ...]]  # uid -> all current flags, for messages changed since the modseq
    vanished: list[int]  # UIDs expunged since the modseq (QRESYNC only; empty otherwise)
    highestmodseq: int | None  # highest MODSEQ among the changed messages (None if nothing changed)


# --------------------------------------------------------------------------------------------------
# Error classification

_APP_PASSWORD_HINTS = re.compile(
    r"application.specific.password|\bapp.?password|web.?login.required|log.?in via (your )?web.?browser"
    r"|WEBALERT|log.?in with your web.?browser",
    re.IGNORECASE,
)
_IMAP_DISABLED_HINTS = re.compile(
    r"not enabled for IMAP|IMAP (access )?(is )?disabled|IMAP.{0,20}not (enabled|allowed|permitted)"
    r"|enable (your account for )?IMAP",
    re.IGNORECASE,
)
_OAUTH_HINTS = re.compile(r"invalid.?token|token.{0,20}(expired|revoked|invalid)|status\":\"40[01]", re.IGNORECASE)
_TOO_MANY_CONNECTIONS_HINTS = re.compile(
    r"too many (simultaneous )?(connections|sessions|logins)|maximum number of (connections|sessions)"
    r"|connection limit|too many concurrent",
    re.IGNORECASE,
)
_NONEXISTENT_HINTS = re.compile(r"NONEXISTENT|doesn't exist|does not exist|no such (mailbox|folder)", re.IGNORECASE)

_TLS_VERIFY_KINDS = {
    9: "expired",  # X509_V_ERR_CERT_NOT_YET_VALID
    10: "expired",  # X509_V_ERR_CERT_HAS_EXPIRED
    18: "self_signed",  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
    19: "self_signed",  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
    2: "untrusted",  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
    20: "untrusted",  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: "untrusted",  # X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
    62: "hostname_mismatch",  # X509_V_ERR_HOSTNAME_MISMATCH
    64: "hostname_mismatch",  # X509_V_ERR_IP_ADDRESS_MISMATCH
}


def classify_network_error(exc: BaseException, *, protocol: str, host: str, port: int) -> errors.MailError | None:
    """Map socket / TLS exceptions to classified errors (shared with smtp.py). None if not a network error."""
    where = f"{host}:{port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        kind = _TLS_VERIFY_KINDS.get(exc.verify_code, "untrusted")
        return errors.TlsCertificateError(kind, detail=f"{where}: {exc.verify_message}", protocol=protocol)
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if reason in {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "UNKNOWN_PROTOCOL", "HTTP_REQUEST"}:
            return errors.TlsError(
                "The server on this port does not speak TLS.",
                fix="Check the port and the security setting: 993 is SSL/TLS for IMAP; 143 uses STARTTLS.",
                detail=f"{where}: {reason}",
                protocol=protocol,
            )
        return errors.TlsError(detail=f"{where}: {reason}", protocol=protocol)
    if isinstance(exc, socket.gaierror):
        return errors.Unreachable(
            f"The server name {host} could not be found.",
            fix="Check the spelling of the server name, and that this computer can reach the internet.",
            detail=f"{where}: {exc.strerror or exc}",
            protocol=protocol,
        )
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return errors.ConnectionTimeout(detail=where, protocol=protocol)
    if isinstance(exc, ConnectionRefusedError):
        return errors.Unreachable(
            f"Nothing answers on port {port} of {host}: wrong port, or the server is down.",
            fix="Check the port (IMAP: 993 for SSL/TLS, 143 for STARTTLS; SMTP: 465 or 587). "
            "If it is right, the server may be down: try again later.",
            detail=f"{where}: connection refused",
            protocol=protocol,
        )
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, EOFError)):
        return errors.ConnectionLost(detail=f"{where}: {type(exc).__name__}", protocol=protocol)
    if isinstance(exc, OSError):
        return errors.Unreachable(detail=f"{where}: {exc.strerror or type(exc).__name__}", protocol=protocol)
    return None


def _raise_if_too_many_connections(text: str) -> None:
    """Gmail answers a login with "[ALERT] Too many simultaneous connections"; Dovecot says BYE "Maximum
    number of connections from user+IP exceeded" right after it: not a wrong password, a retry later."""
    if _TOO_MANY_CONNECTIONS_HINTS.search(text):
        raise errors.TooManyConnections(detail=" ".join(text.split())[:300], protocol="imap") from None


def _classify_login_failure(text: str, config: ImapConfig) -> errors.MailError:
    if _TOO_MANY_CONNECTIONS_HINTS.search(text):
        return errors.TooManyConnections(detail=" ".join(text.split())[:300], protocol="imap")
    if _IMAP_DISABLED_HINTS.search(text):
        return errors.ImapDisabled(detail=text, protocol="imap")
    if _APP_PASSWORD_HINTS.search(text):
        return errors.AppPasswordRequired(detail=text, protocol="imap")
    if config.auth_kind == AUTH_OAUTH2:
        return errors.OAuthFailed(detail=text, protocol="imap")
    if "PRIVACYREQUIRED" in text.upper() or "LOGINDISABLED" in text.upper():
        return errors.TlsError(
            "The server only accepts a login over an encrypted connection.",
            fix="Choose SSL/TLS (port 993) or STARTTLS (port 143).",
            detail=text,
            protocol="imap",
        )
    return errors.AuthFailed(detail=text, protocol="imap")


_BANNER_KINDS = (
    (re.compile(r"^SSH-|OpenSSH|dropbear", re.IGNORECASE), "an SSH server"),
    (re.compile(r"^HTTP/|<html|<!doctype", re.IGNORECASE), "a web server"),
    (re.compile(r"^\+OK|POP3", re.IGNORECASE), "a POP3 server"),
    (re.compile(r"^220[ -].*FTP", re.IGNORECASE), "an FTP server"),
    (re.compile(r"^220[ -]|E?SMTP", re.IGNORECASE), "an SMTP server"),
    (re.compile(r"^\* (OK|PREAUTH|BYE)", re.IGNORECASE), "an IMAP server"),
)
_UNEXPECTED_RESPONSE = re.compile(r"^unexpected response: b?(['\"])(.*)\1$", re.DOTALL)


def describe_banner(text: str) -> str:
    """What kind of service greeted, in our words: the greeting of a server that has not shown it is a mail
    server is never echoed (the add-account form must not become a way to read internal services' banners)."""
    greeting = text.strip()
    wrapped = _UNEXPECTED_RESPONSE.match(greeting)  # imaplib's words around the greeting
    if wrapped:
        greeting = wrapped.group(2).strip()
    for pattern, kind in _BANNER_KINDS:
        if pattern.search(greeting):
            return kind
    return "an unknown service"


def _classify_greeting_failure(text: str) -> errors.MailError:
    stripped = text.strip().strip("b'\"")
    # imaplib reports a "+..." greeting (POP3 says "+OK ...") as the continuation marker None.
    if stripped in {"None", ""} or stripped.startswith("+OK") or "POP3" in stripped.upper():
        return errors.Pop3Only(detail="greeting of a POP3 server", protocol="imap")
    if _IMAP_DISABLED_HINTS.search(stripped):
        return errors.ImapDisabled(detail="the server's greeting says IMAP is disabled", protocol="imap")
    if "EOF" in stripped:
        return errors.ConnectionLost(
            "The server closed the connection before greeting.",
            fix="Check the port and the security setting; the server may also limit connections.",
            detail="closed before the greeting",
            protocol="imap",
        )
    kind = describe_banner(stripped)
    return errors.NotImap(
        f"The server on this port is not an IMAP server (it answers like {kind}).",
        detail=f"greeting of {kind}",
        protocol="imap",
    )


def _server_text(exc: BaseException, config: ImapConfig) -> str:
    """The server's words from an imapclient error: bytes-repr undone, whitespace collapsed, secret scrubbed."""
    text = str(exc)
    if text.startswith(("b'", 'b"')) and text.endswith(("'", '"')):
        with contextlib.suppress(ValueError, SyntaxError):
            text = ast.literal_eval(text).decode("utf-8", "replace")
    return errors.scrub(" ".join(text.split()), config.secret)


@contextlib.contextmanager
def _classified(config: ImapConfig, *, stage: str = "command") -> Iterator[None]:
    """Turn any exception raised inside into a classified MailError (secrets scrubbed)."""
    try:
        yield
    except errors.MailError:
        raise
    except imap_exc.LoginError as exc:
        raise _classify_login_failure(_server_text(exc, config), config) from None
    except imaplib.IMAP4.abort as exc:
        text = _server_text(exc, config)
        _raise_if_too_many_connections(text)
        if stage == "greeting":
            raise _classify_greeting_failure(text) from None
        raise errors.ConnectionLost(detail=text[:300], protocol="imap") from None
    except imap_exc.IMAPClientError as exc:
        text = _server_text(exc, config)
        _raise_if_too_many_connections(text)
        if stage == "greeting":
            raise _classify_greeting_failure(text) from None
        if stage == "login":
            raise _classify_login_failure(text, config) from None
        if _NONEXISTENT_HINTS.search(text):
            raise errors.FolderNotFound(detail=text[:300], protocol="imap") from None
        raise errors.ServerError(detail=text[:300], protocol="imap") from None
    except (OSError, EOFError) as exc:
        mapped = classify_network_error(exc, protocol="imap", host=config.host, port=config.port)
        raise mapped from None  # type: ignore[misc]
    except (ValueError, TypeError, IndexError, KeyError, AssertionError) as exc:
        # imapclient/imaplib choking on a malformed server response: a server problem for the user,
        # logged (scrubbed, without traceback locals) for support.
        text = _server_text(exc, config)
        logger.warning("unexpected IMAP response from %s: %s: %s", config.host, type(exc).__name__, text[:300])
        raise errors.ServerError(detail=f"{type(exc).__name__}: {text[:200]}", protocol="imap") from None


@functools.lru_cache(maxsize=64)
def tls_context(trusted_ca_pem: str = "") -> ssl.SSLContext:
    """System CAs + hostname check; `trusted_ca_pem` adds that CA (and only that) for self-hosted servers.

    Cached: loading the system CA store costs ~40 ms, more than the rest of a no-change sync. A
    context is not changed after it is built, and is safe to share between connections and threads."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if trusted_ca_pem.strip():
        try:
            context.load_verify_locations(cadata=trusted_ca_pem)
        except (ssl.SSLError, ValueError):
            raise errors.TlsError(
                "The trusted certificate authority configured for this account is not a valid PEM certificate.",
                fix="An administrator must paste the CA certificate in PEM format (-----BEGIN CERTIFICATE-----).",
            ) from None
    return context


# --------------------------------------------------------------------------------------------------
# Connecting


def connect(config: ImapConfig) -> ImapSession:
    """Open a connection, secure it, log in and enable CONDSTORE/QRESYNC. Use as a context manager.

    Raises a classified `errors.MailError` for every failure.
    """
    context = tls_context(config.trusted_ca_pem) if config.security != SECURITY_NONE else None
    client: IMAPClient | None = None
    try:
        with _classified(config, stage="greeting"):
            options = {"port": config.port, "ssl": config.security == SECURITY_SSL, "ssl_context": context}
            if config.resolve_host is not None:
                addresses = config.resolve_host(config.host, config.port)
                client = _PinnedIMAPClient(config.host, addresses=addresses, timeout=config.timeout, **options)
            else:
                client = IMAPClient(config.host, timeout=config.timeout, **options)
        client.normalise_times = False  # keep INTERNALDATE timezone-aware
        with _classified(config, stage="command"):
            if config.security == SECURITY_STARTTLS:
                if not client.has_capability("STARTTLS"):
                    raise errors.StartTlsUnavailable(detail=f"{config.host}:{config.port}", protocol="imap")
                client.starttls(context)
        with _classified(config, stage="login"):
            if config.auth_kind == AUTH_OAUTH2:
                client.oauth2_login(config.username, config.secret)
            else:
                client.login(config.username, config.secret)
        session = ImapSession(client, config)
        with _classified(config):
            session._after_login()
        return session
    except BaseException:
        if client is not None:
            with contextlib.suppress(Exception):
                client.shutdown()
        raise


class _PinnedIMAP4(imapclient_imap4.IMAP4WithTimeout):
    def __init__(self, addresses: tuple[str, ...], host: str, port: int, timeout: float | None):
        self._addresses = addresses
        super().__init__(host, port, timeout)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        return hosts.open_connection(self._addresses, self.port, timeout if timeout is not None else self._timeout)


class _PinnedIMAP4_TLS(imapclient_tls.IMAP4_TLS):
    def __init__(self, addresses: tuple[str, ...], host: str, port: int, context, timeout: float | None):
        self._addresses = addresses
        super().__init__(host, port, context, timeout)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        sock = hosts.open_connection(self._addresses, self.port, timeout if timeout is not None else self._timeout)
        # The certificate is checked against the server's NAME (self.host), not the address connected to.
        return imapclient_tls.wrap_socket(sock, self.ssl_context, self.host)


class _PinnedIMAPClient(IMAPClient):
    """IMAPClient connecting to already-checked addresses (hosts.py) instead of resolving the name again.
    STARTTLS and the TLS hostname check still use the name."""

    def __init__(self, host: str, *, addresses: tuple[str, ...], **kwargs):
        self._addresses = addresses
        super().__init__(host, **kwargs)

    def _create_IMAP4(self):
        connect_timeout = getattr(self._timeout, "connect", None)
        if self.ssl:
            return _PinnedIMAP4_TLS(self._addresses, self.host, self.port, self.ssl_context, connect_timeout)
        return _PinnedIMAP4(self._addresses, self.host, self.port, connect_timeout)


class ImapSession:
    """A logged-in IMAP connection. Every method raises classified errors only."""

    def __init__(self, client: IMAPClient, config: ImapConfig):
        self._client = client
        self._config = config
        self.capabilities: frozenset[str] = frozenset()
        self.condstore_enabled = False
        self.qresync_enabled = False
        self.selected: SelectedFolder | None = None
        self._empty_reads = 0
        # FETCH responses are read by _stream_fetch (several times faster than imapclient's parser) until
        # one of them is unusual; False: imapclient only.
        self.fast_fetch = STREAM_FETCH

    def __enter__(self) -> ImapSession:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _after_login(self) -> None:
        # Dovecot (and others) advertise CONDSTORE, QRESYNC, MOVE ... only after login.
        self._client._cached_capabilities = None
        self.capabilities = frozenset(c.decode().upper() for c in self._client.capabilities())
        wanted = []
        if self._config.enable_qresync and "QRESYNC" in self.capabilities:
            wanted.append("QRESYNC")  # implies CONDSTORE
        elif "CONDSTORE" in self.capabilities:
            wanted.append("CONDSTORE")
        if wanted and "ENABLE" in self.capabilities:
            enabled = {c.decode().upper() for c in self._client.enable(*wanted)}
            self.qresync_enabled = "QRESYNC" in enabled
            self.condstore_enabled = self.qresync_enabled or "CONDSTORE" in enabled
        elif "CONDSTORE" in self.capabilities:
            # CONDSTORE works without ENABLE once a MODSEQ-aware command is used (RFC 7162 3.1).
            self.condstore_enabled = True

    def has_capability(self, name: str) -> bool:
        return name.upper() in self.capabilities

    def close(self) -> None:
        """Log out; never raises (the connection may already be gone)."""
        try:
            self._client.logout()
        except Exception:
            with contextlib.suppress(Exception):
                self._client.shutdown()

    def abort(self) -> None:
        """Close the connection at once, without LOGOUT (never blocks, never raises)."""
        with contextlib.suppress(Exception):
            self._client.shutdown()

    def noop(self) -> None:
        with _classified(self._config):
            self._client.noop()

    # -- folders
    def list_folders(self) -> list[Folder]:
        with _classified(self._config):
            listing = _list_all(self._client)
        folders = []
        for raw_flags, raw_delimiter, name in listing:
            flags = tuple(_text(f) for f in raw_flags)
            delimiter = _text(raw_delimiter) if raw_delimiter else ""
            noselect = any(f.lower() in {"\\noselect", "\\nonexistent"} for f in flags)
            folders.append(Folder(name=str(name), delimiter=delimiter, role="", flags=flags, noselect=noselect))
        return assign_roles(folders)

    def _status_items(self) -> list[str]:
        items = ["MESSAGES", "UIDNEXT", "UIDVALIDITY"]
        if "CONDSTORE" in self.capabilities:
            items.append("HIGHESTMODSEQ")
        return items

    def folder_status(self, name: str) -> FolderStatus:
        with _classified(self._config):
            status = self._client.folder_status(name, self._status_items())
        return _folder_status(name, status)

    def folder_statuses(
        self, names: Sequence[str], *, meanwhile: Callable[[], object] | None = None
    ) -> dict[str, FolderStatus | errors.MailError]:
        """STATUS of every folder in `names`, the commands sent together and the answers read after
        (pipelining, RFC 3501 5.5): one round trip for all, not one a folder. `meanwhile` runs after the
        commands are sent and before the answers are read (database work while the server answers; it
        must not use this session). A folder the server refuses (gone, not allowed) gets the classified
        error instead of a status; a lost connection raises for all."""
        items = self._status_items()
        results: dict[str, FolderStatus | errors.MailError] = {}
        unique = list(dict.fromkeys(names))
        for start in range(0, max(len(unique), 1), STATUS_PIPELINE):
            chunk = unique[start : start + STATUS_PIPELINE]
            with _classified(self._config):
                tags = _send_statuses(self._client, chunk, items) if chunk else {}
            failure: BaseException | None = None
            if meanwhile is not None:
                try:
                    meanwhile()
                except BaseException as exc:  # the answers are read first: the session stays usable
                    failure = exc
                meanwhile = None
            with _classified(self._config):
                answers = _read_statuses(self._client._imap, tags) if tags else {}
            if failure is not None:
                raise failure
            for name, (status, text, values) in answers.items():
                if status == "OK" and values is not None:
                    results[name] = _folder_status(name, values)
                    continue
                detail = f"STATUS {name}: {status} {text}".strip()[:300]
                if status == "NO" and _NONEXISTENT_HINTS.search(text):
                    results[name] = errors.FolderNotFound(detail=detail, protocol="imap")
                else:
                    results[name] = errors.ServerError(detail=detail, protocol="imap")
        return results

    def select(self, name: str, *, readonly: bool = False, expected_uidvalidity: int | None = None) -> SelectedFolder:
        """Select a folder. Raises UidValidityChanged (after selecting) if it differs from the expected one."""
        with _classified(self._config):
            response = self._client.select_folder(name, readonly=readonly)
        selected = SelectedFolder(
            name=name,
            uidvalidity=_int_or_none(response.get(b"UIDVALIDITY")),
            uidnext=_int_or_none(response.get(b"UIDNEXT")),
            exists=int(response.get(b"EXISTS", 0)),
            highestmodseq=_int_or_none(response.get(b"HIGHESTMODSEQ")),
            readonly=readonly or b"READ-WRITE" not in response,
        )
        self.selected = selected
        if expected_uidvalidity is not None and selected.uidvalidity != expected_uidvalidity:
            raise errors.UidValidityChanged(name, expected_uidvalidity, selected.uidvalidity)
        return selected

    # -- searching (in the selected folder)
    def search_all_uids(self) -> list[int]:
        with _classified(self._config):
            return sorted(int(uid) for uid in self._client.search("ALL"))

    def search_uids_from(self, first_uid: int) -> list[int]:
        """UIDs >= first_uid (new mail since a stored UIDNEXT). `n:*` always matches the highest UID,
        even when it is below n (RFC 3501 6.4.8), so that one is filtered out."""
        with _classified(self._config):
            found = self._client.search(["UID", f"{int(first_uid)}:*"])
        return sorted(int(uid) for uid in found if int(uid) >= first_uid)

    def search_message_ids(self, message_ids: list[str]) -> list[int]:
        """UIDs whose Message-ID header contains one of `message_ids` (a substring search: check the
        identities of what it finds). Sent in groups of 50 ORed criteria."""
        found: set[int] = set()
        wanted = [message_id for message_id in message_ids if message_id.isascii() and '"' not in message_id]
        for start in range(0, len(wanted), 50):
            group = wanted[start : start + 50]
            criteria: list = ["OR"] * (len(group) - 1)
            for message_id in group:
                criteria += ["HEADER", "Message-ID", message_id]
            with _classified(self._config):
                found.update(int(uid) for uid in self._client.search(criteria))
        return sorted(found)

    def search_uids_since(self, since: dt.date) -> list[int]:
        """UIDs of messages that arrived on or after `since` (server INTERNALDATE, day granularity)."""
        if isinstance(since, dt.datetime):
            since = since.date()
        with _classified(self._config):
            return sorted(int(uid) for uid in self._client.search(["SINCE", since]))

    # -- fetching (in the selected folder)
    def fetch_messages(self, uids: Iterable[int], *, batch_size: int = DEFAULT_FETCH_BATCH) -> Iterator[FetchedMessage]:
        """Whole messages, `batch_size` per command (batches in the given order, UIDs sorted within one).

        Does not set \\Seen (BODY.PEEK[]). UIDs expunged meanwhile are skipped silently.
        """
        yield from self._fetch(uids, "BODY.PEEK[]", b"BODY[]", batch_size)

    def fetch_headers(self, uids: Iterable[int], *, batch_size: int = 1000) -> Iterator[FetchedMessage]:
        """Like fetch_messages but `raw` is only the header block: cheap matching by Message-ID."""
        yield from self._fetch(uids, "BODY.PEEK[HEADER]", b"BODY[HEADER]", batch_size)

    def fetch_identities(self, uids: Iterable[int], *, batch_size: int = 2000) -> Iterator[FetchedMessage]:
        """Like fetch_headers but `raw` is only the Message-ID field: what matching a folder's messages to
        stored ones by identity needs (a few dozen bytes per message)."""
        yield from self._fetch(
            uids, "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]", b"BODY[HEADER.FIELDS (MESSAGE-ID)]", batch_size
        )

    def _fetch(self, uids: Iterable[int], item: str, key: bytes, batch_size: int) -> Iterator[FetchedMessage]:
        batch_size = max(1, min(batch_size, MAX_UIDS_PER_COMMAND))
        items = ["UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", item]
        for chunk in _chunks(uids, batch_size):
            response = None
            if self.fast_fetch:
                with _classified(self._config):
                    response = _stream_fetch(self._client._imap, chunk, items, key)
                if response is None:
                    # Something this reader does not know (another item order, a quoted body, NIL...):
                    # imapclient reads this command again, and every later one of this session.
                    logger.info("unusual FETCH response from %s; using imapclient's parser", self._config.host)
                    self.fast_fetch = False
            if response is None:
                with _classified(self._config):
                    response = self._client.fetch(chunk, items)
            for uid in sorted(response):
                data = response[uid]
                if key not in data:  # unsolicited FETCH (flags of another message), or vanished meanwhile
                    continue
                yield FetchedMessage(
                    uid=int(uid),
                    flags=_flags(data.get(b"FLAGS", ())),
                    internaldate=_aware(data.get(b"INTERNALDATE")),
                    size=int(data.get(b"RFC822.SIZE", 0)),
                    raw=bytes(data[key] or b""),
                )

    def fetch_flags(self, uids: Iterable[int]) -> dict[int, tuple[str, ...]]:
        result: dict[int, tuple[str, ...]] = {}
        for chunk in _chunks(uids, MAX_UIDS_PER_COMMAND):
            with _classified(self._config):
                response = self._client.fetch(chunk, ["FLAGS"])
            for uid, data in response.items():
                if b"FLAGS" in data:
                    result[int(uid)] = _flags(data[b"FLAGS"])
        return result

    def fetch_changed_flags(self, since_modseq: int) -> FlagChanges:
        """Flags of every message changed since `since_modseq` (CONDSTORE), and with QRESYNC the UIDs
        expunged since then. Take the new cursor from select()'s highestmodseq, read BEFORE this call."""
        if not self.condstore_enabled:
            raise errors.ServerError("The server does not support CONDSTORE.", protocol="imap")
        modifiers = f"(CHANGEDSINCE {int(since_modseq)}{' VANISHED' if self.qresync_enabled else ''})"
        imap = self._client._imap
        with _classified(self._config):
            imap.untagged_responses.pop("VANISHED", None)
            # imapclient's fetch() cannot send '1:*'; this is the same command, sent through imaplib.
            typ, data = imap.uid("FETCH", "1:*", "(UID FLAGS MODSEQ)", modifiers)
            if typ != "OK":
                raise imap_exc.IMAPClientError(f"FETCH CHANGEDSINCE failed: {data!r}")
            vanished_lines = imap.untagged_responses.pop("VANISHED", [])
            parsed = parse_fetch_response([d for d in data if d is not None] or [None], False, True)
        changed: dict[int, tuple[str, ...]] = {}
        highest = None
        for uid, item in parsed.items():
            if b"FLAGS" not in item:
                continue
            changed[int(uid)] = _flags(item[b"FLAGS"])
            modseq = item.get(b"MODSEQ")
            if modseq:
                value = int(modseq[0] if isinstance(modseq, tuple) else modseq)
                highest = value if highest is None else max(highest, value)
        vanished: list[int] = []
        for line in vanished_lines:
            text = _text(line)
            vanished.extend(parse_uid_set(text.replace("(EARLIER)", "").strip()))
        return FlagChanges(changed=changed, vanished=sorted(set(vanished)), highestmodseq=highest)

    # -- waiting for changes
    def poll_changes(self) -> bool:
        """NOOP: True if the selected folder changed since this session last heard from the server.

        IDLE announces only what happens while it runs (Dovecot, for one, says nothing at its start about a
        message delivered just before), so a watcher asks this first."""
        with _classified(self._config):
            _, responses = self._client.noop()
        return any(_is_change(r) for r in responses)

    def idle_wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds (<= 29 min) for a change in the selected folder; True if one came."""
        timeout = max(0.0, min(timeout, IDLE_MAX_SECONDS))
        if not self.has_capability("IDLE"):
            time.sleep(timeout)
            return self.poll_changes()
        with _classified(self._config):
            self._client.idle()
            try:
                responses = self._client.idle_check(timeout=timeout)
            finally:
                _, done_responses = self._client.idle_done()
        return any(_is_change(r) for r in list(responses) + list(done_responses))

    # -- IDLE held in an event loop (mailsync.sync.watcher keeps many sessions in one selector)
    def start_idle(self) -> bool:
        """Enter IDLE on the selected folder and return at once; False if the server has no IDLE (poll
        with `poll_changes` instead). Then wait for `fileno()` to become readable and call `read_idle`."""
        if not self.has_capability("IDLE"):
            return False
        self._empty_reads = 0
        with _classified(self._config):
            self._client.idle()
        return True

    def fileno(self) -> int:
        return self._client.socket().fileno()

    def read_idle(self) -> bool:
        """The socket is readable during IDLE: read what the server said; True if the folder changed.

        Raises errors.ConnectionLost when the server said BYE or closed the connection (imapclient
        returns nothing for a closed socket, which then stays readable: a few empty reads in a row)."""
        try:
            with _classified(self._config):
                responses = self._client.idle_check(timeout=0)
        finally:
            # imapclient leaves the socket blocking without a timeout: a dead server would then hang
            # the next command (DONE when IDLE is renewed) for good.
            with contextlib.suppress(OSError):
                self._client.socket().settimeout(self._config.timeout)
        if not responses:
            self._empty_reads += 1
            if self._empty_reads >= 3:
                raise errors.ConnectionLost(detail=f"{self._config.host}: closed during IDLE", protocol="imap")
            return False
        self._empty_reads = 0
        if any(isinstance(r, tuple) and r and _text(r[0]).upper() == "BYE" for r in responses):
            raise errors.ConnectionLost(detail=f"{self._config.host}: BYE during IDLE", protocol="imap")
        return any(_is_change(r) for r in responses)

    def stop_idle(self) -> bool:
        """Leave IDLE (DONE); True if the server reported a change meanwhile."""
        with _classified(self._config):
            _, responses = self._client.idle_done()
        return any(_is_change(r) for r in responses)

    # -- changing (in the selected folder)
    def add_flags(self, uids: Iterable[int], flags: Iterable[str]) -> None:
        self._store(uids, flags, self._client.add_flags)

    def remove_flags(self, uids: Iterable[int], flags: Iterable[str]) -> None:
        self._store(uids, flags, self._client.remove_flags)

    def set_flags(self, uids: Iterable[int], flags: Iterable[str]) -> None:
        """Replace all flags of the messages with `flags`."""
        self._store(uids, flags, self._client.set_flags)

    def _store(self, uids: Iterable[int], flags: Iterable[str], method) -> None:
        flag_list = [f.encode() if isinstance(f, str) else f for f in flags]
        for chunk in _chunks(uids, MAX_UIDS_PER_COMMAND):
            with _classified(self._config):
                method(chunk, flag_list, silent=True)

    def move(self, uids: Iterable[int], destination: str) -> dict[int, int]:
        """Move messages to another folder (MOVE, or COPY + delete). Returns old UID -> new UID when the
        server reports it (UIDPLUS COPYUID), else an empty dict."""
        mapping: dict[int, int] = {}
        for chunk in _chunks(uids, MAX_UIDS_PER_COMMAND):
            with _classified(self._config):
                self._pop_response_codes("COPYUID")
                if self.has_capability("MOVE"):
                    self._client.move(chunk, destination)
                    codes = self._pop_response_codes("COPYUID")
                else:
                    self._client.copy(chunk, destination)
                    codes = self._pop_response_codes("COPYUID")
                    self._delete_now(chunk)
            for code in codes:
                mapping.update(_copyuid_mapping(code))
        return mapping

    def copy(self, uids: Iterable[int], destination: str) -> dict[int, int]:
        """Copy messages to another folder; returns old UID -> new UID when the server reports it."""
        mapping: dict[int, int] = {}
        for chunk in _chunks(uids, MAX_UIDS_PER_COMMAND):
            with _classified(self._config):
                self._pop_response_codes("COPYUID")
                self._client.copy(chunk, destination)
                codes = self._pop_response_codes("COPYUID")
            for code in codes:
                mapping.update(_copyuid_mapping(code))
        return mapping

    def _pop_response_codes(self, name: str) -> list[str]:
        """Response codes such as [COPYUID ...] that imaplib files under untagged_responses[name]."""
        return [_text(item) for item in self._client._imap.untagged_responses.pop(name, [])]

    def delete(self, uids: Iterable[int]) -> None:
        """Flag \\Deleted and expunge exactly these UIDs (UID EXPUNGE; plain EXPUNGE without UIDPLUS)."""
        for chunk in _chunks(uids, MAX_UIDS_PER_COMMAND):
            with _classified(self._config):
                self._delete_now(chunk)

    def _delete_now(self, chunk: list[int]) -> None:
        self._client.add_flags(chunk, [b"\\Deleted"], silent=True)
        if self.has_capability("UIDPLUS"):
            self._client.uid_expunge(chunk)
        else:
            self._client.expunge()

    def append(
        self, folder: str, raw: bytes, *, flags: Iterable[str] = (), internaldate: dt.datetime | None = None
    ) -> int | None:
        """Store a message in a folder; returns its UID when the server tells (UIDPLUS APPENDUID)."""
        with _classified(self._config):
            self._pop_response_codes("APPENDUID")
            self._client.append(folder, raw, flags=tuple(flags), msg_time=internaldate)
            codes = self._pop_response_codes("APPENDUID")  # "<uidvalidity> <uid>"
        parts = codes[-1].split() if codes else []
        return int(parts[1]) if len(parts) == 2 and parts[1].isdigit() else None

    def create_folder(self, name: str) -> None:
        with _classified(self._config):
            self._client.create_folder(name)


# --------------------------------------------------------------------------------------------------
# FETCH responses, read straight from the connection

# INTERNALDATE as RFC 3501 writes it ("date-time": day space-padded or 2 digits, 4-digit year, numeric
# zone), the form every server sends; anything else goes to imapclient's reader (RFC 822 forms, "-0000").
_INTERNALDATE = re.compile(rb"([ \d]?\d)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)")
_MONTHS = {
    name: number
    for number, name in enumerate(
        (b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov", b"dec"), start=1
    )
}


@functools.lru_cache(maxsize=64)
def _zone(sign: bytes, hours: bytes, minutes: bytes) -> dt.timezone:
    offset = dt.timedelta(hours=int(hours), minutes=int(minutes))
    return dt.timezone(-offset if sign == b"-" else offset)


def _internaldate(value: bytes) -> dt.datetime:
    """An INTERNALDATE value as a timezone-aware datetime, what imapclient's parse_to_datetime(value,
    normalise=False) gives (the same instant, offset and fields) in a third of its time: it runs for
    every message fetched. ValueError for a date that does not exist, as imapclient raises."""
    match = _INTERNALDATE.fullmatch(value.strip())
    month = _MONTHS.get(match[2].lower()) if match else None
    if match is None or month is None or (match[7] == b"-" and match[8] == match[9] == b"00"):
        return parse_to_datetime(value, normalise=False)
    try:
        return dt.datetime(
            int(match[3]),
            month,
            int(match[1]),
            int(match[4]),
            int(match[5]),
            int(match[6]),
            tzinfo=_zone(match[7], match[8], match[9]),
        )
    except ValueError:  # no such day, or a zone of a day or more: imapclient's answer, whatever it is
        return parse_to_datetime(value, normalise=False)


# A line that ends in a literal ({size} then CRLF; imaplib's rule too).
_LITERAL_AT_END = re.compile(rb"\{(\d+)\}\r\n\Z")
_FETCH_START = re.compile(rb"\* (\d+) FETCH \(", re.IGNORECASE)
_UNTAGGED = re.compile(rb"\* (?:(\d+) )?([A-Za-z-]+) ?(.*)\r\n\Z", re.DOTALL)
# The items this reader knows, as Dovecot, Gmail, Exchange and the like send them (flags are atoms).
_FETCH_ITEM = re.compile(
    rb' ?(?:UID (\d+)|FLAGS \(([^()"{}\r\n]*)\)|INTERNALDATE "([^"\r\n]*)"'
    rb"|RFC822\.SIZE (\d+)|MODSEQ \((\d+)\))",
    re.IGNORECASE,
)


def _stream_fetch(imap: imaplib.IMAP4, uids: list[int], items: list[str], key: bytes) -> dict[int, dict] | None:
    """UID FETCH `items` of `uids`, the responses read straight from the connection: uid -> {item: value}
    with the values imapclient's fetch() gives (FLAGS: tuple of bytes, INTERNALDATE: datetime as sent,
    RFC822.SIZE: int, `key`: the literal's bytes). imapclient lexes every byte of every response in
    Python (about 2,600 msg/s here); this reads each literal in one call, and parses the short text
    around it with one regular expression.

    None when a response is not of the usual form: the command was read to its end (the connection is
    ready for the next one) and the caller asks imapclient. NO / BAD raise like imapclient."""
    tag = imap._command("UID", "FETCH", ",".join(str(uid) for uid in uids), "(" + " ".join(items) + ")")
    tagged = tag + b" "
    results: dict[int, dict] = {}
    usual = True
    while True:
        line = _read_line(imap)
        if line.startswith(tagged):
            del imap.tagged_commands[tag]
            status, _, text = line[len(tagged) :].rstrip(b"\r\n").partition(b" ")
            if status.upper() != b"OK":
                raise imap_exc.IMAPClientError(f"UID FETCH failed: {_text(status)} {_text(text)}")
            return results if usual else None
        texts, literals = _read_rest(imap, line)
        start = _FETCH_START.match(texts[0])
        if start is None:
            _keep_untagged(imap, texts, literals)
            continue
        if usual:
            parsed = _usual_fetch(texts, literals, key, start.end())
            if parsed is None:
                usual = False
            else:
                uid, values = parsed
                results.setdefault(uid, {}).update(values)


def _send_statuses(client: IMAPClient, names: list[str], items: list[str]) -> dict[bytes, str]:
    """One write holding a STATUS command for each folder; tag -> folder name."""
    imap = client._imap
    if imap.state not in ("AUTH", "SELECTED"):
        raise imap.error(f"STATUS illegal in state {imap.state}")
    wanted = b"(" + " ".join(items).encode("ascii") + b")"
    tags: dict[bytes, str] = {}
    lines = []
    for name in names:
        folder = client._normalise_folder(name)
        folder = folder if isinstance(folder, bytes) else folder.encode("ascii")
        if b"\r" in folder or b"\n" in folder:
            raise ValueError(f"folder name with a line break: {name!r}")
        tag = imap._new_tag()
        tags[tag] = name
        lines.append(b"%s STATUS %s %s\r\n" % (tag, folder, wanted))
    imap.send(b"".join(lines))
    return tags


def _read_statuses(imap: imaplib.IMAP4, tags: dict[bytes, str]) -> dict[str, tuple[str, str, dict | None]]:
    """The answers to _send_statuses' commands: name -> (tagged status, its text, the STATUS items or None).

    An untagged STATUS names its folder; one whose name is not among those asked for (a server that
    writes the name in another form) belongs to the next command to complete, as servers answer
    pipelined STATUS commands in order."""
    by_name = {_status_name_key(name): name for name in tags.values()}
    values: dict[str, dict] = {}
    unnamed: list[dict] = []
    answers: dict[str, tuple[str, str, dict | None]] = {}
    while len(answers) < len(tags):
        line = _read_line(imap)
        if line[:1] != b"*" and line[:1] != b"+":
            tag, _, rest = line.rstrip(b"\r\n").partition(b" ")
            if tag not in tags:
                raise imap.abort(f"unexpected tagged response: {line[:100]!r}")
            imap.tagged_commands.pop(tag, None)
            status, _, text = rest.partition(b" ")
            name = tags[tag]
            found = values.pop(name, None)
            if found is None and unnamed:
                found = unnamed.pop(0)
            answers[name] = (_text(status).upper(), _text(text), found)
            continue
        texts, literals = _read_rest(imap, line)
        if texts[0][:9].upper() != b"* STATUS ":
            _keep_untagged(imap, texts, literals)
            continue
        parsed = (_fast_status(texts[0]) if not literals else None) or _parsed_status(texts, literals)
        if parsed is None:
            raise imap.abort(f"unexpected STATUS response: {texts[0][:100]!r}")
        raw_name, items = parsed
        name = by_name.get(_status_name_key(imap_utf7.decode(raw_name)))
        if name is not None and name not in answers:
            values[name] = items
        else:
            unnamed.append(items)
    return answers


# `(flags) "delimiter" name` of `* LIST` as servers write it: flags atoms, the name an atom or quoted.
_LIST_ITEM = re.compile(
    rb'\(([^()"{}]*)\) (?:"((?:[^"\\\r\n]|\\["\\])*)"|NIL) (?:"((?:[^"\\\r\n]|\\["\\])*)"|([^\s"(){}\\]+))\Z',
    re.IGNORECASE,
)


def _list_all(client: IMAPClient) -> list[tuple]:
    """What client.list_folders() gives ((flags, delimiter, name) of every folder), each LIST line of the
    usual form read by one regular expression: imapclient's lexer is most of the CPU of listing a
    mailbox with many folders. A listing with any other line is read by imapclient's parser."""
    imap = client._imap
    typ, data = imap._simple_command("LIST", client._normalise_folder(""), client._normalise_folder("*"))
    client._checkok("list", typ, data)
    typ, data = imap._untagged_response(typ, data, "LIST")
    items = [item for item in data if item not in (b"", None)]
    fast = [_fast_list_item(item) if isinstance(item, bytes) else None for item in items]
    if client.folder_encode and None not in fast:
        return fast
    return client._proc_folder_list(data)


def _fast_list_item(item: bytes) -> tuple[tuple[bytes, ...], bytes | None, str] | None:
    match = _LIST_ITEM.match(item)
    if match is None:
        return None
    flags_text, delimiter, quoted, atom = match.groups()
    flags = tuple(flags_text.split())
    if any(flag.isdigit() or flag.upper() == b"NIL" for flag in flags):
        return None  # imapclient reads these as a number and None
    if atom is not None and (atom.isdigit() or atom.upper() == b"NIL"):
        return None
    if delimiter is not None:
        delimiter = _QUOTED_PAIR.sub(rb"\1", delimiter)
    return flags, delimiter, imap_utf7.decode(_astring(quoted, atom))


# `* STATUS name (ITEM n ...)` as servers write it: the name an atom or a quoted string, every value a number.
_STATUS_LINE = re.compile(
    rb'\* STATUS (?:"((?:[^"\\\r\n]|\\["\\])*)"|([^\s"(){}\\]+)) \(([A-Za-z0-9 .-]*)\)\r\n\Z', re.I
)
_QUOTED_PAIR = re.compile(rb"\\([\\\"])")


def _fast_status(line: bytes) -> tuple[bytes, dict[bytes, int]] | None:
    """(name, items) of a usual STATUS line, or None: imapclient's parser (_parsed_status) reads it.
    Its lexer is most of a no-change pass's CPU on a mailbox with many folders."""
    match = _STATUS_LINE.match(line)
    if match is None:
        return None
    quoted, atom, text = match.groups()
    if atom is not None and atom.upper() == b"NIL":
        return None
    tokens = text.split()
    if len(tokens) % 2 or not all(value.isdigit() for value in tokens[1::2]):
        return None
    items = {key.upper(): int(value) for key, value in zip(tokens[0::2], tokens[1::2], strict=True)}
    return _astring(quoted, atom), items


def _astring(quoted: bytes | None, atom: bytes) -> bytes:
    """A name matched as a quoted string (its \\" and \\\\ undone) or as an atom."""
    return _QUOTED_PAIR.sub(rb"\1", quoted) if quoted is not None else atom


def _folder_status(name: str, values: dict) -> FolderStatus:
    """FolderStatus from STATUS items as imapclient gives them (b"MESSAGES": 3, ...)."""
    return FolderStatus(
        name=name,
        messages=int(values.get(b"MESSAGES", 0)),
        uidnext=_int_or_none(values.get(b"UIDNEXT")),
        uidvalidity=_int_or_none(values.get(b"UIDVALIDITY")),
        highestmodseq=_int_or_none(values.get(b"HIGHESTMODSEQ")),
    )


def _parsed_status(texts: list[bytes], literals: list[bytes]) -> tuple[bytes, dict] | None:
    """(name, items) of any STATUS response (literal names too), read by imapclient's parser."""
    data: list = []
    for index, text in enumerate(texts):
        text = text[9:] if index == 0 else text  # after "* STATUS "
        if index < len(literals):
            data.append((text.rstrip(b"\r\n"), literals[index]))
        else:
            data.append(text.rstrip(b"\r\n"))
    parsed = parse_response(data)
    if len(parsed) < 2 or not isinstance(parsed[-1], tuple):
        return None
    raw_name = parsed[0] if isinstance(parsed[0], bytes) else str(parsed[0]).encode()
    pairs = parsed[-1]
    return raw_name, {_text(key).upper().encode(): value for key, value in zip(pairs[0::2], pairs[1::2], strict=False)}


def _status_name_key(name: str) -> str:
    """INBOX in any case is the inbox (RFC 3501 5.1); other names are compared as they are."""
    return "INBOX" if name.upper() == "INBOX" else name


def _read_rest(imap: imaplib.IMAP4, line: bytes) -> tuple[list[bytes], list[bytes]]:
    """The whole response that starts with `line`: its text lines and the literals between them."""
    texts, literals = [line], []
    while (literal := _LITERAL_AT_END.search(line)) is not None:
        literals.append(imap.read(int(literal.group(1))))
        line = _read_line(imap)
        texts.append(line)
    return texts, literals


def _read_line(imap: imaplib.IMAP4) -> bytes:
    line = imap.readline()
    if not line:
        raise imap.abort("socket error: EOF")
    if not line.endswith(b"\r\n"):
        raise imap.abort(f"socket error: unterminated line: {line[:100]!r}")
    return line


def _keep_untagged(imap: imaplib.IMAP4, texts: list[bytes], literals: list[bytes]) -> None:
    """Another untagged response (EXISTS, EXPUNGE, VANISHED, OK [...]): filed where imaplib files them."""
    untagged = _UNTAGGED.match(texts[0])
    if untagged is None:
        if texts[0].startswith(b"+"):
            raise imap.abort(f"unexpected continuation: {texts[0][:100]!r}")
        raise imap.abort(f"unexpected response: {texts[0][:100]!r}")
    number, kind, rest = untagged.groups()
    if kind.upper() == b"BYE":
        raise imap.abort(_text(rest))
    data = number if number is not None else rest
    imap._append_untagged(_text(kind).upper(), data if not literals else (data, literals[0]))


def _usual_fetch(texts: list[bytes], literals: list[bytes], key: bytes, offset: int) -> tuple[int, dict] | None:
    """(uid, values) of `* n FETCH (items [key {size}] items)`, or None if it is not of that form."""
    if len(literals) > 1:
        return None
    before = texts[0][offset:]
    values: dict = {}
    if literals:
        marker = b"%s {%d}\r\n" % (key, len(literals[0]))
        if not before.upper().endswith(marker.upper()):
            return None
        head = before[: len(before) - len(marker)].removesuffix(b" ")
        tail = texts[1]
        values[key] = literals[0]
    else:
        head, tail = b"", before
    if not tail.endswith(b")\r\n"):
        return None
    text = head + tail[:-3]
    position, end = 0, len(text)
    uid = None
    while position < end:
        item = _FETCH_ITEM.match(text, position)
        if item is None or item.end() == position:
            return None
        position = item.end()
        number, flags, internaldate, size, _modseq = item.groups()
        if number is not None:
            uid = int(number)
        elif flags is not None:
            values[b"FLAGS"] = tuple(flags.split())
        elif internaldate is not None:
            try:
                values[b"INTERNALDATE"] = _internaldate(internaldate)
            except ValueError:
                values[b"INTERNALDATE"] = None
        elif size is not None:
            values[b"RFC822.SIZE"] = int(size)
    if uid is None:
        return None
    return uid, values


# --------------------------------------------------------------------------------------------------
# Helpers (pure)

SPECIAL_USE_ROLES = {
    "\\sent": "sent",
    "\\archive": "archive",
    "\\trash": "trash",
    "\\junk": "junk",
    "\\drafts": "drafts",
    "\\all": "all",
    "\\allmail": "all",  # Gmail XLIST spelling
    "\\spam": "junk",
    "\\inbox": "inbox",
}

# Folder names used by servers without SPECIAL-USE (full lower-cased names and last path components).
ROLE_NAMES = {
    "sent": [
        "sent", "sent items", "sent messages", "sent mail", "sent-mail", "[gmail]/sent mail",
        "[google mail]/sent mail", "gesendet", "gesendete objekte", "gesendete elemente", "envoyés",
        "éléments envoyés", "messages envoyés", "wysłane", "elementy wysłane", "posta inviata", "inviati",
        "enviados", "elementos enviados", "itens enviados", "verzonden", "verzonden items", "skickat",
        "skickade objekt", "sendt", "lähetetyt", "отправленные", "已发送", "已發送", "送信済み",
    ],
    "trash": [
        "trash", "deleted items", "deleted messages", "deleted", "bin", "[gmail]/trash", "[gmail]/bin",
        "[google mail]/papierkorb", "papierkorb", "gelöschte objekte", "gelöschte elemente", "corbeille",
        "éléments supprimés", "kosz", "elementy usunięte", "cestino", "posta eliminata", "papelera",
        "elementos eliminados", "lixeira", "itens excluídos", "prullenbak", "verwijderde items",
        "papperskorgen", "корзина", "удаленные", "已删除", "ごみ箱",
    ],
    "junk": [
        "junk", "spam", "junk e-mail", "junk email", "junk mail", "bulk mail", "[gmail]/spam",
        "[google mail]/spam", "courrier indésirable", "indésirables", "junk-e-mail", "posta indesiderata",
        "correo no deseado", "lixo eletrônico", "ongewenste e-mail", "skräppost", "спам", "垃圾邮件",
        "迷惑メール",
    ],
    "drafts": [
        "drafts", "draft", "[gmail]/drafts", "[google mail]/entwürfe", "entwürfe", "brouillons",
        "kopie robocze", "bozze", "borradores", "rascunhos", "concepten", "utkast", "черновики", "草稿",
        "下書き",
    ],
    "archive": ["archive", "archives", "archiv", "archivio", "archiwum", "archivo", "arquivo", "archief", "архив"],
    "all": ["[gmail]/all mail", "[google mail]/all mail", "[google mail]/alle nachrichten", "all mail"],
}  # fmt: skip
_NAME_TO_ROLE = {name: role for role, names in ROLE_NAMES.items() for name in names}


def assign_roles(folders: list[Folder]) -> list[Folder]:
    """Roles from SPECIAL-USE flags; for roles no flag claimed, from well-known names (one folder per role)."""
    roles: dict[int, str] = {}
    taken: set[str] = set()
    for index, folder in enumerate(folders):
        if folder.name.upper() == "INBOX":
            roles[index] = "inbox"
            taken.add("inbox")
            continue
        for flag in folder.flags:
            role = SPECIAL_USE_ROLES.get(flag.lower())
            if role and role not in taken:
                roles[index] = role
                taken.add(role)
                break
    for index, folder in enumerate(folders):
        if index in roles or folder.noselect:
            continue
        lowered = folder.name.lower()
        leaf = lowered.rsplit(folder.delimiter, 1)[-1] if folder.delimiter else lowered
        role = _NAME_TO_ROLE.get(lowered) or _NAME_TO_ROLE.get(leaf)
        if role and role not in taken:
            roles[index] = role
            taken.add(role)
    return [
        Folder(f.name, f.delimiter, roles.get(i, ""), f.flags, f.noselect) if i in roles else f
        for i, f in enumerate(folders)
    ]


def parse_uid_set(text: str) -> list[int]:
    """'1:3,7' -> [1, 2, 3, 7]."""
    uids: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if ":" in part:
            low, high = sorted(int(x) for x in part.split(":", 1))
            uids.extend(range(low, high + 1))
        elif part.isdigit():
            uids.append(int(part))
    return uids


def _copyuid_mapping(code: str) -> dict[int, int]:
    """'<uidvalidity> <source uid set> <destination uid set>' (RFC 4315) -> {source uid: destination uid}."""
    parts = code.split()
    if len(parts) != 3:
        return {}
    old, new = parse_uid_set(parts[1]), parse_uid_set(parts[2])
    return dict(zip(old, new, strict=False)) if len(old) == len(new) else {}


def _chunks(uids: Iterable[int], size: int) -> Iterator[list[int]]:
    chunk: list[int] = []
    for uid in uids:
        chunk.append(int(uid))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _flags(raw_flags) -> tuple[str, ...]:
    return tuple(sorted(_text(f) for f in raw_flags if _text(f).lower() != "\\recent"))


def _int_or_none(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return int(value) if value is not None else None


def _aware(value) -> dt.datetime | None:
    if not isinstance(value, dt.datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _is_change(response) -> bool:
    if not isinstance(response, tuple) or len(response) < 2:
        return False
    kind = response[1] if isinstance(response[0], int) else response[0]
    return _text(kind).upper() in {"EXISTS", "EXPUNGE", "FETCH", "VANISHED", "RECENT"}
