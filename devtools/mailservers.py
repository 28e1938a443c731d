"""Real mail servers on loopback (Dovecot, aiosmtpd, misbehaving ones) for tests and benchmarks.

The pytest fixtures that start them live in tests/mailservers.py (a plugin of the root conftest); the
benchmark commands start a DovecotServer directly. Everything listens on loopback only.

Fixtures
--------
``test_ca`` (session) -> :class:`TestCA`
    A throwaway certificate authority made with ``cryptography``. ``test_ca.ca_pem`` is the PEM text
    an account can trust (``trusted_ca_pem``); ``test_ca.ca_path`` the same as a file;
    ``test_ca.issue(...)`` makes more server certificates.

``dovecot`` (session) -> :class:`DovecotServer`
    A private Dovecot 2.3 (root mode, config based on ``/work/shared/notes/dovecot-test.conf``) in a short
    unique base dir ``/tmp/dv-XXXXXX``. Skips locally / fails in CI when Dovecot is missing.
    Listeners (ports are picked free at start)::

        dovecot.host            127.0.0.1   cert for 127.0.0.1 + localhost, signed by test_ca
        dovecot.imap_port       plain IMAP with STARTTLS available
        dovecot.imaps_port      implicit TLS
        dovecot.selfsigned_host 127.0.0.2   same ports, presents a SELF-SIGNED certificate
        dovecot.expired_host    127.0.0.3   same ports, presents an EXPIRED certificate signed by test_ca
        dovecot.mismatch_host   127.0.0.4   same ports, the 127.0.0.1 certificate (hostname mismatch)

    Users: ``dovecot.add_user(name=None, password=None, *, refuse_login="") -> MailUser`` (fresh random
    user by default; login with ``user.username`` = the full address, or the local part). New users work at
    once (one passwd-file per user). ``refuse_login="[ALERT] Application-specific password required..."``
    makes a correct password answer NO with that text, as Gmail / Yahoo / iCloud do.
    Admin helpers act on the server directly (doveadm / maildir files), never through the code under
    test: ``append(user, raw, folder="INBOX", *, flags=(), internaldate=None) -> uid``,
    ``deliver_many(user, [(raw, flags, date), ...], folder) -> [uids]`` (bulk: maildir files with the
    date as INTERNALDATE, then ``doveadm force-resync``), ``uids(user, folder)``, ``flags(user, uid,
    folder) -> set``, ``add_flags`` / ``remove_flags(user, uids, flags, folder)``, ``move(user, uids,
    destination, folder)``, ``expunge(user, uids, folder)``, ``create_folder(user, name)``,
    ``folder_status(user, folder) -> {messages, uidnext, uidvalidity, highestmodseq}``,
    ``reset_uidvalidity(user, folder) -> new uidvalidity`` (index + uidlist dropped: new UIDVALIDITY and
    renumbered UIDs, as after a server-side rebuild), and ``doveadm("mailbox status", ..., user=user)``.
    Dovecot runs with ``auth_failure_delay = 0`` and without the anvil auth penalty, so wrong-password
    tests are fast and do not slow down later logins.
    XOAUTH2: ``user.access_token`` is accepted by Dovecot (oauth2 passdb against a tiny local token
    introspection endpoint) and by the SMTP servers; any other token is refused.

``mail_user`` (function) -> :class:`MailUser`
    A fresh user known to Dovecot AND to both SMTP servers (same password / token), so each test is
    independent of the others. ``smtp_user`` is the same for the SMTP servers only (no Dovecot needed).

``smtp_server`` (session) -> :class:`SmtpServer`
    aiosmtpd with STARTTLS required + AUTH required (PLAIN, LOGIN, XOAUTH2), cert signed by test_ca.
    ``smtp_server.host`` / ``.port`` / ``.implicit_tls``; ``.messages`` lists ReceivedMessage(mail_from,
    rcpt_tos, data, login) for sending tests; a wrong password gets 535.
``smtps_server`` (session) -> :class:`SmtpServer`
    Same, with implicit TLS (SMTPS).

Misbehaving servers (function scope, each on its own free port): ``closed_port`` (an int: nothing
listens there), ``pop3_server`` (greets ``+OK POP3 ready``), ``silent_server`` (accepts, never greets);
``LineServer(greeting, imap_capabilities=...)`` builds others (e.g. an IMAP server without STARTTLS).

``celery_eager``: run Celery tasks inline in a test (``pytestmark = pytest.mark.usefixtures(...)``).
``make_message(subject, *, sender, to, body, message_id, date) -> bytes`` builds a small RFC 5322 message.

Measured here: Dovecot starts in ~40 ms; ``append`` ~40 ms (two doveadm calls); a wrong-password
login fails in < 1 s.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import email.utils
import grp
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

from devtools.net import wait_for_port

DOVECOT = "/usr/sbin/dovecot"
DOVEADM = "/usr/bin/doveadm"
MAIL_OS_USER = "imaplab"
MAIL_DOMAIN = "mail.test"
LOOPBACK = "127.0.0.1"


# --------------------------------------------------------------------------------------------------
# Certificates


class TestCA:
    """A certificate authority that exists only for this test session."""

    __test__ = False  # not a test class for pytest

    def __init__(self, directory: Path):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.directory = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CRM Test CA")])
        now = dt.datetime.now(dt.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_pem = self._cert.public_bytes(_pem()).decode()
        self.ca_path = directory / "ca.pem"
        self.ca_path.write_text(self.ca_pem)

    def issue(
        self,
        name: str,
        *,
        dns_names: tuple[str, ...] = ("localhost",),
        ip_addresses: tuple[str, ...] = (LOOPBACK,),
        self_signed: bool = False,
        expired: bool = False,
    ) -> tuple[Path, Path]:
        """Write `<name>.crt` / `<name>.key` (PEM) for a server and return their paths."""
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0] if dns_names else name)])
        now = dt.datetime.now(dt.UTC)
        if expired:
            not_before, not_after = now - dt.timedelta(days=60), now - dt.timedelta(days=1)
        else:
            not_before, not_after = now - dt.timedelta(days=1), now + dt.timedelta(days=30)
        san = [x509.DNSName(n) for n in dns_names] + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject if self_signed else self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        )
        if not self_signed:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
        cert = builder.sign(key if self_signed else self._key, hashes.SHA256())
        cert_path = self.directory / f"{name}.crt"
        key_path = self.directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(_pem()))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        key_path.chmod(0o600)
        return cert_path, key_path

    def server_context(self, name: str) -> ssl.SSLContext:
        cert_path, key_path = self.issue(name)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_path, key_path)
        return context

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.ca_pem)
        return context


def _pem():
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.PEM


# --------------------------------------------------------------------------------------------------
# Users


@dataclass
class MailUser:
    """A mailbox on the test servers. `username` logs in to IMAP and SMTP; so does the full address."""

    name: str
    password: str
    access_token: str = field(default_factory=lambda: "tok-" + secrets.token_urlsafe(16))

    @property
    def address(self) -> str:
        return f"{self.name}@{MAIL_DOMAIN}"

    @property
    def username(self) -> str:
        return self.address


class UserRegistry:
    """Users and OAuth tokens shared by Dovecot and the SMTP servers (thread-safe dicts)."""

    def __init__(self):
        self.passwords: dict[str, str] = {}
        self.tokens: dict[str, str] = {}  # access token -> user name
        self.lock = threading.Lock()

    def add(self, user: MailUser) -> None:
        with self.lock:
            self.passwords[user.name] = user.password
            self.tokens[user.access_token] = user.name

    def check_password(self, login: str, password: str) -> bool:
        name = login.split("@", 1)[0]
        with self.lock:
            expected = self.passwords.get(name)
        return expected is not None and secrets.compare_digest(expected, password)

    def check_token(self, login: str, token: str) -> bool:
        with self.lock:
            owner = self.tokens.get(token)
        return owner is not None and owner == login.split("@", 1)[0]


# --------------------------------------------------------------------------------------------------
# Dovecot

_DOVECOT_CONF = """\
# Generated by tests/mailservers.py from /work/shared/notes/dovecot-test.conf. Reads nothing from /etc/dovecot.
base_dir      = {base}/run
state_dir     = {base}/state
instance_name = {instance}
log_path      = {base}/log/dovecot.log
info_log_path = {base}/log/dovecot.log
protocols     = imap
listen        = 127.0.0.1, 127.0.0.2, 127.0.0.3, 127.0.0.4
shutdown_clients = yes

