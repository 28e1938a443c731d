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
   so that its peak RSS is its own and not that of the generated mail held here. As in production,
   the follow-up tasks the sync queues after each commit (search documents, linking) run in another
   process, one at a time in the order queued, like one Celery worker (`--task-worker`; its tasks come
   over a pipe, not through a broker); the time ends when the last of them is done, so it is the time
   until every message is stored, listed, linked and searchable. The CPU time of the sync process,
   its parse worker, the task process and the machine as a whole is printed beside it.
4. A no-change incremental pass on that mailbox, with connect + login and on an open connection; then
   again with 40 more (empty) folders, as a mailbox with a folder per client or project has.

Targets (issue 18): the full sync at 2,000 msg/s or more, within 2x of the fetch-only floor, with a
peak RSS that does not grow with the mailbox; a no-change pass < 50 ms.
"""

import argparse
import email
import email.policy
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from celery.app.task import Task
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

EXTRA_FOLDERS = 40


class Command(BaseCommand):
    help = "Benchmark the initial sync against fetch+parse with no database, and a no-change pass."

    def add_arguments(self, parser):
        parser.add_argument("--messages", type=int, default=20_000)
        parser.add_argument("--keep", action="store_true", help="Keep the benchmark account and its mail")
        parser.add_argument("--child-sync", type=int, default=None, help=argparse.SUPPRESS)
        parser.add_argument("--task-worker", action="store_true", help=argparse.SUPPRESS)

    def handle(self, *args, messages: int, keep: bool, child_sync: int | None = None, task_worker=False, **options):
        if task_worker:
            self._task_worker()
            return
        if child_sync is not None:
            self._child_sync(child_sync)
            return
        if messages < 1:
            raise CommandError("--messages must be at least 1")
        if connection.vendor != "postgresql":
            self.stderr.write("Warning: not PostgreSQL; figures will not mean much. Use `make bench-sync`.")
        celery_app.conf.task_always_eager = True  # tasks of the no-change passes run inline
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

        if connection.vendor == "postgresql":
            # Each run deletes what it stored: without this, dead rows of earlier runs slow the next.
            with connection.cursor() as cursor:
                cursor.execute("VACUUM ANALYZE")
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
                f"{child['workers_rss_kb'] / 1024:,.0f} MB (largest parse worker), "
                f"{child['tasks_rss_kb'] / 1024:,.0f} MB (task process)"
            )
            cpu = child["cpu"]
            self._say(
                f"CPU time: sync process {cpu['sync']:.2f}s, parse worker {cpu['parse']:.2f}s, task process "
                f"{cpu['tasks']:.2f}s ({child['tasks']} tasks, last done {child['tasks_tail']:.2f}s after the "
                f"sync), database and the rest {cpu['rest']:.2f}s; the {os.cpu_count()} cores were busy "
                f"{cpu['busy']:.2f}s of {cpu['available']:.2f}s"
            )

            cold = self._timed(lambda: engine.sync_account(account.pk), 15)
            self._say(f"no-change pass, connect + login: median {cold * 1000:.1f} ms (target < 50 ms)")
            with imap.connect(account_imap_config(account)) as session:
                warm = self._timed(lambda: engine.sync_account(account.pk, session=session), 15)
            self._say(f"no-change pass, open connection: median {warm * 1000:.1f} ms")

            # A mailbox with many folders (clients, projects): their STATUS go in one round trip.
            for index in range(EXTRA_FOLDERS):
                server.create_folder(mail_user, f"Clients/Client {index:02d}")
            while engine.sync_account(account.pk).more_work:  # lists the new (empty) folders
                pass
            synced = len(engine.synced_folder_ids(account))
            cold = self._timed(lambda: engine.sync_account(account.pk), 15)
            self._say(
                f"no-change pass with {EXTRA_FOLDERS} more folders ({synced} synced), connect + login: "
                f"median {cold * 1000:.1f} ms"
            )
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
        """Child side of _run_child_sync: sync until done and the queued tasks ran, print one JSON line."""
        tasks = _TaskProcess()  # started (Django loaded) before the clock starts, like a running worker
        workers_peak = _ChildrenPeak(exclude={tasks.pid})
        workers_peak.start()
        machine_before = _machine_cpu()
        own_before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        runs = 0
        try:
            while True:
                report = engine.sync_account(account_id, time_budget=3600)
                runs += 1
                if report.error is not None:
                    raise CommandError(f"sync failed: {report.error}")
                if not report.more_work:
                    break
            synced = time.perf_counter()
            own = resource.getrusage(resource.RUSAGE_SELF)
            parse = resource.getrusage(resource.RUSAGE_CHILDREN)  # the parse workers, exited and waited for
            tasks_cpu, tasks_rss_kb = tasks.finish()
            seconds = time.perf_counter() - started  # the last task is done
            machine_after = _machine_cpu()
            tasks.reap()
        finally:
            tasks.kill()
        sync_cpu = own.ru_utime + own.ru_stime - own_before.ru_utime - own_before.ru_stime
        parse_cpu = parse.ru_utime + parse.ru_stime
        busy = machine_after[0] - machine_before[0]
        result = {
            "seconds": seconds,
            "runs": runs,
            "tasks": tasks.sent,
            "tasks_tail": seconds - (synced - started),
            "rss_kb": _peak_rss_kb(os.getpid()),
            "workers_rss_kb": workers_peak.peak_kb,
            "tasks_rss_kb": tasks_rss_kb,
            "cpu": {
                "sync": sync_cpu,
                "parse": parse_cpu,
                "tasks": tasks_cpu,
                "rest": max(0.0, busy - sync_cpu - parse_cpu - tasks_cpu),
                "busy": busy,
                "available": (machine_after[1] - machine_before[1]),
            },
        }
        self.stdout.write(json.dumps(result))

    def _task_worker(self) -> None:
        """Runs the tasks that come on stdin (one JSON line each) in order, inline, as a worker would;
        at EOF prints its CPU time and peak RSS."""
        celery_app.conf.task_always_eager = True
        before = resource.getrusage(resource.RUSAGE_SELF)
        self.stdout.write("ready")
        self.stdout.flush()
        for line in sys.stdin:
            job = json.loads(line)
            celery_app.tasks[job["name"]].apply(args=job["args"], kwargs=job["kwargs"]).get()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime
        self.stdout.write(json.dumps({"cpu": cpu, "rss_kb": _peak_rss_kb(os.getpid())}) + "\n")
        self.stdout.flush()

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

    def __init__(self, exclude: set[int] = frozenset()):
        super().__init__(daemon=True, name="bench-rss")
        self.peak_kb = 0
        self.exclude = set(exclude)

    def run(self) -> None:
        tasks = Path(f"/proc/{os.getpid()}/task")
        while True:
            try:
                children = {int(pid) for task in tasks.iterdir() for pid in (task / "children").read_text().split()}
            except OSError:
                children = set()
            children -= self.exclude
            for pid in children:
                self.peak_kb = max(self.peak_kb, _peak_rss_kb(pid))
            time.sleep(0.1)


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores (/proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle, iowait
    total = sum(fields[:8])  # without guest time, already counted in user
    return (total - idle) / ticks, total / ticks


class _TaskProcess:
    """A second process that runs the tasks this one queues, in order (see the module docstring).

    Installed by replacing Task.apply_async in this process: nothing goes through a broker."""

    def __init__(self):
        command = [sys.executable, sys.argv[0], "bench_sync", "--task-worker"]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=os.environ.copy()
        )
        self.pid = self.process.pid
        self.sent = 0
        if self.process.stdout.readline().strip() != "ready":  # Django loaded, like a running worker
            self.kill()
            raise CommandError("the task process did not start")
        celery_app.conf.task_always_eager = False
        pipe, lock = self.process.stdin, threading.Lock()
        owner = self

        def apply_async(task, args=None, kwargs=None, **options):
            line = json.dumps({"name": task.name, "args": list(args or ()), "kwargs": dict(kwargs or {})})
            with lock:
                pipe.write(line + "\n")
                pipe.flush()
                owner.sent += 1

        Task.apply_async = apply_async

    def finish(self) -> tuple[float, int]:
        """EOF to the task process; waits until it has run every task (its answer line, written after
        the last one; its exit, Python's and Django's teardown, is waited for by `reap`, off the clock).
        (CPU seconds, peak RSS in kB)."""
        self.process.stdin.close()
        for line in self.process.stdout:
            if line.startswith("{"):
                answer = json.loads(line)
                return answer["cpu"], answer["rss_kb"]
        self.process.wait()
        raise CommandError("the task process failed")

    def reap(self) -> None:
        try:
            code = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()
            raise CommandError("the task process did not exit") from None
        if code != 0:
            raise CommandError("the task process failed")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
