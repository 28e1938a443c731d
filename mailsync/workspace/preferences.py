"""Writes of the Settings > Email sync page: folder choice (S2), past-email sync (S4), "Sync now",
and the user's mail preferences (linking mode L2/L3, default sharing P1/P2, email links W6).

Each user changes their own accounts and settings only; views check that through selectors first.
Sync work is enqueued with transaction.on_commit, so a worker never sees a half-saved choice.
"""

from collections.abc import Iterable

from django.core.exceptions import ValidationError
from django.db import transaction

from crm.models import User
from mailsync.models import EmailAccount, MailFolder, MailSettings
from mailsync.sync import engine
from mailsync.sync.tasks import sync_after_commit

from . import conversation_services

State = EmailAccount.State
PAST_SYNC_MONTHS = (1, 3, 6, 12)


def selectable_folders(account: EmailAccount):
    """Folders the user may pick: on the server and able to hold mail."""
    return MailFolder.objects.filter(account=account, exists_on_server=True, noselect=False)


@transaction.atomic
def set_folder_selection(*, account: EmailAccount, sync_all: bool, selected_folder_ids: Iterable[int] = ()) -> None:
    """S2: "sync all emails" or only the chosen folders. Already synced mail stays whatever is chosen:
    the sync engine never deletes mail because its folder is no longer synced.

    In "all" mode the individual choices are left as they were, so switching back restores them."""
    locked = EmailAccount.objects.select_for_update().get(pk=account.pk)
    chosen = set(selected_folder_ids)
    if not sync_all:
        folders = selectable_folders(locked)
        if not folders.filter(pk__in=chosen).exists():
            raise ValidationError("Choose at least one folder, or sync all emails.")
        folders.filter(pk__in=chosen).update(selected=True)
        folders.exclude(pk__in=chosen).update(selected=False)
    locked.sync_all_folders = sync_all
    locked.save(update_fields=["sync_all_folders", "updated_at"])
    account.sync_all_folders = sync_all
    if locked.state not in (State.PAUSED, State.REMOVED, State.NEEDS_REAUTH):
        sync_after_commit(locked.pk)  # newly chosen folders start syncing now, not at the next interval


@transaction.atomic
def start_past_sync(*, account: EmailAccount, months: int, only_contacts: bool) -> EmailAccount:
    """S4: ask for the last `months` of mail (optionally only mail with CRM contacts) and start it."""
    locked = EmailAccount.objects.select_for_update().get(pk=account.pk)
    if months not in PAST_SYNC_MONTHS:
        raise ValidationError("Choose 1, 3, 6 or 12 months.")
    if locked.initial_sync_done_at is None:
        raise ValidationError("Past emails can be synced once the initial sync has finished.")
    if locked.state in (State.PAUSED, State.REMOVED, State.NEEDS_REAUTH):
        raise ValidationError(f"{locked.email_address} is {locked.get_state_display().lower()}: fix that first.")
    if locked.past_sync_state in ("queued", "running"):
        raise ValidationError("A past-email sync is already running for this account.")
    engine.request_past_sync(locked, months=months, only_contacts=only_contacts)
    sync_after_commit(locked.pk)
    locked.refresh_from_db()
    return locked


@transaction.atomic
def sync_now(*, account: EmailAccount) -> None:
    """ "Sync now": one sync run at once, whatever the schedule or the retry backoff says."""
    locked = EmailAccount.objects.select_for_update().get(pk=account.pk)
    if locked.state == State.PAUSED:
        raise ValidationError("The sync of this account is paused: resume it first.")
    if locked.state == State.NEEDS_REAUTH:
        raise ValidationError("The mail server no longer accepts the saved login: re-authenticate first.")
    if locked.state == State.REMOVED:
        raise ValidationError("This account was removed.")
    sync_after_commit(locked.pk)


@transaction.atomic
def update_mail_settings(
    *,
    user: User,
    linking_mode: str,
    default_visibility: str,
    email_link_preference: str,
    track_by_default: bool = False,
) -> MailSettings:
    """The user's mail preferences. A new default sharing applies to mail synced from now on; existing
    conversations keep their own visibility (P2)."""
    if linking_mode not in MailSettings.LinkingMode.values:
        raise ValidationError("Choose automatic or manual linking.")
    if email_link_preference not in MailSettings.LinkPreference.values:
        raise ValidationError("Choose where email addresses open.")
    conversation_services.set_default_visibility(user=user, visibility=default_visibility)
    mail_settings = MailSettings.objects.select_for_update().get(user=user)
    mail_settings.linking_mode = linking_mode
    mail_settings.email_link_preference = email_link_preference
    mail_settings.track_by_default = track_by_default
    mail_settings.save(update_fields=["linking_mode", "email_link_preference", "track_by_default"])
    return mail_settings
