"""The built-in Smart BCC receiver (aiosmtpd), driven by smtplib over STARTTLS like a sending server.

DNS is the one thing replaced (there is none here): SPF records and DKIM keys come from a table.
The last tests run the real `manage.py smart_bcc_server` command as a process.
"""

import asyncio
import base64
import os
import signal
import smtplib
import subprocess
import sys
import threading
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.db import connection

from devtools.mailservers import _free_ports
from mailsync.inbound import selectors, services, smtp_server
from mailsync.inbound.authentication import DnsTemporaryError
from mailsync.inbound.smtp_server import ReceiverConfig, SmartBccHandler, smtp_factory, tls_context
from mailsync.models import EmailMessage, SmartBccDelivery
from tests.smart_bcc_support import DOMAIN, sent_copy

pytestmark = [pytest.mark.smtp, pytest.mark.django_db(transaction=True)]
ROOT = Path(__file__).resolve().parents[1]
Reason = SmartBccDelivery.Reason


class FakeDns:
    def __init__(self, records: dict[tuple[str, str], list] | None = None):
        self.records = dict(records or {})
        self.temporary: set[str] = set()

    def __call__(self, name: str, rdtype: str) -> list:
        if name in self.temporary:
            raise DnsTemporaryError("timeout")
        return list(self.records.get((name, rdtype), []))


class Receiver:
    """The receiver's SMTP protocol on a loop of its own, in a thread (as the command runs it)."""

    def __init__(self, config: ReceiverConfig, resolver):
        self.port = _free_ports(1)[0]
        self.handler = SmartBccHandler(config, resolver=resolver)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            self.loop.create_server(smtp_factory(self.handler), host="127.0.0.1", port=self.port)
        )
        self._ready.set()
        self.loop.run_forever()
        server.close()
        self.loop.run_until_complete(server.wait_closed())

    def start(self):
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.handler.close()

    def connect(self, test_ca, *, starttls: bool = True) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", self.port, local_hostname="mail.company.test", timeout=30)
        client.ehlo()
        if starttls:
            client.starttls(context=test_ca.client_context())
            client.ehlo()
        return client


@pytest.fixture
def dns():
    return FakeDns({("company.test", "TXT"): ["v=spf1 ip4:192.0.2.0/24 -all"]})


@pytest.fixture
def receiver_config(test_ca):
    cert, key = test_ca.issue("smart-bcc-mx", dns_names=("localhost",))
    return ReceiverConfig(
        max_bytes=200_000, tls_context=tls_context(str(cert), str(key)), require_tls=False, hostname="mx.crm.test"
    )


@pytest.fixture
def receiver(receiver_config, dns):
    server = Receiver(receiver_config, dns).start()
    yield server
    server.stop()


def test_mail_sent_over_starttls_is_filed(alice, alice_bcc, receiver, test_ca, dns):
    dns.records[("company.test", "TXT")] = ["v=spf1 ip4:127.0.0.1 -all"]  # the sending server is allowed
    client = receiver.connect(test_ca, starttls=False)
    assert client.has_extn("starttls")
    assert client.esmtp_features["size"] == "200000"
    client.starttls(context=test_ca.client_context())
    client.ehlo()
    raw = sent_copy(message_id="<smtp-1@company.test>")
    assert client.sendmail("alice@company.test", [alice_bcc], raw) == {}
    client.quit()
    message = EmailMessage.objects.get(message_id="smtp-1@company.test")
    assert message.thread.owner == alice and message.direction == EmailMessage.Direction.SENT
    assert message.attachments.get().filename == "offer.pdf"
    delivery = SmartBccDelivery.objects.get(message=message)
    assert (delivery.channel, delivery.spf, delivery.envelope_sender) == ("smtp", "pass", "alice@company.test")


def test_unknown_and_retired_recipients_are_refused_at_rcpt(alice, alice_bcc, receiver, test_ca):
    client = receiver.connect(test_ca)
    client.mail("alice@company.test")
    code, text = client.rcpt(f"u-nosuchaddr@{DOMAIN}")
    assert code == 550 and b"No such Smart BCC address" in text
    assert client.rcpt(f"someone@{DOMAIN.replace('bcc', 'other')}")[0] == 550

    services.replace_address(user=alice)
    code, text = client.rcpt(alice_bcc)
    assert code == 550 and b"no longer in use" in text
    client.quit()
    assert not SmartBccDelivery.objects.exists()


def test_a_message_over_the_size_limit_is_refused(alice, alice_bcc, receiver, test_ca):
    client = receiver.connect(test_ca)
    big = sent_copy(attachment=os.urandom(250_000))
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:  # smtplib announces SIZE in MAIL FROM
        client.sendmail("alice@company.test", [alice_bcc], big)
    assert refused.value.smtp_code == 552
    client.quit()
    assert not EmailMessage.objects.exists()


