"""The built-in Smart BCC receiver for self-hosted set-ups: an SMTP server (aiosmtpd) that is the MX of
MAILSYNC_SMART_BCC_DOMAIN.

    MAILSYNC_SMART_BCC_DOMAIN=bcc.example.com  python manage.py smart_bcc_server
    bcc.example.com.  MX 10 crm.example.com.          (DNS: the host running it, port 25)

- STARTTLS with MAILSYNC_SMART_BCC_TLS_CERT / _KEY (PEM); plain SMTP is still accepted from servers that
  do not offer TLS unless MAILSYNC_SMART_BCC_REQUIRE_TLS is on (most senders of mail between servers
  use TLS when offered, and refusing the others would lose their mail).
- SIZE is advertised (MAILSYNC_SMART_BCC_MAX_BYTES) and larger messages are refused (552).
- Unknown recipients are refused at RCPT time (550 5.1.1), so nothing is accepted only to be dropped,
  and so are retired addresses ("new address" means the old one stops working).
- SPF (of the connecting IP for the envelope sender) and DKIM are checked here (authentication.py).
- A message is answered 250 only once it is filed or listed under "Not filed" (committed); a database
  failure answers 451 so the sending server tries again later: nothing is lost.

One asyncio loop holds every connection; filing (ORM, DNS) runs in a small bounded thread pool, so
neither connections nor threads grow with the number of users.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiosmtpd.smtp import SMTP, Envelope, Session
from django.conf import settings
from django.db import close_old_connections, connections

from crm.addresses import domain_of
from mailsync.sync.parsing import parse_message

from . import selectors
from .authentication import AuthResults, Resolver, check_smtp_delivery
from .filing import InboundMail, file_message

logger = logging.getLogger(__name__)

MAX_RECIPIENTS = 50
WORKERS = 4


@dataclass(frozen=True)
class ReceiverConfig:
    max_bytes: int
    tls_context: ssl.SSLContext | None
    require_tls: bool
    hostname: str | None
    check_auth: bool = True

    @classmethod
    def from_settings(cls) -> ReceiverConfig:
        cert, key = settings.MAILSYNC_SMART_BCC_TLS_CERT, settings.MAILSYNC_SMART_BCC_TLS_KEY
        context = tls_context(cert, key) if cert and key else None
        return cls(
            max_bytes=settings.MAILSYNC_SMART_BCC_MAX_BYTES,
            tls_context=context,
            require_tls=settings.MAILSYNC_SMART_BCC_REQUIRE_TLS,
            hostname=settings.MAILSYNC_SMART_BCC_SMTP_HOSTNAME or None,
            check_auth=settings.MAILSYNC_SMART_BCC_CHECK_AUTH,
        )


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


def _in_thread(function, *args, **kwargs):
    """Run ORM work in a pool thread with a usable connection (they go stale between messages)."""
    close_old_connections()
    try:
        return function(*args, **kwargs)
    finally:
        close_old_connections()


def _recipient_refusal(address: str) -> str | None:
    """None when mail for `address` is accepted, else the SMTP reply refusing it."""
    smart_bcc = selectors.address_for_recipient(address)
    if smart_bcc is None:
        return "550 5.1.1 No such Smart BCC address here"
    if smart_bcc.retired_at is not None:
        return "550 5.1.1 This Smart BCC address is no longer in use; its owner has a new one"
    return None


def _receive(raw: bytes, recipients: list[str], envelope_sender: str, peer_ip: str, helo: str, config, resolver):
    auth = AuthResults()
    if config.check_auth:
        from_domain = domain_of(parse_message(raw).from_address)
        auth = check_smtp_delivery(
            raw=raw,
            peer_ip=peer_ip,
            helo=helo,
            envelope_sender=envelope_sender,
            from_domain=from_domain,
            resolver=resolver,
        )
    for recipient in recipients:
        file_message(
            InboundMail(raw=raw, recipient=recipient, channel="smtp", envelope_sender=envelope_sender, auth=auth)
        )


class SmartBccHandler:
    def __init__(self, config: ReceiverConfig, *, resolver: Resolver | None = None, workers: int = WORKERS):
        self.config = config
        self.resolver = resolver
        self.workers = workers
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="smart-bcc")

    async def _run(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, _in_thread, function, *args)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options):
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        try:
            refusal = await self._run(_recipient_refusal, address)
        except Exception:
            logger.exception("Smart BCC receiver: recipient lookup failed")
            return "451 4.3.0 Temporary failure, try again later"
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope):
        raw = envelope.original_content or b""
        peer_ip = str(session.peer[0]) if session.peer else ""
        try:
            await self._run(
                _receive,
                raw,
                list(envelope.rcpt_tos),
                envelope.mail_from or "",
                peer_ip,
                session.host_name or "",
                self.config,
                self.resolver,
            )
        except Exception:
            logger.exception("Smart BCC receiver: filing failed; the sender will retry")
            return "451 4.3.0 Temporary failure, try again later"
        return "250 2.0.0 Message accepted"

    def close(self) -> None:
        """Stop the pool; each of its threads first closes its database connection (kept between
        messages, CONN_MAX_AGE), which would otherwise stay open after the threads are gone."""
        barrier = threading.Barrier(self.workers, timeout=5)

        def close_connection() -> None:
            connections.close_all()
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait()  # one job per thread: none takes a second one while the others run

        for _ in range(self.workers):
            self.executor.submit(close_connection)
        self.executor.shutdown(wait=True)


def smtp_factory(handler: SmartBccHandler):
    """The aiosmtpd SMTP protocol for one connection."""
    config = handler.config

    def factory() -> SMTP:
        return SMTP(
            handler,
            hostname=config.hostname,
            data_size_limit=config.max_bytes,
            enable_SMTPUTF8=True,
            decode_data=False,
            tls_context=config.tls_context,
            require_starttls=bool(config.tls_context) and config.require_tls,
            ident="CRM Smart BCC",
        )

    return factory


def serve(host: str, port: int, config: ReceiverConfig, *, ready=None) -> None:
    """Run the receiver until SIGINT / SIGTERM (the management command)."""
    import signal

    async def main() -> None:
        handler = SmartBccHandler(config)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(smtp_factory(handler), host=host, port=port)
        stop = asyncio.Event()
        for name in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(name, stop.set)
        if ready:
            ready(server)
        try:
            await stop.wait()
        finally:
            server.close()
            await server.wait_closed()
            handler.close()

    asyncio.run(main())