disable_plaintext_auth = no
# tests want a wrong password reported at once (the default delays failures by 2 s)
auth_failure_delay = 0
# ... and no growing penalty for repeated failures from 127.0.0.1 (anvil would delay later logins by
# seconds): without this socket the auth process skips the penalty.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
auth_mechanisms = plain login xoauth2 oauthbearer
passdb {{
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN username_format=%n {base}/users/%n
}}
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {base}/oauth2.conf.ext
}}
userdb {{
  driver = passwd-file
  args = username_format=%n {base}/users/%n
  default_fields = home={base}/mail/%n
}}

mail_uid = {mail_user}
mail_gid = {mail_group}
mail_location = maildir:{base}/mail/%n
mail_fsync = never

namespace inbox {{
  inbox = yes
  separator = /
  mailbox Sent {{
    special_use = \\Sent
    auto = subscribe
  }}
  mailbox Trash {{
    special_use = \\Trash
    auto = subscribe
  }}
  mailbox Drafts {{
    special_use = \\Drafts
    auto = subscribe
  }}
  mailbox Archive {{
    special_use = \\Archive
    auto = subscribe
  }}
  mailbox Junk {{
    special_use = \\Junk
    auto = subscribe
  }}
}}

ssl = yes
ssl_cert = <{base}/tls/server.crt
ssl_key  = <{base}/tls/server.key
local 127.0.0.2 {{
  ssl_cert = <{base}/tls/selfsigned.crt
  ssl_key  = <{base}/tls/selfsigned.key
}}
local 127.0.0.3 {{
  ssl_cert = <{base}/tls/expired.crt
  ssl_key  = <{base}/tls/expired.key
}}

