"""Property test of the sync engine (issue 9) on the real test Dovecot.

Random sequences of server operations (deliver new / old mail, move, copy, expunge, create / rename /
delete a folder, reset a folder's UIDVALIDITY, flag / unflag) interleaved with syncs and with syncs
killed (SIGKILL) at a random moment. After each sequence and a final sync, the CRM holds exactly the
server's messages, each once, every copy recorded under its UID with the server's flags:

- a message on the server (in a synced folder) that the CRM ever stored, or that arrived inside the
  date window, is live in the CRM, once, with exactly its server copies as locations;
- a message the CRM holds live is on the server; one it holds deleted is not;
- the only mail allowed to be missing is old mail that never passed through a synced folder (the date
  window decides what is fetched).

Environment knobs (the default keeps it near a minute of suite time):
    MAILSYNC_PROPERTY_RUNS   sequences (default 4)     MAILSYNC_PROPERTY_STEPS  operations each (default 45)
    MAILSYNC_PROPERTY_SEED   first seed (default: random, printed on failure to replay it)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import pytest
from django.db import connection

from mailsync.models import EmailAccount, EmailMessage, MessageLocation
from mailsync.sync import engine
from tests.mailservers import make_message
from tests.test_sync import make_account
from tests.test_sync_safety import ROOT, _database_env

pytestmark = [pytest.mark.dovecot, pytest.mark.django_db(transaction=True)]

RUNS = int(os.environ.get("MAILSYNC_PROPERTY_RUNS", "4"))
STEPS = int(os.environ.get("MAILSYNC_PROPERTY_STEPS", "45"))
FIRST_SEED = int(os.environ.get("MAILSYNC_PROPERTY_SEED", str(random.SystemRandom().randrange(10**6))))
NOT_SYNCED = {"Junk", "Drafts"}  # excluded by "sync all folders"
WINDOW_DAYS = 3  # the account's initial_sync_days


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


@dataclass
class Scenario:
    rng: random.Random
    dovecot: object
    mail_user: object
    account: EmailAccount
    log: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)  # folders this scenario created (renamable, deletable)
    counter: int = 0
    recent: set[str] = field(default_factory=set)  # tokens delivered with a date inside the window
    ever_stored: set[str] = field(default_factory=set)

    # -- the server
    def folders(self) -> list[str]:
        return ["INBOX", "Archive", "Trash", "Junk", *self.created]

    def server(self) -> dict[str, dict[int, tuple[str, str]]]:
        """folder -> uid -> (token, flags) for every message on the server."""
        out = self.dovecot.doveadm("-f tab fetch", "mailbox uid flags hdr.message-id", "all", user=self.mail_user)
        found: dict[str, dict[int, tuple[str, str]]] = {}
        for line in out.splitlines()[1:]:
            folder, uid, flags, message_id = line.split("\t")
            flags = " ".join(sorted(f for f in flags.split() if f != "\\Recent"))
            found.setdefault(folder, {})[int(uid)] = (message_id.strip("<>").split("@")[0], flags)
        return found

    def uids(self, folder: str) -> list[int]:
        return sorted(self.server().get(folder, {}))

    def pick_uids(self, folder: str) -> list[int]:
        uids = self.uids(folder)
        return self.rng.sample(uids, self.rng.randint(1, min(3, len(uids)))) if uids else []

    # -- operations
    def deliver(self, old: bool) -> None:
        folder = self.rng.choice(["INBOX", "INBOX", "Archive", *self.created])
        count = self.rng.randint(1, 3)
        days = self.rng.uniform(20, 40) if old else self.rng.uniform(0, 1)
        date = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
        messages = []
        for _ in range(count):
            self.counter += 1
            token = f"p{self.counter}"
            if not old:
                self.recent.add(token)
            messages.append((make_message(f"Message {token}", message_id=f"<{token}@prop.test>", date=date), (), date))
        self.dovecot.deliver_many(self.mail_user, messages, folder)
        self.log.append(f"deliver {'old' if old else 'new'} {count} -> {folder}")

    def move_or_copy(self, copy: bool) -> None:
        source = self.rng.choice(self.folders())
        destination = self.rng.choice([f for f in self.folders() if f != source])
        uids = self.pick_uids(source)
        if uids:
            (self.dovecot.copy if copy else self.dovecot.move)(self.mail_user, uids, destination, folder=source)
            self.log.append(f"{'copy' if copy else 'move'} {source} {uids} -> {destination}")

    def expunge(self) -> None:
        folder = self.rng.choice(self.folders())
        uids = self.pick_uids(folder)
        if uids:
            self.dovecot.expunge(self.mail_user, uids, folder=folder)
            self.log.append(f"expunge {folder} {uids}")

    def flag(self) -> None:
        folder = self.rng.choice(self.folders())
        uids = self.pick_uids(folder)
        if uids:
            flag = self.rng.choice(["\\Seen", "\\Flagged"])
            change = self.rng.choice([self.dovecot.add_flags, self.dovecot.remove_flags])
            change(self.mail_user, uids, (flag,), folder)
            self.log.append(f"{change.__name__} {flag} {folder} {uids}")

    def create_folder(self) -> None:
        self.counter += 1
        name = self.rng.choice([f"Box{self.counter}", f"Clients/{self.counter}"])
        self.dovecot.create_folder(self.mail_user, name)
        self.created.append(name)
        self.log.append(f"create {name}")

    def rename_folder(self) -> None:
        leaves = [f for f in self.created if not any(other.startswith(f + "/") for other in self.created)]
        if not leaves:
            return self.create_folder()
        old = self.rng.choice(leaves)
        self.counter += 1
        new = f"Renamed{self.counter}"
        self.dovecot.rename_folder(self.mail_user, old, new)
        self.created[self.created.index(old)] = new
        self.log.append(f"rename {old} -> {new}")

    def delete_folder(self) -> None:
        leaves = [f for f in self.created if not any(other.startswith(f + "/") for other in self.created)]
        if leaves:
            folder = self.rng.choice(leaves)
            self.dovecot.delete_folder(self.mail_user, folder)
            self.created.remove(folder)
            self.log.append(f"delete {folder}")

    def reset(self) -> None:
        folder = self.rng.choice(["INBOX", "Archive", *self.created])
        self.dovecot.reset_uidvalidity(self.mail_user, folder)
        self.log.append(f"reset UIDVALIDITY of {folder}")

    def sync(self) -> None:
        for _ in range(200):
            report = engine.sync_account(self.account.pk, time_budget=120)
            if not report.locked:  # a killed worker's lock: PostgreSQL frees it when it notices
                time.sleep(0.05)
                continue
            assert report.error is None, f"{report.error} {self.history()}"
            if not report.more_work:
                break
        self.note_stored()
        self.log.append("sync")

    def killed_sync(self) -> None:
        started = EmailAccount.objects.filter(pk=self.account.pk).values_list("last_sync_at", flat=True)[0]
        command = [sys.executable, "manage.py", "sync_mail", "--account", str(self.account.pk), "--once"]
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=_database_env(),
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            now = EmailAccount.objects.filter(pk=self.account.pk).values_list("last_sync_at", flat=True)[0]
            if now != started:
                break
            time.sleep(0.01)
        delay = self.rng.uniform(0, 0.4)
        time.sleep(delay)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        self.note_stored()
        self.log.append(f"kill -9 a sync {delay:.2f}s in")

    def note_stored(self) -> None:
        self.ever_stored |= {
            message_id.split("@")[0]
            for message_id in EmailMessage.objects.filter(account=self.account).values_list("message_id", flat=True)
        }

    def step(self) -> None:
        operations = [
            (self.deliver, (False,), 5),
            (self.deliver, (True,), 4),
            (self.move_or_copy, (False,), 5),
            (self.move_or_copy, (True,), 3),
            (self.expunge, (), 3),
            (self.flag, (), 3),
            (self.create_folder, (), 2),
            (self.rename_folder, (), 2),
            (self.delete_folder, (), 1),
            (self.reset, (), 2),
            (self.sync, (), 4),
            (self.killed_sync, (), 2),
        ]
        action, args, _weight = self.rng.choices(operations, weights=[w for *_, w in operations])[0]
        action(*args)

    def history(self) -> str:
        return "\n  " + "\n  ".join(self.log)

    # -- the property
    def check(self) -> None:
        server = self.server()
        copies: dict[str, set[tuple[str, int]]] = {}
        flags: dict[tuple[str, int], str] = {}
        for folder, by_uid in server.items():
            if folder in NOT_SYNCED:
                continue
            for uid, (token, folder_flags) in by_uid.items():
                copies.setdefault(token, set()).add((folder, uid))
                flags[(folder, uid)] = folder_flags
        rows = list(
            EmailMessage.objects.filter(account=self.account).values_list("pk", "message_id", "deleted_at", "is_read")
        )
        tokens = [message_id.split("@")[0] for _pk, message_id, _deleted, _read in rows]
        duplicates = {token for token in tokens if tokens.count(token) > 1}
        assert not duplicates, f"stored more than once: {duplicates}{self.history()}"
        located: dict[int, set[tuple[str, int]]] = {}
        location_flags: dict[tuple[str, int], str] = {}
        for message_id, folder, uid, folder_flags in MessageLocation.objects.filter(
            message__account=self.account
        ).values_list("message_id", "folder__name", "uid", "flags"):
            located.setdefault(message_id, set()).add((folder, uid))
            location_flags[(folder, uid)] = folder_flags
        by_token = {token: row for token, row in zip(tokens, rows, strict=True)}
        problems = []
        for token, where in copies.items():
            row = by_token.get(token)
            must = token in self.ever_stored or token in self.recent
            if row is None or row[2] is not None:
                if must:
                    problems.append(f"{token} is on the server in {sorted(where)} but not live in the CRM")
                continue
            if located.get(row[0], set()) != where:
                problems.append(f"{token}: server copies {sorted(where)}, CRM {sorted(located.get(row[0], set()))}")
            for place in where:
                crm_flags = location_flags.get(place)
                if crm_flags != flags[place]:
                    problems.append(f"{token} {place}: server flags {flags[place]!r}, CRM {crm_flags!r}")
            seen = {"\\Seen" in flags[place].split() for place in where}
            if len(seen) == 1 and row[3] not in seen:
                problems.append(f"{token}: read on the server {seen}, in the CRM {row[3]}")
        for token, (_pk, _message_id, deleted_at, _read) in by_token.items():
            if deleted_at is None and token not in copies:
                problems.append(f"{token} is live in the CRM but on no synced folder of the server")
        assert not problems, "\n".join(problems) + self.history()


def run_scenario(seed: int, dovecot, alice) -> None:
    rng = random.Random(seed)
    mail_user = dovecot.add_user()
    account = make_account(alice, mail_user, dovecot, initial_sync_days=WINDOW_DAYS)
    scenario = Scenario(rng=rng, dovecot=dovecot, mail_user=mail_user, account=account)
    scenario.log.append(f"seed {seed}")
    for old in (False, False, True):
        scenario.deliver(old)
    scenario.sync()
    for _ in range(STEPS):
        scenario.step()
    scenario.sync()
    again = engine.sync_account(account.pk, time_budget=120)
    assert (again.created, again.deleted_messages) == (0, 0), f"a second sync still changed things{scenario.history()}"
    scenario.check()


@pytest.mark.parametrize("run", range(RUNS))
def test_random_server_changes_syncs_and_kills_leave_exactly_the_servers_messages(run, dovecot, alice):
    if connection.vendor != "postgresql":
        pytest.skip("the killed syncs run against PostgreSQL")
    run_scenario(FIRST_SEED + run, dovecot, alice)
