"""Support staff's view of mail accounts (SPEC O1): state, last error, counts; pause / resume / sync now;
reset a folder's sync state. Credentials are never shown (not even encrypted).

Staff may correct where an account connects (servers, ports, security, username, a trusted CA), but a
mailbox password must only ever reach servers its owner chose: such a change drops the stored password
or token and puts the account in "needs re-authentication", so nothing is sent anywhere until the owner
has seen the new settings and entered the password again (A6). Every change and action is written to the
admin's history (LogEntry). Delete confirmations show counts only (crm/admin_site.py).
"""

from django import forms
from django.contrib import admin, messages
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db.models import QuerySet
from django.http import HttpRequest

from .accounts import selectors, services
from .models import AccountAddress, EmailAccount, MailFolder
from .protocols import imap
from .sync import tasks as sync_tasks
from .workspace import forms as account_forms

# Fields that decide where the stored password / token is sent: changing one drops it.
CREDENTIAL_ROUTE_FIELDS = (
    "username",
    "imap_host",
    "imap_port",
    "imap_security",
    "smtp_host",
    "smtp_port",
    "smtp_security",
    "trusted_ca_pem",
)
PORT_VALIDATORS = [MinValueValidator(1), MaxValueValidator(65535)]


class EmailAccountAdminForm(forms.ModelForm):
    class Meta:
        model = EmailAccount
        # secret_encrypted is deliberately absent: credentials are never shown, not even encrypted.
        fields = [
            "display_name",
            "provider",
            "username",
            "imap_host",
            "imap_port",
            "imap_security",
            "smtp_host",
            "smtp_port",
            "smtp_security",
            "trusted_ca_pem",
            "attachment_limit_mb",
            "sync_all_folders",
            "initial_sync_days",
            "past_sync_months",
            "past_sync_only_contacts",
        ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in ("imap_port", "smtp_port"):
            self.fields[name].validators.extend(PORT_VALIDATORS)
        self.fields["trusted_ca_pem"].max_length = 65536

    def clean_imap_host(self) -> str:
        host = account_forms.clean_server_host(self.cleaned_data.get("imap_host", ""))
        if not host:
            raise forms.ValidationError("Enter the IMAP server.")
        return host

    def clean_smtp_host(self) -> str:
        return account_forms.clean_server_host(self.cleaned_data.get("smtp_host", ""))

    def clean(self):
        data = super().clean()
        # Exactly the owner's rule (mailsync/workspace/forms.py): no unencrypted connection except to localhost.
        account_forms.check_servers(self, data)
        return data

    def clean_trusted_ca_pem(self) -> str:
        pem = self.cleaned_data.get("trusted_ca_pem", "").strip()
        if pem:
            try:
                imap.tls_context(pem)
            except Exception as exc:
                raise forms.ValidationError(getattr(exc, "message", "Not a valid PEM certificate.")) from None
        return pem


class AccountAddressInline(admin.TabularInline):
    model = AccountAddress
    extra = 0


@admin.register(EmailAccount)
class EmailAccountAdmin(admin.ModelAdmin):
    form = EmailAccountAdminForm
    list_display = [
        "email_address",
        "user",
        "provider",
        "state",
        "last_error_code",
        "last_success_at",
        "folder_count",
        "message_count",
        "pending_count",
        "watched_by",
    ]
    list_filter = ["state", "provider", "auth_kind"]
    search_fields = ["email_address", "user__email"]
    list_select_related = ["user", "watch_lease__watcher"]
    inlines = [AccountAddressInline]
    actions = ["pause_sync", "resume_sync", "sync_now"]
    readonly_fields = [
        "user",
        "email_address",
        "auth_kind",
        "has_credentials",
        "state",
        "watched_by",
        "last_error_code",
        "last_error_message",
        "last_error_fix",
        "last_error_detail",
        "last_error_at",
        "last_sync_at",
        "last_success_at",
        "consecutive_failures",
        "next_retry_at",
        "initial_sync_done_at",
        "past_sync_state",
        "past_sync_done",
        "past_sync_total",
        "created_at",
        "updated_at",
        "removed_at",
    ]
    fieldsets = (
        (None, {"fields": ("user", "email_address", "display_name", "provider", "username", "auth_kind")}),
        ("Credentials", {"fields": ("has_credentials",)}),
        (
            "Servers",
            {
                "fields": (
                    ("imap_host", "imap_port", "imap_security"),
                    ("smtp_host", "smtp_port", "smtp_security"),
                    "trusted_ca_pem",
                    "attachment_limit_mb",
                ),
                "description": "Trusting a CA (PEM) lets this account connect to a self-hosted server whose "
                "certificate that CA issued (A4). Leave empty for public providers. Changing the username, a "
                "server, a port, the security or the trusted CA drops the stored password or token: the owner "
                "then sees “needs re-authentication” and enters it again for the new settings.",
            },
        ),
        (
            "Sync state",
            {
                "fields": (
                    ("state", "watched_by"),
                    ("last_error_code", "last_error_at"),
                    "last_error_message",
                    "last_error_fix",
                    "last_error_detail",
                    ("last_sync_at", "last_success_at"),
                    ("consecutive_failures", "next_retry_at"),
                    "initial_sync_done_at",
                    ("created_at", "updated_at", "removed_at"),
                )
            },
        ),
        (
            "Sync options",
            {
                "fields": (
                    "sync_all_folders",
                    "initial_sync_days",
                    ("past_sync_months", "past_sync_only_contacts", "past_sync_state"),
                    ("past_sync_done", "past_sync_total"),
                )
            },
        ),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return selectors.with_counts(super().get_queryset(request))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # accounts are added by their owner, after a connection test (Settings > Email sync)

    def save_model(self, request: HttpRequest, obj: EmailAccount, form, change: bool) -> None:
        if not change:
            return super().save_model(request, obj, form, change)
        if form.changed_data:
            # Only what staff changed: a full save would overwrite what a sync wrote meanwhile.
            obj.save(update_fields=[*form.changed_data, "updated_at"])
        rerouted = [name for name in CREDENTIAL_ROUTE_FIELDS if name in form.changed_data]
        if rerouted:
            services.drop_credentials_after_staff_change(account=obj)
            obj.refresh_from_db()
            self.log_change(
                request,
                obj,
                f"Changed {', '.join(rerouted)}: stored credentials dropped; the owner must re-authenticate.",
            )
            self.message_user(
                request,
                f"The stored password or token of {obj.email_address} was dropped: {obj.user} must "
                "re-authenticate before it syncs with the new settings.",
                messages.WARNING,
            )

    def _log_action(self, request: HttpRequest, accounts, message: str) -> None:
        for account in accounts:
            self.log_change(request, account, message)

    @admin.display(description="Folders", ordering="folder_total")
    def folder_count(self, account: EmailAccount) -> int:
        return account.folder_total

    @admin.display(description="Messages", ordering="message_total")
    def message_count(self, account: EmailAccount) -> int:
        return account.message_total

    @admin.display(description="Changes waiting for the server", ordering="pending_total")
    def pending_count(self, account: EmailAccount) -> int:
        return account.pending_total

    @admin.display(description="Watched by (IDLE)")
    def watched_by(self, account: EmailAccount) -> str:
        """The `manage.py sync_mail` holding this account's IDLE connection (mailsync.sync.leases)."""
        lease = getattr(account, "watch_lease", None) if account.pk else None
        return f"{lease.watcher.hostname} (pid {lease.watcher.pid})" if lease is not None else "not watched"

    @admin.display(description="Credentials stored", boolean=True)
    def has_credentials(self, account: EmailAccount) -> bool:
        return account.has_secret

    @admin.action(description="Pause sync")
    def pause_sync(self, request: HttpRequest, queryset: QuerySet) -> None:
        accounts = list(queryset)
        for account in accounts:
            services.pause_account(account=account)
        self._log_action(request, accounts, "Paused sync (admin action).")
        self.message_user(request, f"Paused {len(accounts)} account(s).", messages.SUCCESS)

    @admin.action(description="Resume sync")
    def resume_sync(self, request: HttpRequest, queryset: QuerySet) -> None:
        resumed = [a for a in queryset if a.state == EmailAccount.State.PAUSED]
        for account in resumed:
            services.resume_account(account=account)
        self._log_action(request, resumed, "Resumed sync (admin action).")
        self.message_user(request, f"Resumed {len(resumed)} paused account(s).", messages.SUCCESS)

    @admin.action(description="Sync now")
    def sync_now(self, request: HttpRequest, queryset: QuerySet) -> None:
        # "Needs re-authentication" waits for its owner (A6): a sync would only fail again.
        waiting = {EmailAccount.State.PAUSED, EmailAccount.State.REMOVED, EmailAccount.State.NEEDS_REAUTH}
        active = [a for a in queryset if a.state not in waiting]
        for account in active:
            sync_tasks.enqueue_sync(account.pk)
        self._log_action(request, active, "Sync requested (admin action).")
        self.message_user(request, f"Sync queued for {len(active)} account(s).", messages.SUCCESS)


@admin.register(MailFolder)
class MailFolderAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "account",
        "role",
        "selected",
        "exists_on_server",
        "uidvalidity",
        "uidnext",
        "highestmodseq",
        "message_count",
        "last_synced_at",
    ]
    list_filter = ["role", "exists_on_server", "selected"]
    search_fields = ["name", "account__email_address"]
    list_select_related = ["account"]
    readonly_fields = [
        "account",
        "name",
        "delimiter",
        "noselect",
        "uidvalidity",
        "uidnext",
        "highestmodseq",
        "initial_synced_at",
        "message_count",
        "last_synced_at",
    ]
    actions = ["reset_sync_state"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # folders come from the server

    @admin.action(description="Reset folder sync state (rescan at next sync, no duplicates)")
    def reset_sync_state(self, request: HttpRequest, queryset: QuerySet) -> None:
        folders = list(queryset)
        for folder in folders:
            services.reset_folder_sync_state(folder=folder)
            self.log_change(request, folder, "Reset the folder's sync state (admin action).")
        self.message_user(request, f"Reset {len(folders)} folder(s).", messages.SUCCESS)
