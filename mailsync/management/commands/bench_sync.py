"""`manage.py bench_sync [--messages N]`: the sync engine's speed against its floor (prints figures).

1. Starts a private Dovecot, loads N generated messages (devtools.mailgen: realistic sizes and MIME
   mixes, threads, attachments, legacy charsets) straight into its maildir.
2. Floor: fetch every message over IMAP (imapclient, BODY.PEEK[] in batches of 200) and parse it with
   the stdlib (email.policy.default: bodies and attachments decoded), no database.
3. Full sync: the product's initial sync of the same mailbox into the configured database (use
   PostgreSQL: `make bench-sync`), parsing, threading, attachments to storage, linking, everything.
4. A no-change incremental pass on that mailbox, with connect + login and on an open connection.

Target (issue): full sync <= 1.5x the floor's time; a no-change pass < 50 ms.
"""

import email
import email.policy
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from imapclient import IMAPClient

from crm.celery import app as celery_app
from crm.models import User
from devtools import mailgen
from devtools.mailservers import DovecotServer, TestCA, UserRegistry
from mailsync.connection.config import account_imap_config
from mailsync.models import EmailAccount, EmailMessage
from mailsync.protocols import imap
from mailsync.sync import engine


class Command(BaseCommand):
    help = "Benchmark the initial sync against fetch+parse with no database, and a no-change pass."

    def add_arguments(self, parser):
        parser.add_argument("--messages", type=int, default=20_000)
        parser.add_argument("--keep", action="store_true", help="Keep the benchmark account and its mail")

    def handle(self, *args, messages: int, keep: bool, **options):
        if messages < 1:
            raise CommandError("--messages must be at least 1")
        if connection.vendor != "postgresql":
            self.stderr.write("Warning: not PostgreSQL; figures will not mean much. Use `make bench-sync`.")
        # Linking runs inline so that its cost is inside the measured sync.
        celery_app.conf.task_always_eager = True
        workdir = Path(tempfile.mkdtemp(prefix="bench-sync-"))
        (workdir / "ca").mkdir()
        server = DovecotServer(TestCA(workdir / "ca"), UserRegistry())
        server.start()
        try:
            self._run(server, messages, keep)
        finally:
            server.stop()
            shutil.rmtree(workdir, ignore_errors=True)

    def _run(self, server: DovecotServer, count: int, keep: bool) -> None:
        mail_user = server.add_user()
        started = time.perf_counter()
        generated = list(mailgen.generate(count, owner=mail_user.address, days=2))
        size = sum(len(item.raw) for item in generated)
        server.deliver_many(mail_user, [(item.raw, (), item.date) for item in generated])
        del generated
        self._say(f"loaded {count} messages ({size / 1e6:.0f} MB) into Dovecot in {time.perf_counter() - started:.1f}s")

        floor = self._floor(server, mail_user)
        self._say(f"floor (IMAP fetch + stdlib parse, no database): {floor:.1f}s = {count / floor:,.0f} msg/s")

        user, _ = User.objects.get_or_create(email="bench-sync@example.invalid")
        account = EmailAccount(
            user=user,
            email_address=mail_user.address,
            username=mail_user.username,
            imap_host=server.host,
            imap_port=server.imaps_port,
            imap_security="ssl",
            trusted_ca_pem=server.ca_pem,
            state=EmailAccount.State.INITIAL_SYNC,
        )
        account.set_secret(mail_user.password)
        account.save()
        try:
            started = time.perf_counter()
            runs = 0
            while True:
                report = engine.sync_account(account.pk, time_budget=3600)
                runs += 1
                if report.error is not None:
                    raise CommandError(f"sync failed: {report.error}")
                if not report.more_work:
                    break
            full = time.perf_counter() - started
            stored = EmailMessage.objects.filter(account=account).count()
            self._say(f"full sync into {connection.vendor}: {full:.1f}s = {count / full:,.0f} msg/s ({stored} stored)")
            ratio = full / floor
            verdict = "OK" if ratio <= 1.5 else "ABOVE TARGET"
            self._say(f"full sync / floor = {ratio:.2f}x (target <= 1.5x): {verdict}")

            cold = self._timed(lambda: engine.sync_account(account.pk), 15)
            self._say(f"no-change pass, connect + login: median {cold * 1000:.1f} ms (target < 50 ms)")
            with imap.connect(account_imap_config(account)) as session:
                warm = self._timed(lambda: engine.sync_account(account.pk, session=session), 15)
            self._say(f"no-change pass, open connection: median {warm * 1000:.1f} ms")
        finally:
            if not keep:
                account.delete()

    def _floor(self, server: DovecotServer, mail_user) -> float:
        started = time.perf_counter()
        # Same transport as the sync: implicit TLS, the server's CA trusted.
        context = imap.tls_context(server.ca_pem)
        client = IMAPClient(server.host, port=server.imaps_port, ssl=True, ssl_context=context, timeout=60)
        client.login(mail_user.username, mail_user.password)
        client.select_folder("INBOX", readonly=True)
        uids = sorted(client.search("ALL"))
        for start in range(0, len(uids), 200):
            response = client.fetch(uids[start : start + 200], ["BODY.PEEK[]", "FLAGS", "INTERNALDATE"])
            for data in response.values():
                message = email.message_from_bytes(data[b"BODY[]"], policy=email.policy.default)
                body = message.get_body(preferencelist=("html", "plain"))
                if body is not None:
                    body.get_content()
                for part in message.iter_attachments():
                    part.get_content()
        client.logout()
        return time.perf_counter() - started

    @staticmethod
    def _timed(action, repeat: int) -> float:
        action()  # warm-up
        samples = []
        for _ in range(repeat):
            started = time.perf_counter()
            action()
            samples.append(time.perf_counter() - started)
        return statistics.median(samples)

    def _say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()