service imap-login {{
  inet_listener imap {{
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = {imaps_port}
    ssl = yes
  }}
}}
protocol imap {{
  mail_max_userip_connections = 100
}}
"""

_OAUTH2_CONF = """\
tokeninfo_url = http://127.0.0.1:{port}/tokeninfo?access_token=
username_attribute = username
active_attribute = active
active_value = true
"""


class _TokenInfoHandler(BaseHTTPRequestHandler):
    """Dovecot's oauth2 passdb asks here whether an access token is valid and whose it is."""

    registry: UserRegistry

    def do_GET(self):
        token = parse_qs(self.path.partition("?")[2]).get("access_token", [""])[0]
        with self.registry.lock:
            owner = self.registry.tokens.get(token)
        if owner is None:
            self.send_response(401)
            body = b'{"error": "invalid_token"}'
        else:
            self.send_response(200)
            body = json.dumps({"username": f"{owner}@{MAIL_DOMAIN}", "active": "true"}).encode()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep test output quiet
        pass


class DovecotServer:
    """A private Dovecot, see the module docstring."""

    host = LOOPBACK
    selfsigned_host = "127.0.0.2"
    expired_host = "127.0.0.3"
    mismatch_host = "127.0.0.4"

    def __init__(self, ca: TestCA, registry: UserRegistry, *, extra_conf: str = ""):
        self.ca = ca
        self.registry = registry
        self.extra_conf = extra_conf  # appended to the generated dovecot.conf (the scale benchmark's limits)
        self.base = Path(tempfile.mkdtemp(prefix="dv-", dir="/tmp"))
        assert len(str(self.base)) < 80, "Dovecot's base_dir must be short (unix socket paths)"
        self.conf_path = self.base / "dovecot.conf"
        self.users_path = self.base / "users"
        self.mail_root = self.base / "mail"
        self.imap_port = 0  # picked in start(), after every other socket of this server is bound
        self.imaps_port = 0
        self.process: subprocess.Popen | None = None
        self._tokeninfo: ThreadingHTTPServer | None = None

    @property
    def ca_pem(self) -> str:
        return self.ca.ca_pem

    # -- lifecycle
    def start(self) -> None:
        _ensure_mail_os_user()
        self.base.chmod(0o755)  # the auth process (user dovecot) reads the users file
        for sub in ("run", "state", "log", "tls"):
            (self.base / sub).mkdir()
        self.mail_root.mkdir()
        uid, gid = pwd.getpwnam(MAIL_OS_USER).pw_uid, grp.getgrnam(MAIL_OS_USER).gr_gid
        os.chown(self.mail_root, uid, gid)
        self.users_path.mkdir()  # one passwd-file per user: Dovecot re-reads a shared file at most once a second
        tls = self.base / "tls"
        self._issue_into(tls, "server")
        self._issue_into(tls, "selfsigned", self_signed=True, ip_addresses=("127.0.0.2",))
        self._issue_into(tls, "expired", expired=True, ip_addresses=("127.0.0.3",))

        handler = type("TokenInfo", (_TokenInfoHandler,), {"registry": self.registry})
        self._tokeninfo = ThreadingHTTPServer((LOOPBACK, 0), handler)
        threading.Thread(target=self._tokeninfo.serve_forever, daemon=True).start()
        (self.base / "oauth2.conf.ext").write_text(_OAUTH2_CONF.format(port=self._tokeninfo.server_address[1]))
        self.imap_port, self.imaps_port = _free_ports(2)

        self.conf_path.write_text(
            _DOVECOT_CONF.format(
                base=self.base,
                instance=self.base.name,
                mail_user=MAIL_OS_USER,
                mail_group=MAIL_OS_USER,
                imap_port=self.imap_port,
                imaps_port=self.imaps_port,
            )
            + self.extra_conf
        )
        self.process = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.conf_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            wait_for_port(self.imap_port, timeout=10)
            wait_for_port(self.imaps_port, timeout=10)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"Dovecot did not start: {self.log_tail()}") from None

    def _issue_into(self, tls: Path, name: str, **kwargs) -> None:
        cert_path, key_path = self.ca.issue(f"dovecot-{name}", **kwargs)
        shutil.copy(cert_path, tls / f"{name}.crt")
        shutil.copy(key_path, tls / f"{name}.key")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        if self._tokeninfo is not None:
            self._tokeninfo.shutdown()
            self._tokeninfo.server_close()
        shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        log = self.base / "log" / "dovecot.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        if self.process is not None and self.process.stderr is not None and self.process.poll() is not None:
            text += self.process.stderr.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    # -- users
    def add_user(self, name: str | None = None, password: str | None = None, *, refuse_login: str = "") -> MailUser:
        """A new mailbox. With `refuse_login`, a correct password is answered NO with that text, the way
        Gmail answers "[ALERT] Application-specific password required" or "not enabled for IMAP use"."""
        user = MailUser(name=name or "u" + secrets.token_hex(5), password=password or secrets.token_urlsafe(12))
        path = self.users_path / user.name
        if path.exists():
            raise ValueError(f"mail user {user.name} exists already")
        # passwd-file extra fields are space-separated: a tab keeps the words of the reason together.
        extra = f"nologin reason={refuse_login.replace(' ', chr(9))}" if refuse_login else ""
        path.write_text(f"{user.name}:{{PLAIN}}{user.password}::::::{extra}\n")
        self.registry.add(user)
        return user

    # -- admin helpers (act on the server directly, not through the code under test)
    def doveadm(self, command: str, *args: str, user: MailUser | str | None = None, stdin: bytes | None = None) -> str:
        """Run `doveadm <command> [-u user] args...` against this server; `command` may be two words."""
        argv = [DOVEADM, "-c", str(self.conf_path)]
        if command.startswith("-f "):  # output formatter, a global option
            argv += command.split()[:2]
            command = command.split(" ", 2)[2]
        argv += command.split()
        if user is not None:
            argv += ["-u", user.name if isinstance(user, MailUser) else user]
        argv += list(args)
        result = subprocess.run(argv, input=stdin, capture_output=True, timeout=30, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[3:])} failed: {result.stderr.decode(errors='replace')}")
        return result.stdout.decode(errors="replace")

    def create_folder(self, user: MailUser, folder: str) -> None:
        self.doveadm("mailbox create", "-s", folder, user=user)

    def uids(self, user: MailUser, folder: str = "INBOX") -> list[int]:
        out = self.doveadm("search", "mailbox", folder, "all", user=user)
        return sorted(int(line.split()[1]) for line in out.splitlines() if line.strip())

    def append(
        self,
        user: MailUser,
        raw: bytes,
        folder: str = "INBOX",
        *,
        flags: tuple[str, ...] = (),
        internaldate: dt.datetime | None = None,
    ) -> int:
        """Store one message and return its UID."""
        if internaldate is None:
            self.doveadm("save", "-m", folder, user=user, stdin=raw)
            uid = max(self.uids(user, folder))
            if flags:
                self.add_flags(user, [uid], flags, folder)
            return uid
        return self.deliver_many(user, [(raw, flags, internaldate)], folder)[0]

    def deliver_many(
        self,
        user: MailUser,
        messages: list[tuple[bytes, tuple[str, ...], dt.datetime | None]],
        folder: str = "INBOX",
    ) -> list[int]:
        """Bulk load: write maildir files (flags, date as mtime) then let Dovecot index them.

        ~100x faster than one APPEND per message (DESIGN.md). Returns the new UIDs in order.
        """
        before = set(self.uids(user, folder))
        cur = self._maildir(user, folder) / "cur"
        letters = {"\\Seen": "S", "\\Flagged": "F", "\\Answered": "R", "\\Draft": "D", "\\Deleted": "T"}
        uid, gid = pwd.getpwnam(MAIL_OS_USER).pw_uid, grp.getgrnam(MAIL_OS_USER).gr_gid
        stamp = int(time.time())
        for index, (raw, flags, date) in enumerate(messages):
            info = "".join(sorted(letters[f] for f in flags if f in letters))
            path = cur / f"{stamp}.M{index}P{os.getpid()}R{secrets.token_hex(4)}.test:2,{info}"
            path.write_bytes(raw)
            os.chown(path, uid, gid)
            if date is not None:
                os.utime(path, (date.timestamp(), date.timestamp()))
        self.doveadm("force-resync", folder, user=user)
        return sorted(set(self.uids(user, folder)) - before)

    def _maildir(self, user: MailUser, folder: str) -> Path:
        """The on-disk maildir of a folder (Maildir++: INBOX is the root, others are '.Name.Sub')."""
        root = self.mail_root / user.name
        if folder.upper() == "INBOX":
            path = root
        else:
            path = root / ("." + self.doveadm("mailbox mutf7", folder).strip().replace("/", "."))
        if not (path / "cur").exists():
            # Opening the folder makes Dovecot create INBOX and the auto (special-use) folders on disk.
            self.doveadm("mailbox status", "messages", folder, user=user)
        return path

    def flags(self, user: MailUser, uid: int, folder: str = "INBOX") -> set[str]:
        out = self.doveadm("fetch", "flags", "mailbox", folder, "uid", str(uid), user=user)
        return set(out.partition(":")[2].split()) - {"\\Recent"}  # \Recent depends on the session

    def add_flags(self, user: MailUser, uids: list[int], flags: tuple[str, ...], folder: str = "INBOX") -> None:
        self.doveadm("flags add", " ".join(flags), "mailbox", folder, "uid", _uid_set(uids), user=user)

    def remove_flags(self, user: MailUser, uids: list[int], flags: tuple[str, ...], folder: str = "INBOX") -> None:
        self.doveadm("flags remove", " ".join(flags), "mailbox", folder, "uid", _uid_set(uids), user=user)

    def move(self, user: MailUser, uids: list[int], destination: str, folder: str = "INBOX") -> None:
        self.doveadm("move", destination, "mailbox", folder, "uid", _uid_set(uids), user=user)

    def copy(self, user: MailUser, uids: list[int], destination: str, folder: str = "INBOX") -> None:
        self.doveadm("copy", destination, "mailbox", folder, "uid", _uid_set(uids), user=user)

    def rename_folder(self, user: MailUser, folder: str, new_name: str) -> None:
        self.doveadm("mailbox rename", folder, new_name, user=user)

    def delete_folder(self, user: MailUser, folder: str) -> None:
        """Delete a folder and every message in it."""
        self.doveadm("mailbox delete", folder, user=user)

    def expunge(self, user: MailUser, uids: list[int], folder: str = "INBOX") -> None:
        self.doveadm("expunge", "mailbox", folder, "uid", _uid_set(uids), user=user)

    def folder_status(self, user: MailUser, folder: str = "INBOX") -> dict[str, int]:
        out = self.doveadm("-f tab mailbox status", "messages uidnext uidvalidity highestmodseq", folder, user=user)
        header, row = out.splitlines()[:2]
        return {key: int(value) for key, value in zip(header.split("\t")[1:], row.split("\t")[1:], strict=True)}

    def reset_uidvalidity(self, user: MailUser, folder: str = "INBOX") -> int:
        """Make the server forget the folder's UIDs: new UIDVALIDITY, messages renumbered. Returns it."""
        old = self.folder_status(user, folder)["uidvalidity"]
        path = self._maildir(user, folder)
        for leftover in ("dovecot-uidlist", "dovecot.index", "dovecot.index.log", "dovecot.index.cache"):
            (path / leftover).unlink(missing_ok=True)
        # UIDVALIDITY is a timestamp: make sure the new one differs from the old.
        while int(time.time()) <= old:
            time.sleep(0.05)
        self.doveadm("force-resync", folder, user=user)
        return self.folder_status(user, folder)["uidvalidity"]


