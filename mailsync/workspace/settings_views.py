"""Settings > Email sync: add, test, re-authenticate, pause / resume and remove mail accounts (A1-A8); per
account the folders to sync (S2), "Sync past emails" with its progress (S4), health and "Sync now" (O2);
per user the linking mode, default sharing, blocked addresses and email links preference (L2, P1, F1, W6);
and the admin-only status page of every account (O2).

Thin views: access check (selectors) -> form -> service -> render. Errors from the mail servers arrive
classified (errors.MailError) and are shown with their fix; never a stack trace, never a password.
"""

import secrets
from dataclasses import dataclass

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db.models import Count
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from crm.records import is_partial_request
from mailsync.accounts import certificates, health, providers, selectors, services
from mailsync.connection import config as connection_config
from mailsync.models import AuthKind, BlockedAddress, EmailAccount, TrustedCertificate, crypto
from mailsync.protocols import errors, oauth

from . import kept_password, preferences
from .conversation_views import BlockForm
from .forms import (
    AddAccountForm,
    FolderSelectionForm,
    MailPreferencesForm,
    PastSyncForm,
    ReauthForm,
    TrustedCertificateForm,
)

OAUTH_SESSION_KEY = "mailsync_oauth"
State = EmailAccount.State


def _oauth_status() -> list[dict]:
    return [{"key": p.key, "name": p.name, "configured": p.is_configured} for p in oauth.PROVIDERS.values()]


def _error_text(error: ValidationError) -> str:
    return " ".join(error.messages)


# -- the settings page


@dataclass(frozen=True)
class PastSyncProgress:
    """What the "Sync past emails" progress bar shows."""

    state: str  # "", queued, running, done, error
    done: int
    total: int
    percent: int
    polling: bool
    waiting_for_account: bool
    # The initial sync is still running: the section refreshes itself so that the form appears when it ends.
    waiting_for_initial_sync: bool = False


