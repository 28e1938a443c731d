"""`manage.py sync_mail [--account ID] [--once]`: sync mailboxes from the command line.

--once runs each account until nothing is left to fetch, prints what happened and exits (cron, tests,
support). Without it the command keeps running: every account gets an IDLE watcher that syncs it
within seconds of new mail, plus a full pass every MAILSYNC_SYNC_INTERVAL seconds.
"""

from django.core.management.base import BaseCommand, CommandError

from mailsync.models import EmailAccount
from mailsync.sync import engine, watcher


class Command(BaseCommand):
    help = "Sync mail accounts once (--once) or keep them in sync with IDLE watchers."

    def add_arguments(self, parser):
        parser.add_argument("--account", action="append", default=[], help="Account id or address (repeatable)")
        parser.add_argument("--once", action="store_true", help="Sync until done, then exit")
        parser.add_argument("--time-budget", type=float, default=engine.DEFAULT_TIME_BUDGET)

    def handle(self, *args, account, once, time_budget, **options):
        accounts = [self._account(value) for value in account]
        if not once:
            self.stdout.write("Watching mailboxes for new mail (Ctrl-C stops).")
            watcher.run_forever(account_ids=[a.pk for a in accounts] or None)
            return
        failures = 0
        for item in accounts or list(engine.due_accounts()):
            line, failed = self._sync_until_done(item, time_budget)
            failures += failed
            (self.stderr if failed else self.stdout).write(f"{item.email_address}: {line}")
        if failures:
            raise CommandError(f"{failures} account(s) failed; their last error shows in Settings > Email sync.")

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
