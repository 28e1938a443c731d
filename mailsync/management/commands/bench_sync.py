"""`manage.py bench_sync [--messages N]`: the sync engine's speed against its floor (prints figures).

1. Starts a private Dovecot, loads N generated messages (devtools.mailgen: realistic sizes and MIME
   mixes, threads, attachments, legacy charsets) straight into its maildir.
2. Floors, no database: fetch only (every message over IMAP with the product's FETCH reader, nothing
   parsed: what the server and the network allow), and fetch + parse as a simple client would do it
   (imapclient, BODY.PEEK[] in batches of 200, the stdlib's email.policy.default decoding bodies and
   attachments).
3. Full sync: the product's initial sync of the same mailbox into the configured database (use
   PostgreSQL: `make bench-sync`), parsing, threading, attachments to storage, list rows, search
   documents, linking, everything. It runs in a child process (this command again, `--child-sync`),
   so that its peak RSS is its own and not that of the generated mail held here.
4. A no-change incremental pass on that mailbox, with connect + login and on an open connection.

Targets (issue 18): the full sync at 2,000 msg/s or more, within 2x of the fetch-only floor, with a
peak RSS that does not grow with the mailbox; a no-change pass < 50 ms.
"""

import argparse
import email
import email.policy
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
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
        parser.add_argument("--child-sync", type=int, default=None, help=argparse.SUPPRESS)

    def handle(self, *args, messages: int, keep: bool, child_sync: int | None = None, **options):
        if child_sync is not None:
            self._child_sync(child_sync)
            return
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

        fetch_floor = self._fetch_floor(server, mail_user)
        self._say(f"floor, fetch only (no parsing, no database): {fetch_floor:.2f}s = {count / fetch_floor:,.0f} msg/s")
        floor = self._floor(server, mail_user)
        self._say(f"floor, imapclient fetch + stdlib parse (no database): {floor:.1f}s = {count / floor:,.0f} msg/s")

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
            child = self._run_child_sync(account.pk)
            full = child["seconds"]
            stored = EmailMessage.objects.filter(account=account).count()
            rate = count / full
            verdict = "OK" if rate >= 2000 else "BELOW TARGET"
            self._say(
                f"full sync into {connection.vendor}: {full:.2f}s = {rate:,.0f} msg/s ({stored} stored; "
                f"target >= 2,000 msg/s): {verdict}"
            )
            ratio = full / fetch_floor
            verdict = "OK" if ratio <= 2 else "ABOVE TARGET"
            self._say(f"full sync / fetch-only floor = {ratio:.2f}x (target <= 2x): {verdict}")
            self._say(f"full sync / fetch + parse floor = {full / floor:.2f}x")
            self._say(
                f"peak RSS of the sync: {child['rss_kb'] / 1024:,.0f} MB (its process), "
                f"{child['workers_rss_kb'] / 1024:,.0f} MB (largest parse worker)"
            )

            cold = self._timed(lambda: engine.sync_account(account.pk), 15)
            self._say(f"no-change pass, connect + login: median {cold * 1000:.1f} ms (target < 50 ms)")
            with imap.connect(account_imap_config(account)) as session:
                warm = self._timed(lambda: engine.sync_account(account.pk, session=session), 15)
            self._say(f"no-change pass, open connection: median {warm * 1000:.1f} ms")
        finally:
            if not keep:
                account.delete()

    def _run_child_sync(self, account_id: int) -> dict:
        """The initial sync in a fresh process (same settings and database): its time and peak RSS."""
        command = [sys.executable, sys.argv[0], "bench_sync", "--child-sync", str(account_id)]
        finished = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(), check=False)
        lines = [line for line in finished.stdout.splitlines() if line.startswith("{")]
        if finished.returncode != 0 or not lines:
            raise CommandError(f"the sync process failed:\n{finished.stdout}\n{finished.stderr[-3000:]}")
        return json.loads(lines[-1])

    def _child_sync(self, account_id: int) -> None:
        """Child side of _run_child_sync: sync until done, print one JSON line."""
        celery_app.conf.task_always_eager = True
        workers_peak = _ChildrenPeak()
        workers_peak.start()
        started = time.perf_counter()
        runs = 0
        while True:
            report = engine.sync_account(account_id, time_budget=3600)
            runs += 1
            if report.error is not None:
                raise CommandError(f"sync failed: {report.error}")
            if not report.more_work:
                break
        seconds = time.perf_counter() - started
        result = {
            "seconds": seconds,
            "runs": runs,
            "rss_kb": _peak_rss_kb(os.getpid()),
            "workers_rss_kb": workers_peak.peak_kb,
        }
        self.stdout.write(json.dumps(result))

    def _fetch_floor(self, server: DovecotServer, mail_user) -> float:
        """Every message fetched as the sync fetches it (imap.ImapSession, its FETCH reader), nothing else."""
        config = imap.ImapConfig(
            host=server.host,
            port=server.imaps_port,
            security="ssl",
            username=mail_user.username,
            secret=mail_user.password,
            trusted_ca_pem=server.ca_pem,
            timeout=60,
        )
        started = time.perf_counter()
        with imap.connect(config) as session:
            session.select("INBOX", readonly=True)
            for _message in session.fetch_messages(session.search_all_uids(), batch_size=engine.FETCH_BATCH):
                pass
        return time.perf_counter() - started

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


def _peak_rss_kb(pid: int) -> int:
    """VmHWM: the peak RSS of this process image. Not getrusage's ru_maxrss, which on Linux keeps the
    peak of the process that forked it (here: the benchmark holding the generated mail) across exec."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class _ChildrenPeak(threading.Thread):
    """Samples the peak RSS (VmHWM) of this process's children (the parse workers) until it exits."""

    def __init__(self):
        super().__init__(daemon=True, name="bench-rss")
        self.peak_kb = 0

    def run(self) -> None:
        tasks = Path(f"/proc/{os.getpid()}/task")
        while True:
            try:
                children = {int(pid) for task in tasks.iterdir() for pid in (task / "children").read_text().split()}
            except OSError:
                children = set()
            for pid in children:
                self.peak_kb = max(self.peak_kb, _peak_rss_kb(pid))
            time.sleep(0.1)
