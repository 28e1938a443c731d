"""`manage.py bench_scale [--mailboxes 2000]` (`make bench-scale`): many mailboxes, several watchers.

Not a test: it prints figures. On this machine it starts a private Dovecot (users in passwd-files, made
in a second), K accounts in this database (which must be a dedicated one: its name must contain
"bench"), two `manage.py sync_mail` watchers and two Celery workers on Redis, then prints:
- how long until every mailbox is watched (one IDLE connection each, as Dovecot counts them) and synced;
- memory of the watchers per 1,000 watched mailboxes, and the database connections in use;
- Dovecot's own delivery-to-IDLE time (probe mailboxes outside the CRM, the floor of any latency);
- new-mail-to-stored latency p50 / p95 / p99 while a share of the mailboxes receive mail;
- the takeover after kill -9 of one watcher: until its accounts are leased again, and until their
  IDLE connections are back;
- whether Dovecot ran out of inotify instances (then its IDLE falls back to polling every 30 s).
The machine is shared: the load average is printed at the start and at the end.
"""

from __future__ import annotations

import grp
import math
import os
import pwd
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis
from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.db.models import Q
from imapclient import IMAPClient

from crm.celery import app as celery_app
from crm.models import User
from devtools.mailservers import DovecotServer, MailUser, TestCA, UserRegistry, make_message
from mailsync.models import EmailAccount, EmailMessage, SyncWatcher, WatcherLease
from mailsync.protocols import imap
from mailsync.sync import tasks

ROOT = Path(__file__).resolve().parents[3]
BENCH_OWNER = "scale-bench@example.com"
IMAP_CLIENTS_PER_PROCESS = 25  # Dovecot imap processes each serve this many connections
PROBES = 20
BENCH_OS_USER = "scalebench"
QUEUES = ",".join(["celery", tasks.SYNC_QUEUE, tasks.BULK_QUEUE])


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _ensure_os_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
        )


def _dovecot_limits(mailboxes: int) -> str:
    return f"""
# bench_scale: room for {mailboxes} IDLE connections and the syncs next to them. Its own OS user: inotify
# instances are counted per user, and the test Dovecots of this machine share theirs (imaplab).
mail_uid = {BENCH_OS_USER}
mail_gid = {BENCH_OS_USER}
default_process_limit = {mailboxes + 500}
default_client_limit = {2 * mailboxes + 1000}
service imap {{
  service_count = 0
  client_limit = {IMAP_CLIENTS_PER_PROCESS}
  process_limit = {mailboxes // IMAP_CLIENTS_PER_PROCESS + 200}
}}
service imap-login {{
  service_count = 0
  client_limit = {mailboxes + 500}
  process_min_avail = 2
}}
"""