def test_a_forged_from_failing_spf_without_dkim_is_not_filed(alice, alice_bcc, receiver, test_ca):
    client = receiver.connect(test_ca)
    # 127.0.0.1 is not in company.test's SPF record, and nothing signs the message
    client.sendmail("alice@company.test", [alice_bcc], sent_copy(subject="Wire the money"))
    client.quit()
    delivery = SmartBccDelivery.objects.get(user=alice)
    assert delivery.reason == Reason.FAILED_AUTHENTICATION
    assert (delivery.spf, delivery.dkim, delivery.subject) == ("fail", "fail", "Wire the money")
    assert not EmailMessage.objects.exists()


def test_a_valid_dkim_signature_files_mail_whose_spf_fails(alice, alice_bcc, receiver, test_ca, dns):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    dns.records[("s1._domainkey.company.test", "TXT")] = [f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"]
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    raw = sent_copy(message_id="<signed@company.test>")
    signed = (
        dkim.sign(
            raw,
            b"s1",
            b"company.test",
            private_pem,
            include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
        )
        + raw
    )

    client = receiver.connect(test_ca)
    client.sendmail("bounces@relay.example", [alice_bcc], signed)  # a relay's envelope: SPF is not for company.test
    client.quit()
    delivery = SmartBccDelivery.objects.get(user=alice)
    assert delivery.status == SmartBccDelivery.Status.FILED and delivery.dkim == "pass"
    assert EmailMessage.objects.get(message_id="signed@company.test")


def test_dns_trouble_never_refuses_mail_it_could_not_check(alice, alice_bcc, receiver, test_ca, dns):
    dns.temporary.add("company.test")
    client = receiver.connect(test_ca)
    client.sendmail("alice@company.test", [alice_bcc], sent_copy(message_id="<dns-down@company.test>"))
    client.quit()
    delivery = SmartBccDelivery.objects.get(user=alice)
    assert delivery.status == SmartBccDelivery.Status.FILED and delivery.spf == ""


def test_a_failure_while_filing_answers_451_so_the_sender_retries(alice, alice_bcc, receiver, test_ca, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("database is down")

    monkeypatch.setattr(smtp_server, "file_message", broken)
    client = receiver.connect(test_ca)
    with pytest.raises(smtplib.SMTPDataError) as error:
        client.sendmail("alice@company.test", [alice_bcc], sent_copy())
    assert error.value.smtp_code == 451
    client.quit()


def test_require_tls_refuses_mail_before_starttls(alice, alice_bcc, receiver_config, dns, test_ca):
    strict = Receiver(ReceiverConfig(**{**receiver_config.__dict__, "require_tls": True}), dns).start()
    try:
        client = strict.connect(test_ca, starttls=False)
        code, _text = client.mail("alice@company.test")
        assert code == 530
        client.quit()
    finally:
        strict.stop()


# --- the real command, as a process ---------------------------------------------------------------------


def _command_env(test_ca, port: int, **extra) -> dict:
    cert, key = test_ca.issue("smart-bcc-command", dns_names=("localhost",))
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
        "MAILSYNC_SMART_BCC_DOMAIN": DOMAIN,
        "MAILSYNC_SMART_BCC_TLS_CERT": str(cert),
        "MAILSYNC_SMART_BCC_TLS_KEY": str(key),
        "MAILSYNC_SMART_BCC_CHECK_AUTH": "0",  # no DNS on this machine
        "MAILSYNC_SMART_BCC_MAX_BYTES": "500000",
        "CELERY_TASK_ALWAYS_EAGER": "1",
    }
    env.update(extra)
    return env


def test_the_smart_bcc_server_command_receives_and_files(alice, alice_bcc, test_ca):
    port = _free_ports(1)[0]
    process = subprocess.Popen(
        [sys.executable, "manage.py", "smart_bcc_server", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=_command_env(test_ca, port),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # System check warnings (e.g. no MAILSYNC_ENCRYPTION_KEYS outside DEBUG) may come first.
        seen = []
        for line in process.stdout:
            seen.append(line)
            if "listening on 127.0.0.1" in line or len(seen) > 50:
                break
        assert "listening on 127.0.0.1" in seen[-1], "".join(seen)
        client = smtplib.SMTP("127.0.0.1", port, timeout=30)
        client.starttls(context=test_ca.client_context())
        assert client.sendmail("alice@company.test", [alice_bcc], sent_copy(message_id="<cmd@company.test>")) == {}
        client.mail("alice@company.test")
        assert client.rcpt(f"u-nosuchaddr@{DOMAIN}")[0] == 550
        client.quit()
        assert EmailMessage.objects.get(message_id="cmd@company.test").thread.owner == alice
        assert selectors.filed_count(alice) == 1
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output


def test_the_command_explains_missing_settings(test_ca):
    port = _free_ports(1)[0]
    env = _command_env(test_ca, port, MAILSYNC_SMART_BCC_TLS_CERT="")
    result = subprocess.run(
        [sys.executable, "manage.py", "smart_bcc_server", "--port", str(port)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Set MAILSYNC_SMART_BCC_TLS_CERT and MAILSYNC_SMART_BCC_TLS_KEY" in result.stderr
