"""Reads for the mail account pages. A user sees and acts on their own accounts only (admins included);
the admin status page (O2) lists every account's sync state, never its mail or credentials."""

from django.db.models import Count, IntegerField, OuterRef, Prefetch, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.shortcuts import get_object_or_404
from django.utils import timezone

from crm.models import User
from mailsync.models import EmailAccount, EmailMessage, MailFolder, MailSettings, PendingServerAction, SyncWatcher
from mailsync.sync.engine import ROLE_ORDER


def _count_of(model, **filters) -> Coalesce:
    """A correlated COUNT subquery (two Count() joins would multiply each other)."""
    counted = (
        model.objects.filter(account=OuterRef("pk"), **filters)
        .order_by()
        .values("account")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return Coalesce(Subquery(counted, output_field=IntegerField()), 0)


def with_counts(queryset: QuerySet[EmailAccount]) -> QuerySet[EmailAccount]:
    return queryset.annotate(
        folder_total=_count_of(MailFolder),
        message_total=_count_of(EmailMessage),
        pending_total=_count_of(PendingServerAction),
    )


def accounts_for_user(user: User) -> QuerySet[EmailAccount]:
    """The user's accounts for the settings page; removed ones are hidden (their mail stays in the CRM)."""
    return with_counts(
        EmailAccount.objects.filter(user=user).exclude(state=EmailAccount.State.REMOVED).order_by("email_address")
    )


def get_account_for_user(user: User, pk: int) -> EmailAccount:
    """The access check: 404 unless the account is the user's own and not removed."""
    return get_object_or_404(EmailAccount.objects.filter(user=user).exclude(state=EmailAccount.State.REMOVED), pk=pk)


def find_account(user: User, email_address: str) -> EmailAccount | None:
    """The user's row for an address, removed ones included (re-adding re-activates it)."""
    return EmailAccount.objects.filter(user=user, email_address__iexact=email_address.strip()).first()


def folders_by_role(folders) -> list[MailFolder]:
    """Inbox, Sent, Archive... first, then the others by name (the order the sync engine uses)."""
    return sorted(folders, key=lambda folder: (ROLE_ORDER.get(folder.role, 4), folder.name.lower()))


def accounts_with_folders(user: User) -> list[EmailAccount]:
    """The user's accounts with `selectable_folders` (on the server, able to hold mail) for the settings page."""
    folders = MailFolder.objects.filter(exists_on_server=True, noselect=False)
    accounts = list(accounts_for_user(user).prefetch_related(Prefetch("folders", queryset=folders)))
    for account in accounts:
        account.selectable_folders = folders_by_role(account.folders.all())
    return accounts


def mail_settings_for(user: User) -> MailSettings:
    """The user's mail preferences; the defaults (unsaved) when they never changed any."""
    return MailSettings.objects.filter(user=user).first() or MailSettings(user=user)


def all_accounts_for_status() -> QuerySet[EmailAccount]:
    """Every account of every user for the admin status page: state and counts only (no mail, no secret),
    and the IDLE watcher that holds it (mailsync.sync.leases)."""
    return with_counts(EmailAccount.objects.select_related("user", "watch_lease__watcher")).defer(
        "secret_encrypted", "trusted_ca_pem", "last_error_detail"
    )


def live_watchers() -> QuerySet[SyncWatcher]:
    """The IDLE watchers (`manage.py sync_mail`) whose registration is current, with how many accounts each holds."""
    return (
        SyncWatcher.objects.filter(expires_at__gte=timezone.now())
        .annotate(account_count=Count("leases"))
        .order_by("hostname", "pid")
    )