def past_sync_progress(account: EmailAccount) -> PastSyncProgress:
    state = account.past_sync_state
    in_progress = state in ("queued", "running")
    # The sync engine works on (and the bar moves) only while the account itself can sync.
    account_can_sync = account.state in (State.CONNECTING, State.INITIAL_SYNC, State.SYNCING)
    if state == "done":
        percent = 100
    elif account.past_sync_total:
        # Never show 100% before the engine says it is done (the total is an estimate).
        percent = min(99, account.past_sync_done * 100 // account.past_sync_total)
    else:
        percent = 0
    return PastSyncProgress(
        state=state,
        done=account.past_sync_done,
        total=account.past_sync_total,
        percent=percent,
        polling=in_progress and account_can_sync,
        waiting_for_account=in_progress and not account_can_sync,
        waiting_for_initial_sync=account.initial_sync_done_at is None and account_can_sync,
    )


def _decorate(account: EmailAccount, now=None, *, folder_form=None, past_sync_form=None) -> EmailAccount:
    """Attach what the account's row and panels show: health, progress and the two forms."""
    account.health = health.account_health(account, now)
    account.past_sync = past_sync_progress(account)
    if hasattr(account, "selectable_folders"):
        account.folder_form = folder_form or FolderSelectionForm(
            folders=account.selectable_folders,
            initial={
                "mode": FolderSelectionForm.ALL if account.sync_all_folders else FolderSelectionForm.SELECTED,
                "folders": [folder.pk for folder in account.selectable_folders if folder.selected],
            },
        )
    account.past_sync_form = past_sync_form or PastSyncForm(
        initial={"months": account.past_sync_months or 3, "only_contacts": account.past_sync_only_contacts}
    )
    return account


def _preferences_form(user) -> MailPreferencesForm:
    mail_settings = selectors.mail_settings_for(user)
    return MailPreferencesForm(
        initial={
            "linking_mode": mail_settings.linking_mode,
            "default_visibility": mail_settings.default_visibility,
            "email_link_preference": mail_settings.email_link_preference,
            "track_by_default": mail_settings.track_by_default,
        }
    )


def _settings_context(request: HttpRequest, *, preferences_form=None, forms_of=None) -> dict:
    """`forms_of`: {account pk: {"folder_form": ..., "past_sync_form": ...}} to show a bound form with errors."""
    now = timezone.now()
    forms_of = forms_of or {}
    accounts = [
        _decorate(account, now, **forms_of.get(account.pk, {}))
        for account in selectors.accounts_with_folders(request.user)
    ]
    return {
        "accounts": accounts,
        "oauth_providers": _oauth_status(),
        "development_key": crypto.using_development_key(),
        "polling": _any_syncing(accounts),
        "preferences_form": preferences_form or _preferences_form(request.user),
        "blocked_addresses": BlockedAddress.objects.filter(user=request.user),
        "block_form": BlockForm(),
    }


def _any_syncing(accounts: list[EmailAccount]) -> bool:
    """While an account connects, runs its initial sync or fetches past emails, its list refreshes itself."""
    return any(account.health.status == health.SYNCING for account in accounts)


@require_GET
def settings_page(request: HttpRequest) -> HttpResponse:
    context = _settings_context(request)
    if is_partial_request(request):
        return render(request, "mailsync/accounts/_account_list.html", context)
    return render(request, "mailsync/accounts/settings.html", context)


@require_GET
def account_list_status(request: HttpRequest) -> HttpResponse:
    """The account list alone (one state per account), polled by htmx every few seconds while an account
    syncs; a plain GET goes to the settings page."""
    if not is_partial_request(request):
        return redirect("mailsync:settings")
    now = timezone.now()
    accounts = [_decorate(account, now) for account in selectors.accounts_for_user(request.user)]
    return render(
        request, "mailsync/accounts/_account_list.html", {"accounts": accounts, "polling": _any_syncing(accounts)}
    )


def _action_done(request: HttpRequest, account: EmailAccount, notice: str, *, failed: bool = False) -> HttpResponse:
    """After an action: the account's row for htmx (with the notice in it), else a message and back to the
    settings page (POST-redirect-GET)."""
    if is_partial_request(request):
        refreshed = selectors.with_counts(EmailAccount.objects.filter(pk=account.pk)).first()
        if refreshed is None or refreshed.state == State.REMOVED:
            return HttpResponse("")
        context = {"account": _decorate(refreshed), "notice": notice, "notice_failed": failed}
        return render(request, "mailsync/accounts/_account_row.html", context)
    messages.add_message(request, messages.ERROR if failed else messages.SUCCESS, notice)
    return redirect("mailsync:settings")


def _settings_section(
    request: HttpRequest, *, partial: str, context: dict, anchor: str, notice: str = "", failed: bool = False
) -> HttpResponse:
    """After a settings form: its section for htmx; else a message and back to that section of the page."""
    if is_partial_request(request):
        return render(request, partial, {**context, "notice": notice, "notice_failed": failed})
    if notice:
        messages.add_message(request, messages.ERROR if failed else messages.SUCCESS, notice)
    return redirect(f"{reverse('mailsync:settings')}#{anchor}")


def _one_account(request: HttpRequest, pk: int) -> EmailAccount:
    """The user's account with its selectable folders, as the settings page shows it (404 if not theirs)."""
    selectors.get_account_for_user(request.user, pk)
    return next(account for account in selectors.accounts_with_folders(request.user) if account.pk == pk)


@require_POST
def account_folders(request: HttpRequest, pk: int) -> HttpResponse:
    """S2: "sync all emails" or only some folders. Already synced mail stays."""
    account = _one_account(request, pk)
    form = FolderSelectionForm(request.POST, folders=account.selectable_folders)
    anchor = f"folders-{account.pk}"
    if form.is_valid():
        try:
            preferences.set_folder_selection(
                account=account,
                sync_all=form.cleaned_data["mode"] == FolderSelectionForm.ALL,
                selected_folder_ids=form.cleaned_data["folders"],
            )
        except ValidationError as error:
            form.add_error("folders", _error_text(error))
        else:
            account = _decorate(_one_account(request, pk))
            notice = "Folders saved. Email already synced stays in the CRM."
            return _settings_section(
                request,
                partial="mailsync/accounts/_folders.html",
                context={"account": account},
                anchor=anchor,
                notice=notice,
            )
    if is_partial_request(request):
        return render(request, "mailsync/accounts/_folders.html", {"account": _decorate(account, folder_form=form)})
    context = _settings_context(request, forms_of={account.pk: {"folder_form": form}})
    return render(request, "mailsync/accounts/settings.html", context)


@require_POST
def past_sync_start(request: HttpRequest, pk: int) -> HttpResponse:
    """S4: start "Sync past emails"; the progress bar then follows it."""
    account = selectors.get_account_for_user(request.user, pk)
    form = PastSyncForm(request.POST)
    anchor = f"past-sync-{account.pk}"
    if form.is_valid():
        try:
            account = preferences.start_past_sync(
                account=account, months=form.cleaned_data["months"], only_contacts=form.cleaned_data["only_contacts"]
            )
        except ValidationError as error:
            # Refused because of the account's state: the form may not even be shown, so say it above it.
            return _settings_section(
                request,
                partial="mailsync/accounts/_past_sync.html",
                context={"account": _decorate(account)},
                anchor=anchor,
                notice=_error_text(error),
                failed=True,
            )
        else:
            period = dict(form.fields["months"].choices)[form.cleaned_data["months"]]
            return _settings_section(
                request,
                partial="mailsync/accounts/_past_sync.html",
                context={"account": _decorate(account)},
                anchor=anchor,
                notice=f"Syncing the past {period} of {account.email_address}.",
            )
    if is_partial_request(request):
        return render(
            request, "mailsync/accounts/_past_sync.html", {"account": _decorate(account, past_sync_form=form)}
        )
    context = _settings_context(request, forms_of={account.pk: {"past_sync_form": form}})
    return render(request, "mailsync/accounts/settings.html", context)


@require_GET
def past_sync_progress_view(request: HttpRequest, pk: int) -> HttpResponse:
    """The "Sync past emails" section, polled by htmx while the sync runs. A plain GET goes to the page."""
    account = selectors.get_account_for_user(request.user, pk)
    if not is_partial_request(request):
        return redirect(f"{reverse('mailsync:settings')}#past-sync-{account.pk}")
    return render(request, "mailsync/accounts/_past_sync.html", {"account": _decorate(account)})


@require_POST
def account_sync_now(request: HttpRequest, pk: int) -> HttpResponse:
    account = selectors.get_account_for_user(request.user, pk)
    try:
        preferences.sync_now(account=account)
    except ValidationError as error:
        return _action_done(request, account, f"{account.email_address}: {_error_text(error)}", failed=True)
    return _action_done(request, account, f"A sync of {account.email_address} has started.")


@require_POST
def mail_preferences(request: HttpRequest) -> HttpResponse:
    """Linking mode, default sharing for new mail (P2: existing conversations keep theirs), email links."""
    form = MailPreferencesForm(request.POST)
    if form.is_valid():
        try:
            preferences.update_mail_settings(user=request.user, **form.cleaned_data)
        except ValidationError as error:
            form.add_error(None, _error_text(error))
        else:
            return _settings_section(
                request,
                partial="mailsync/accounts/_preferences.html",
                context={"preferences_form": _preferences_form(request.user)},
                anchor="mail-preferences",
                notice="Preferences saved. Conversations you already have keep their sharing.",
            )
    if is_partial_request(request):
        return render(request, "mailsync/accounts/_preferences.html", {"preferences_form": form})
    return render(request, "mailsync/accounts/settings.html", _settings_context(request, preferences_form=form))


# -- the admin status page (O2)


@require_GET
def status_page(request: HttpRequest) -> HttpResponse:
    """Every account's sync health for company admins: states, errors and counts, never mail content or
    credentials (admins must not see private mail). Everybody else gets a 404."""
    if not request.user.is_company_admin:
        raise Http404("No such page")
    now = timezone.now()
    accounts = list(selectors.all_accounts_for_status())
    for account in accounts:
        account.health = health.account_health(account, now)
    order = {health.ATTENTION: 0, health.SYNCING: 1, health.OK: 2, health.PAUSED: 3, health.REMOVED: 4}
    accounts.sort(key=lambda a: (order[a.health.status], a.user.email, a.email_address))
    context = {
        "accounts": accounts,
        "counts": health.overview(accounts, now),
        "labels": health.LABELS,
        "stale_minutes": int(health.stale_after().total_seconds() // 60),
        "watchers": list(selectors.live_watchers()),
    }
    return render(request, "mailsync/accounts/status.html", context)


# -- adding an account


def _hint_context(address: str) -> dict:
    if "@" not in address:
        return {"address": address, "detection": None}
    detection = providers.detect_provider(address)
    preset = detection.preset
    oauth_provider = oauth.PROVIDERS.get(preset.oauth_provider) if preset is not None else None
    return {
        "address": address,
        "detection": detection,
        "preset": preset,
        "oauth_provider": oauth_provider,
        "oauth_configured": bool(oauth_provider and oauth_provider.is_configured),
    }


SERVER_ERROR_CODES = {
    "private_host",
    "unreachable",
    "timeout",
    "not_imap",
    "pop3_only",
    "tls_error",
    "tls_hostname_mismatch",
    "starttls_unavailable",
}


def _add_form(request: HttpRequest, data=None, *, initial=None) -> AddAccountForm:
    address = ((data or {}).get("email_address") or "").strip().lower()
    kept = kept_password.kept_for(request, address) if data is not None and address else ""
    return AddAccountForm(data, initial=initial, kept_password=kept, default_ports=services.DEFAULT_PORTS)


@require_http_methods(["GET", "POST"])
def account_add(request: HttpRequest) -> HttpResponse:
    """A1: test, then save. Reading (IMAP) must work; sending (SMTP) may be left for later ("Save without
    sending"). After a failed try the password is kept server-side (kept_password), never rendered."""
    connection_error: errors.MailError | None = None
    resolution: services.Resolution | None = None
    show_servers = False
    offer_without_sending = False
    if request.method == "POST":
        form = _add_form(request, request.POST)
        without_sending = request.POST.get("sending") == "skip"
        if form.is_valid():
            resolution = services.resolve_account_settings(form.cleaned_data, without_sending=without_sending)
            if resolution.account_settings is None:
                show_servers = not resolution.oauth_only
                offer_without_sending = resolution.smtp_missing
                if resolution.prefill:
                    data = request.POST.copy()
                    for name, value in resolution.prefill.items():
                        data[name] = str(value)
                    form = _add_form(request, data)
                    form.is_valid()
                form.add_error(None, resolution.problem)
            else:
                account_settings = resolution.account_settings
                existing = selectors.find_account(request.user, form.cleaned_data["email_address"])
                secret = form.cleaned_data["password"]
                # The company's CAs of these servers: the owner types the password with them in effect.
                company_cas = connection_config.matching_certificates(
                    [account_settings.imap_host, account_settings.smtp_host]
                )
                try:
                    services.count_connection_test(user=request.user)
                    connection_config.check_connection(
                        account_settings=account_settings,
                        secret=secret,
                        trusted_ca_pem=existing.trusted_ca_pem if existing else "",
                        certificates=company_cas,
                    )
                except errors.MailError as error:
                    connection_error = error
                    offer_without_sending = error.protocol == "smtp"
                    show_servers = form.has_custom_servers or error.code in SERVER_ERROR_CODES
                else:
                    account = services.connect_account(
                        user=request.user, account_settings=account_settings, secret=secret
                    )
                    kept_password.forget(request)
                    if account.smtp_host:
                        messages.success(request, f"{account.email_address} is connected. Its mail is being synced.")
                    else:
                        messages.warning(
                            request,
                            f"{account.email_address} is connected for reading: its mail is being synced. Sending "
                            "is not set up: add the account again with its SMTP server to send from the CRM.",
                        )
                    return redirect("mailsync:settings")
        else:
            show_servers = any(form.data.get(name) for name in ("imap_host", "smtp_host"))
        typed = form.cleaned_data.get("password") if hasattr(form, "cleaned_data") else ""
        address = (form.cleaned_data.get("email_address") if hasattr(form, "cleaned_data") else "") or ""
        if typed and address:
            kept_password.keep(request, address=address, password=typed)
            form.show_password_kept(typed)
    else:
        form = _add_form(request, initial={"email_address": request.GET.get("email_address", "")})
        show_servers = request.GET.get("provider") == "custom"
        if show_servers:
            form.initial["provider"] = "custom"
    address = (form.data.get("email_address") or form.initial.get("email_address") or "").strip().lower()
    context = {
        "form": form,
        "connection_error": connection_error,
        "show_servers": show_servers or bool(form.errors.keys() & set(AddAccountForm.SERVER_FIELDS)),
        "resolution": resolution,
        "offer_without_sending": offer_without_sending,
        "password_kept": bool(form.kept_password),
        "oauth_providers": _oauth_status(),
        "oauth_any_configured": any(p["configured"] for p in _oauth_status()),
        "trusted_certificates": TrustedCertificate.objects.all(),
        **_hint_context(address),
    }
    return render(request, "mailsync/accounts/add.html", context)


@require_GET
def provider_hint(request: HttpRequest) -> HttpResponse:
    """What we know about the typed address's provider (htmx, while typing). Plain GET -> the add page."""
    address = request.GET.get("email_address", "").strip().lower()
    if not is_partial_request(request):
        return redirect(f"{reverse('mailsync:account_add')}?email_address={address}")
    return render(request, "mailsync/accounts/_provider_hint.html", _hint_context(address))


# -- acting on an account


@require_POST
def account_test(request: HttpRequest, pk: int) -> HttpResponse:
    account = selectors.get_account_for_user(request.user, pk)
    try:
        services.count_connection_test(user=request.user)
    except errors.TooManyConnectionTests as limited:
        return _action_done(request, account, f"{account.email_address}: {limited.message}", failed=True)
    error = services.retest_account(account=account)
    if error is None:
        return _action_done(request, account, f"{account.email_address}: the connection works.")
    return _action_done(request, account, f"{account.email_address}: {error.message}", failed=True)


@require_http_methods(["GET", "POST"])
def account_reauth(request: HttpRequest, pk: int) -> HttpResponse:
    """A6: a POST without a password retries the stored credentials; when they fail (or on GET) the page
    asks for a new password. Synced email is never touched."""
    account = selectors.get_account_for_user(request.user, pk)
    form = ReauthForm()
    error: errors.MailError | None = None
    if request.method == "POST":
        try:
            services.count_connection_test(user=request.user)
        except errors.TooManyConnectionTests as limited:
            error = limited  # shown, never recorded on the account: the account itself is fine
        else:
            if "password" in request.POST:
                form = ReauthForm(request.POST)
                if form.is_valid():
                    error = services.reauthenticate(account=account, new_secret=form.cleaned_data["password"])
                    if error is None:
                        messages.success(request, f"{account.email_address} is connected again.")
                        return redirect("mailsync:settings")
                    form = ReauthForm()  # never render the password back
            else:
                error = services.reauthenticate(account=account)
                if error is None:
                    messages.success(request, f"{account.email_address} is connected again with the saved credentials.")
                    return redirect("mailsync:settings")
        account.refresh_from_db()
    oauth_provider = None
    if account.auth_kind == AuthKind.OAUTH2:
        preset = providers.get_preset(account.provider)
        oauth_provider = oauth.PROVIDERS.get(preset.oauth_provider) if preset else None
    context = {
        "account": account,
        "form": form,
        "connection_error": error,
        "oauth_provider": oauth_provider,
        "preset": providers.get_preset(account.provider),
    }
    return render(request, "mailsync/accounts/reauth.html", context)


@require_POST
def account_pause(request: HttpRequest, pk: int) -> HttpResponse:
    account = services.pause_account(account=selectors.get_account_for_user(request.user, pk))
    return _action_done(request, account, f"Sync of {account.email_address} is paused. Synced email stays in the CRM.")


@require_POST
def account_resume(request: HttpRequest, pk: int) -> HttpResponse:
    account = services.resume_account(account=selectors.get_account_for_user(request.user, pk))
    return _action_done(request, account, f"Sync of {account.email_address} is resumed.")


@require_http_methods(["GET", "POST"])
def account_remove(request: HttpRequest, pk: int) -> HttpResponse:
    account = selectors.get_account_for_user(request.user, pk)
    if request.method == "POST":
        services.remove_account(account=account)
        messages.success(
            request,
            f"{account.email_address} was removed. Its synced email stays in the CRM; adding it again "
            "continues where it stopped.",
        )
        return redirect("mailsync:settings")
    return render(request, "mailsync/accounts/remove.html", {"account": account})


# -- OAuth2 (Connect with Google / Microsoft)


def _redirect_uri(request: HttpRequest) -> str:
    return request.build_absolute_uri(reverse("mailsync:oauth_callback"))


@require_GET
def oauth_start(request: HttpRequest, provider: str) -> HttpResponse:
    address = request.GET.get("email_address", "").strip().lower()
    if provider not in oauth.PROVIDERS:
        messages.error(request, "Unknown sign-in provider.")
        return redirect("mailsync:account_add")
    if not oauth.PROVIDERS[provider].is_configured:
        messages.error(
            request,
            f"Sign-in with {oauth.PROVIDERS[provider].name} is not configured on this CRM. Ask your administrator, "
            "or use an app password if your provider allows it.",
        )
        return redirect(f"{reverse('mailsync:account_add')}?email_address={address}")
    state = secrets.token_urlsafe(24)
    verifier = oauth.new_code_verifier()
    request.session[OAUTH_SESSION_KEY] = {
        "state": state,
        "provider": provider,
        "email_address": address,
        "code_verifier": verifier,
    }
    url = oauth.authorization_url(
        provider, redirect_uri=_redirect_uri(request), state=state, code_verifier=verifier, login_hint=address
    )
    return redirect(url)


@require_GET
def oauth_callback(request: HttpRequest) -> HttpResponse:
    pending = request.session.pop(OAUTH_SESSION_KEY, None)
    if not pending or not secrets.compare_digest(str(pending.get("state", "")), request.GET.get("state", "")):
        messages.error(request, "The sign-in could not be completed (it expired or was started elsewhere). Try again.")
        return redirect("mailsync:account_add")
    if "error" in request.GET or not request.GET.get("code"):
        messages.error(request, "The sign-in was cancelled or refused by your provider.")
        return redirect("mailsync:account_add")
    try:
        tokens = oauth.exchange_code(
            pending["provider"],
            code=request.GET["code"],
            redirect_uri=_redirect_uri(request),
            code_verifier=str(pending.get("code_verifier", "")),
        )
    except errors.MailError as error:
        messages.error(request, f"{error.message} {error.fix}")
        return redirect("mailsync:account_add")
    address = tokens.email or pending.get("email_address", "")
    if "@" not in address:
        messages.error(request, "Your provider did not tell us the email address. Try again and allow email access.")
        return redirect("mailsync:account_add")
    tokens.email = address
    account = services.connect_oauth_account(user=request.user, tokens=tokens, email_address=address)
    messages.success(request, f"{account.email_address} is connected. Its mail is being synced.")
    return redirect("mailsync:settings")


# -- trusted certificate authorities (company admins)


def _require_company_admin(request: HttpRequest) -> None:
    if not request.user.is_company_admin:
        raise Http404("No such page")


@require_http_methods(["GET", "POST"])
def trusted_certificates(request: HttpRequest) -> HttpResponse:
    """A4: company admins trust a private CA for the company's own mail servers; used by the next connection
    test and sync, no restart. Everybody else gets a 404."""
    _require_company_admin(request)
    form = TrustedCertificateForm()
    if request.method == "POST":
        form = TrustedCertificateForm(request.POST)
        if form.is_valid():
            try:
                certificate = certificates.add_trusted_certificate(admin=request.user, **form.cleaned_data)
            except ValidationError as error:
                form.add_error(None, _error_text(error))
            else:
                messages.success(
                    request,
                    f"“{certificate.name}” is trusted for {certificate.hosts}. Owners of accounts on those servers "
                    "use it once they connect or re-authenticate with their password.",
                )
                return redirect("mailsync:trusted_certificates")
    context = {
        "form": form,
        "certificates": TrustedCertificate.objects.select_related("added_by").annotate(account_total=Count("accounts")),
    }
    return render(request, "mailsync/accounts/certificates.html", context)


@require_POST
def trusted_certificate_remove(request: HttpRequest, pk: int) -> HttpResponse:
    _require_company_admin(request)
    certificate = get_object_or_404(TrustedCertificate, pk=pk)
    certificates.remove_trusted_certificate(admin=request.user, certificate=certificate)
    messages.success(request, f"“{certificate.name}” is no longer trusted.")
    return redirect("mailsync:trusted_certificates")