class Command(BaseCommand):
    help = "Scale benchmark: K mailboxes on a local Dovecot, two watchers, two Celery workers (prints figures)."

    def add_arguments(self, parser):
        parser.add_argument("--mailboxes", type=int, default=2000)
        parser.add_argument("--share", type=float, default=0.1, help="Share of the mailboxes that receive mail")
        parser.add_argument("--rate", type=float, default=20.0, help="Deliveries per second")
        parser.add_argument("--broker", default="redis://127.0.0.1:6379/14")
        parser.add_argument("--lease", type=float, default=30.0, help="MAILSYNC_WATCHER_LEASE_SECONDS")
        parser.add_argument("--timeout", type=float, default=900.0, help="Seconds to wait for the start-up")

    def handle(self, *args, mailboxes, share, rate, broker, lease, timeout, **options):
        if connection.vendor != "postgresql" or "bench" not in connection.settings_dict["NAME"]:
            raise CommandError("Run against a dedicated PostgreSQL database whose name contains 'bench'.")
        self.k = mailboxes
        self.processes: dict[str, subprocess.Popen] = {}
        self.workdir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
        self._say(f"bench_scale: {mailboxes} mailboxes; load average at start {self._load()}; {os.cpu_count()} cores")
        self._inotify_forecast()
        (self.workdir / "ca").mkdir()
        server = DovecotServer(
            TestCA(self.workdir / "ca"), UserRegistry(), extra_conf=_dovecot_limits(mailboxes + PROBES)
        )
        _ensure_os_user(BENCH_OS_USER)
        server.start()
        os.chown(server.mail_root, pwd.getpwnam(BENCH_OS_USER).pw_uid, grp.getgrnam(BENCH_OS_USER).gr_gid)
        try:
            self._run(server, share=share, rate=rate, broker=broker, lease=lease, timeout=timeout)
        finally:
            for process in self.processes.values():
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGTERM)
            for process in self.processes.values():
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
            self._inotify_report(server)
            server.stop()
            self._say(f"load average at the end {self._load()}; logs of the processes in {self.workdir}")

    # ---------------------------------------------------------------------------------------------

    def _run(self, server: DovecotServer, *, share: float, rate: float, broker: str, lease: float, timeout: float):
        self._reset(broker)
        env = self._env(broker, lease)
        for number in (1, 2):
            self._start(
                f"worker{number}",
                [
                    str(Path(sys.executable).parent / "celery"),
                    "-A",
                    "crm",
                    "worker",
                    "--pool=prefork",
                    "--concurrency=2",
                    f"--queues={QUEUES}",
                    f"--hostname=bench{number}@%h",
                    "--without-gossip",
                    "--without-mingle",
                    "--loglevel=WARNING",
                ],
                env,
            )
        for number in (1, 2):
            self._start(f"watcher{number}", [sys.executable, "manage.py", "sync_mail"], env)
        time.sleep(5)
        idle_rss = {name: _rss_mb(p.pid) for name, p in self.processes.items() if name.startswith("watcher")}

        started = time.monotonic()
        users = self._create_accounts(server)
        self._say(f"created {self.k} mail users and accounts in {time.monotonic() - started:.1f} s")

        started = time.monotonic()
        watched_at = synced_at = None
        most_db = {}
        while time.monotonic() - started < timeout:
            most_db = self._db_connections(most_db)
            if watched_at is None and self._sessions(server, users) == self.k:
                watched_at = time.monotonic() - started
                self._say(f"every mailbox watched (one IDLE connection each) after {watched_at:.1f} s")
            unsynced = EmailAccount.objects.filter(owner_filter(), initial_sync_done_at__isnull=True).count()
            if synced_at is None and unsynced == 0:
                synced_at = time.monotonic() - started
                self._say(f"every mailbox synced (initial sync done) after {synced_at:.1f} s")
            if watched_at is not None and synced_at is not None:
                break
            time.sleep(1)
        else:
            self._say(
                f"start-up not finished within {timeout:.0f} s: {self._sessions(server, users)} watched, "
                f"{unsynced} not synced yet"
            )
        self._memory(idle_rss)
        self._say(f"database connections during start-up (most at once): {self._format_db(most_db)}")

        floor = self._dovecot_idle_latency(server)
        self._latency(server, users, share=share, rate=rate, floor=floor)
        self._takeover(server, users, lease)

    def _create_accounts(self, server: DovecotServer) -> list[MailUser]:
        owner, _ = User.objects.get_or_create(email=BENCH_OWNER, defaults={"first_name": "Scale"})
        users = [server.add_user(name=f"sb{i:05d}") for i in range(self.k)]
        accounts = []
        for user in users:
            account = EmailAccount(
                user=owner,
                email_address=user.address,
                username=user.username,
                imap_host=server.host,
                imap_port=server.imaps_port,
                imap_security=imap.SECURITY_SSL,
                smtp_host=server.host,
                trusted_ca_pem=server.ca_pem,
                initial_sync_days=1,
                state=EmailAccount.State.INITIAL_SYNC,
            )
            account.set_secret(user.password)
            accounts.append(account)
        # No sync is enqueued here: each watcher enqueues one when it has connected (its catch-up).
        EmailAccount.objects.bulk_create(accounts, batch_size=500)
        return users

    def _memory(self, idle_rss: dict[str, float]) -> None:
        watchers = {name: p for name, p in self.processes.items() if name.startswith("watcher")}
        rss = {name: _rss_mb(p.pid) for name, p in watchers.items()}
        held = Counter(WatcherLease.objects.values_list("watcher__pid", flat=True))
        total = sum(rss.values())
        grown = total - sum(idle_rss.values())
        self._say(
            "watchers' memory (RSS): "
            + ", ".join(f"{name} {rss[name]:.0f} MB ({idle_rss[name]:.0f} MB idle)" for name in sorted(rss))
            + f"; accounts held {sorted(held.values())}"
        )
        self._say(
            f"memory per 1,000 watched mailboxes: {total / self.k * 1000:.0f} MB including the two Django "
            f"processes, {grown / self.k * 1000:.1f} MB above two idle watchers"
        )
        workers = sum(_rss_mb(p.pid) for name, p in self.processes.items() if name.startswith("worker"))
        self._say(f"(Celery workers' main processes: {workers:.0f} MB)")

    def _dovecot_idle_latency(self, server: DovecotServer) -> list[float]:
        """Delivery (doveadm save) -> EXISTS on an IDLE connection, for mailboxes outside the CRM."""
        samples = []
        for index in range(PROBES):
            user = server.add_user(name=f"probe{index:03d}")
            client = IMAPClient(server.host, port=server.imap_port, ssl=False)
            client.login(user.username, user.password)
            client.select_folder("INBOX")
            client.idle()
            started = time.time()
            server.append(user, make_message(f"probe {index}", to=user.address))
            responses = client.idle_check(timeout=60)
            samples.append(time.time() - started)
            client.idle_done()
            client.logout()
            if not any(isinstance(r, tuple) and b"EXISTS" in r for r in responses):
                self._say(f"probe {index}: no EXISTS within 60 s (Dovecot is polling)")
        self._say(
            f"Dovecot's own delivery-to-IDLE time ({PROBES} probes): p50 {statistics.median(samples) * 1000:.0f} ms, "
            f"max {max(samples) * 1000:.0f} ms"
        )
        return samples

    def _latency(self, server: DovecotServer, users: list[MailUser], *, share: float, rate: float, floor) -> None:
        chosen = random.Random(7).sample(users, max(1, int(self.k * share)))
        delivered: dict[str, float] = {}
        lock = threading.Lock()

        def deliver(index: int, user: MailUser) -> None:
            subject = f"scale-{index}"
            with lock:
                delivered[subject] = time.time()
            server.append(user, make_message(subject, to=user.address))

        self._say(f"delivering to {len(chosen)} mailboxes ({share:.0%}) at {rate:.0f} per second ...")
        most_db: dict = {}
        with ThreadPoolExecutor(max_workers=8) as pool:
            for index, user in enumerate(chosen):
                pool.submit(deliver, index, user)
                time.sleep(1 / rate)
                if index % 10 == 0:
                    most_db = self._db_connections(most_db)
        deadline = time.monotonic() + 120
        stored = {}
        while time.monotonic() < deadline:
            most_db = self._db_connections(most_db)
            stored = dict(
                EmailMessage.objects.filter(subject__startswith="scale-").values_list("subject", "created_at")
            )
            if len(stored) >= len(chosen):
                break
            time.sleep(0.5)
        latencies = [stored[s].timestamp() - delivered[s] for s in stored if s in delivered]
        self._say(f"stored {len(stored)} of {len(chosen)} delivered messages")
        if latencies:
            self._say(
                "new mail -> stored: "
                f"p50 {_percentile(latencies, 0.5):.2f} s, p95 {_percentile(latencies, 0.95):.2f} s, "
                f"p99 {_percentile(latencies, 0.99):.2f} s, max {max(latencies):.2f} s "
                f"(Dovecot's own delivery-to-IDLE p50 {statistics.median(floor):.2f} s)"
            )
        self._say(f"database connections while mail arrives (most at once): {self._format_db(most_db)}")

    def _takeover(self, server: DovecotServer, users: list[MailUser], lease: float) -> None:
        victim = self.processes["watcher1"]
        victim_ids = set(SyncWatcher.objects.filter(pid=victim.pid).values_list("id", flat=True))
        lost = WatcherLease.objects.filter(watcher_id__in=victim_ids).count()
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        killed = time.monotonic()
        leased_at = None
        while time.monotonic() - killed < lease * 4 + 120:
            held = WatcherLease.objects.exclude(watcher_id__in=victim_ids).count()
            if leased_at is None and held == self.k:
                leased_at = time.monotonic() - killed
            if leased_at is not None and self._sessions(server, users) == self.k:
                break
            time.sleep(0.5)
        back_at = time.monotonic() - killed
        self._say(
            f"kill -9 of a watcher holding {lost} accounts: all leased again after "
            f"{leased_at if leased_at is not None else float('nan'):.1f} s (lease {lease:.0f} s), "
            f"every IDLE connection back after {back_at:.1f} s"
        )
        self._memory_after_takeover()

    def _memory_after_takeover(self) -> None:
        survivor = self.processes["watcher2"]
        self._say(
            f"the surviving watcher now holds {WatcherLease.objects.count()} accounts in "
            f"{_rss_mb(survivor.pid):.0f} MB; database connections now: {self._format_db(self._db_connections({}))}"
        )

    # ---------------------------------------------------------------------------------------------

    def _reset(self, broker: str) -> None:
        celery_app.conf.broker_url = broker
        EmailAccount.objects.filter(owner_filter()).delete()
        SyncWatcher.objects.all().delete()
        client = redis.Redis.from_url(broker)
        client.delete(*QUEUES.split(","), "unacked", "unacked_index", "unacked_mutex")

    def _env(self, broker: str, lease: float) -> dict[str, str]:
        db = connection.settings_dict
        env = dict(os.environ)
        env.update(
            DATABASE_URL=f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
            CELERY_BROKER_URL=broker,
            CELERY_TASK_ALWAYS_EAGER="0",
            MAILSYNC_WATCHER_LEASE_SECONDS=str(lease),
            MAILSYNC_ALLOW_PRIVATE_HOSTS="1",
            LOG_LEVEL="WARNING",
        )
        return env

    def _start(self, name: str, command: list[str], env: dict[str, str]) -> None:
        with (self.workdir / f"{name}.log").open("wb") as log:
            self.processes[name] = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def _sessions(self, server: DovecotServer, users: list[MailUser]) -> int:
        names = {user.name for user in users}
        count = 0
        for line in server.doveadm("who").splitlines()[1:]:
            fields = line.split()
            if fields and fields[0].split("@")[0] in names:
                count += min(int(fields[1]), 1)
        return count

    def _db_connections(self, most: dict) -> dict:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT coalesce(nullif(application_name, ''), 'other'), count(*) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid() GROUP BY 1",
                [connection.settings_dict["NAME"]],
            )
            now = dict(cursor.fetchall())
        total = sum(now.values())
        if total >= most.get("total", 0):
            return {**now, "total": total}
        return most

    @staticmethod
    def _format_db(counts: dict) -> str:
        parts = [f"{name} {n}" for name, n in sorted(counts.items()) if name != "total"]
        return f"{counts.get('total', 0)} in all ({', '.join(parts)})"

    def _inotify_forecast(self) -> None:
        path = Path("/proc/sys/fs/inotify/max_user_instances")
        limit = int(path.read_text()) if path.exists() else None
        processes = math.ceil((self.k + PROBES) / IMAP_CLIENTS_PER_PROCESS)
        self._say(
            f"fs.inotify.max_user_instances = {limit}; Dovecot here runs about {processes} imap processes "
            f"({IMAP_CLIENTS_PER_PROCESS} connections each), one inotify instance each, all as one OS user "
            f"({BENCH_OS_USER}). "
            "With one process per connection (Dovecot's default client_limit = 1) it would need "
            f"{self.k + PROBES}: past {limit}, IDLE falls back to polling every 30 s "
            "(mailbox_idle_check_interval)."
        )

    def _inotify_report(self, server: DovecotServer) -> None:
        log = server.base / "log" / "dovecot.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        warnings = [line for line in text.splitlines() if "inotify" in line.lower()]
        if warnings:
            self._say(f"Dovecot ran out of inotify instances ({len(warnings)} warnings), e.g.: {warnings[0][-160:]}")
        else:
            self._say("Dovecot logged no inotify warning: its IDLE was push, not polling.")
        if os.environ.get("BENCH_KEEP_DOVECOT_LOG"):
            shutil.copy(log, self.workdir / "dovecot.log")

    @staticmethod
    def _load() -> str:
        return " / ".join(f"{value:.2f}" for value in os.getloadavg())

    def _say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()


def owner_filter() -> Q:
    return Q(user__email=BENCH_OWNER)