def _free_ports(count: int) -> list[int]:
    """Distinct free ports (held open together so the kernel cannot hand out the same one twice)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((LOOPBACK, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _uid_set(uids: list[int]) -> str:
    return ",".join(str(uid) for uid in uids)


def _ensure_mail_os_user() -> None:
    try:
        pwd.getpwnam(MAIL_OS_USER)
    except KeyError:
        subprocess.run(["useradd", "-r", "-M", "-s", "/usr/sbin/nologin", MAIL_OS_USER], check=True)


def make_message(
    subject: str = "Hello",
    *,
    sender: str = "Ann Example <ann@example.org>",
    to: str = "me@mail.test",
    body: str = "Hi there.\n",
    message_id: str | None = None,
    date: dt.datetime | None = None,
) -> bytes:
    """A small RFC 5322 message as bytes (CRLF line ends)."""
    date = date or dt.datetime.now(dt.UTC)
    message_id = message_id or email.utils.make_msgid(domain="example.org")
    lines = [
        f"From: {sender}",
        f"To: {to}",
        f"Subject: {subject}",
        f"Date: {email.utils.format_datetime(date)}",
        f"Message-ID: {message_id}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "",
        body,
    ]
    return "\r\n".join(lines).encode()


# --------------------------------------------------------------------------------------------------
# SMTP (aiosmtpd)


@dataclass
class ReceivedMessage:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    login: str


class _SmtpHandler:
    def __init__(self, server: SmtpServer):
        self.server = server

    async def handle_RCPT(self, smtp, session, envelope, address, rcpt_options):
        if address.lower() in self.server.refused_recipients:
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, smtp, session, envelope):
        # login_data is set by the built-in mechanisms only; XOAUTH2 (auth_XOAUTH2 below) leaves its login in auth_data.
        data = session.login_data if session.login_data is not None else session.auth_data
        login = data.decode() if isinstance(data, bytes) else str(data)
        received = ReceivedMessage(
            mail_from=envelope.mail_from,
            rcpt_tos=list(envelope.rcpt_tos),
            data=envelope.original_content or envelope.content,
            login=login,
        )
        self.server.messages.append(received)
        if self.server.on_data is not None:
            # A test's hook: file a Sent copy like Gmail does, or kill the sending worker before it hears "250".
            self.server.on_data(received)
        return "250 2.0.0 Message accepted for delivery"

    async def auth_XOAUTH2(self, smtp, args):
        from aiosmtpd.smtp import MISSING, AuthResult

        if len(args) > 1:
            blob = base64.b64decode(args[1])
        else:
            blob = await smtp.challenge_auth("", encode_to_b64=False)
            if blob is MISSING:
                return AuthResult(success=False)
        fields = dict(part.split("=", 1) for part in blob.decode(errors="replace").split("\x01") if "=" in part)
        login = fields.get("user", "")
        token = fields.get("auth", "").removeprefix("Bearer ")
        if self.server.registry.check_token(login, token):
            return AuthResult(success=True, auth_data=login.encode())
        return AuthResult(success=False, handled=False)


class SmtpServer:
    """aiosmtpd with AUTH required; STARTTLS required (implicit=False) or implicit TLS (implicit=True)."""

    host = LOOPBACK

    def __init__(self, ca: TestCA, registry: UserRegistry, *, implicit_tls: bool):
        self.ca = ca
        self.registry = registry
        self.implicit_tls = implicit_tls
        self.messages: list[ReceivedMessage] = []
        # Test hooks: addresses refused at RCPT (lower case), and a callback run for each message at DATA.
        self.refused_recipients: set[str] = set()
        self.on_data: Callable[[ReceivedMessage], None] | None = None
        self.port = 0
        self._controller = None

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult, LoginPassword

        if isinstance(auth_data, LoginPassword):
            login = auth_data.login.decode(errors="replace")
            if self.registry.check_password(login, auth_data.password.decode(errors="replace")):
                return AuthResult(success=True, auth_data=auth_data)
        return AuthResult(success=False, handled=False)

    def start(self) -> None:
        from aiosmtpd.controller import Controller

        context = self.ca.server_context("smtps" if self.implicit_tls else "smtp")
        self.port = _free_ports(1)[0]  # aiosmtpd cannot bind port 0 (DESIGN.md)
        kwargs = {"authenticator": self._authenticate, "auth_required": True, "hostname": LOOPBACK, "port": self.port}
        if self.implicit_tls:
            # aiosmtpd only counts STARTTLS as TLS for AUTH; this whole connection is TLS already.
            kwargs.update(ssl_context=context, auth_require_tls=False)
        else:
            kwargs.update(tls_context=context, require_starttls=True)
        self._controller = Controller(_SmtpHandler(self), server_hostname="smtp.mail.test", **kwargs)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()


# --------------------------------------------------------------------------------------------------
# Misbehaving servers


class LineServer:
    """Accepts TCP connections on a free port and sends `greeting` (or nothing when None).

    With `imap_capabilities`, it also answers CAPABILITY (with those) and LOGOUT, and BAD to anything else:
    enough for an IMAP server that lacks something (e.g. STARTTLS)."""

    host = LOOPBACK

    def __init__(self, greeting: bytes | None, *, imap_capabilities: str | None = None):
        self.greeting = greeting
        self.imap_capabilities = imap_capabilities
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((LOOPBACK, 0))
        self._sock.listen(8)
        self.port = self._sock.getsockname()[1]
        self._connections: list[socket.socket] = []
        self._closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._connections.append(conn)  # kept open until close(): a silent server stays silent
            if self.greeting is not None:
                with contextlib.suppress(OSError):
                    conn.sendall(self.greeting)
            if self.imap_capabilities is not None:
                threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn.makefile("rb") as lines:
            for line in lines:
                tag, _, command = line.decode(errors="replace").strip().partition(" ")
                command = command.upper()
                if command == "CAPABILITY":
                    conn.sendall(f"* CAPABILITY {self.imap_capabilities}\r\n{tag} OK done\r\n".encode())
                elif command == "LOGOUT":
                    conn.sendall(f"* BYE\r\n{tag} OK bye\r\n".encode())
                    return
                else:
                    conn.sendall(f"{tag} BAD not here\r\n".encode())

    def close(self) -> None:
        self._closed.set()
        self._sock.close()
        for conn in self._connections:
            with contextlib.suppress(OSError):
                conn.close()


# --------------------------------------------------------------------------------------------------
# Fixtures
