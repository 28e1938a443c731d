"""`manage.py sync_mail [--account ID] [--once | --shard N/COUNT]`: sync mailboxes from the command line.

--once runs each account until nothing is left to fetch, prints what happened and exits (cron, tests,
support). Without it the command is an IDLE watcher (mailsync.sync.watcher): it shares the accounts
with every other running `sync_mail` through leases in the database (on any number of machines), holds
an IDLE connection for each of its accounts in one loop, and enqueues a sync on the Celery workers when
one of them changes. --shard 2/4 restricts it to the accounts whose id % 4 == 1.
"""

import signal
import threading

from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from mailsync.models import EmailAccount
from mailsync.sync import engine, leases, watcher


class Command(BaseCommand):
    help = "Sync mail accounts once (--once) or keep them in sync with IDLE watchers."

    def add_arguments(self, parser):
        parser.add_argument("--account", action="append", default=[], help="Account id or address (repeatable)")
        parser.add_argument("--once", action="store_true", help="Sync until done, then exit")
        parser.add_argument("--time-budget", type=float, default=engine.DEFAULT_TIME_BUDGET)
        parser.add_argument("--shard", default="", help="N/COUNT: watch only the accounts whose id %% COUNT == N-1")

    def handle(self, *args, account, once, time_budget, shard, **options):
        try:
            shard = leases.Shard.parse(shard)
        except ValueError as error:
            raise CommandError(str(error)) from None
        accounts = [self._account(value) for value in account]
        if not once:
            self._watch(accounts, shard)
            return
        failures = 0
        for item in accounts or list(engine.due_accounts()):
            line, failed = self._sync_until_done(item, time_budget)
            failures += failed
            (self.stderr if failed else self.stdout).write(f"{item.email_address}: {line}")
        if failures:
            raise CommandError(f"{failures} account(s) failed; their last error shows in Settings > Email sync.")

    def _watch(self, accounts: list[EmailAccount], shard) -> None:
        # Named in pg_stat_activity, so an operator can count the watchers' database connections.
        connection.close()
        if connection.vendor == "postgresql":
            connection.settings_dict.setdefault("OPTIONS", {})["application_name"] = "sync_mail watcher"
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
        self.stdout.write("Watching mailboxes for new mail (Ctrl-C stops).")
        self.stdout.flush()
        watcher.run_forever(account_ids=[a.pk for a in accounts] or None, shard=shard, stop=stop)

    def _sync_until_done(self, account: EmailAccount, time_budget: float) -> tuple[str, bool]:
        created = existing = kept_apart = flags = deleted = 0
        while True:
            report = engine.sync_account(account.pk, time_budget=time_budget)
            if not report.locked:
                return "another sync of this account is running; skipped", False
            created += report.created
            existing += report.existing
            kept_apart += report.kept_apart
            flags += report.flag_changes
            deleted += report.deleted_messages
            if report.error is not None:
                return f"{report.error.message} {report.error.fix}", True
            if not report.more_work:
                return (
                    f"{created} new ({kept_apart} kept apart from a different message with the same Message-ID), "
                    f"{existing} copies of messages already stored, {flags} flag changes, "
                    f"{deleted} deleted on the server",
                    False,
                )

    def _account(self, value: str) -> EmailAccount:
        accounts = EmailAccount.objects.exclude(state=EmailAccount.State.REMOVED)
        if value.isdigit():
            found = accounts.filter(pk=int(value)).first()
        else:
            found = accounts.filter(email_address__iexact=value.strip()).first()
        if found is None:
            raise CommandError(f"No mail account {value!r}.")
        return found
