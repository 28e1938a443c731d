"""Support staff's view of mail accounts (SPEC O1): state, last error, counts; pause / resume / sync now;
reset a folder's sync state. Credentials are never shown (not even encrypted)."""

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from .accounts import selectors, services
from .models import AccountAddress, EmailAccount, MailFolder
from .protocols import imap
from .sync import tasks as sync_tasks


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
    ]
    list_filter = ["state", "provider", "auth_kind"]
    search_fields = ["email_address", "user__email"]
    list_select_related = ["user"]
    inlines = [AccountAddressInline]
    actions = ["pause_sync", "resume_sync", "sync_now"]
    readonly_fields = [
        "user",
        "email_address",
        "auth_kind",
        "has_credentials",
        "state",
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
                "certificate that CA issued (A4). Leave empty for public providers.",
            },
        ),
        (
            "Sync state",
            {
                "fields": (
                    "state",
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

    @admin.display(description="Folders", ordering="folder_total")
    def folder_count(self, account: EmailAccount) -> int:
        return account.folder_total

    @admin.display(description="Messages", ordering="message_total")
    def message_count(self, account: EmailAccount) -> int:
        return account.message_total

    @admin.display(description="Changes waiting for the server", ordering="pending_total")
    def pending_count(self, account: EmailAccount) -> int:
        return account.pending_total

    @admin.display(description="Credentials stored", boolean=True)
    def has_credentials(self, account: EmailAccount) -> bool:
        return account.has_secret

    @admin.action(description="Pause sync")
    def pause_sync(self, request: HttpRequest, queryset: QuerySet) -> None:
        for account in queryset:
            services.pause_account(account=account)
        self.message_user(request, f"Paused {queryset.count()} account(s).", messages.SUCCESS)

    @admin.action(description="Resume sync")
    def resume_sync(self, request: HttpRequest, queryset: QuerySet) -> None:
        resumed = [a for a in queryset if a.state == EmailAccount.State.PAUSED]
        for account in resumed:
            services.resume_account(account=account)
        self.message_user(request, f"Resumed {len(resumed)} paused account(s).", messages.SUCCESS)

    @admin.action(description="Sync now")
    def sync_now(self, request: HttpRequest, queryset: QuerySet) -> None:
        active = [a for a in queryset if a.state not in {EmailAccount.State.PAUSED, EmailAccount.State.REMOVED}]
        for account in active:
            sync_tasks.sync_account.delay(account.pk)
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
        for folder in queryset:
            services.reset_folder_sync_state(folder=folder)
        self.message_user(request, f"Reset {queryset.count()} folder(s).", messages.SUCCESS)
