"""Connecting a mailbox (SPEC A1-A8, O1): presets, credentials at rest, OAuth2, services, pages and admin.

Real Dovecot / aiosmtpd from tests/mailservers.py; the only stand-ins are the MX lookup function and the
OAuth token endpoint function (oauth.post_token_request), both passed / patched explicitly.
"""

import base64
import datetime as dt
import json
import logging

import pytest
from cryptography.fernet import Fernet
from django.urls import reverse
from django.utils import timezone

from conftest import client_for
from mailsync import tasks
from mailsync.accounts import providers, services
from mailsync.connection import config
from mailsync.models import AccountAddress, AuthKind, EmailAccount, EmailMessage, EmailThread, MailFolder, crypto
from mailsync.protocols import errors, oauth

State = EmailAccount.State
pytestmark = pytest.mark.usefixtures("celery_eager")


def no_mx(domain):
    return []


def failing_mx(domain):
    raise AssertionError("the MX lookup must not run for a known domain")


# --------------------------------------------------------------------------------------------------
# Provider presets (A2)

SPEC_PROVIDERS = {
    "Gmail": "gmail",
    "Google Workspace": "google_workspace",
    "Yahoo! Mail": "yahoo",
    "Office 365 / Microsoft 365": "office365",
    "Microsoft Exchange": "exchange",
    "Outlook.com (Hotmail)": "outlook",
    "iCloud": "icloud",
    "AOL": "aol",
    "FastMail": "fastmail",
    "GandiMail": "gandi",
    "GMX": "gmx",
    "Mail.ru": "mailru",
    "Yandex.Mail": "yandex",
    "GoDaddy": "godaddy",
    "Hover": "hover",
    "Namecheap": "namecheap",
    "Bluehost": "bluehost",
    "Soverin": "soverin",
    "Zimbra": "zimbra",
    "123-reg": "123reg",
    "126": "netease126",
    "QQ Mail": "qq",
    "Aliyun": "aliyun",
    "Netease 163": "netease163",
    "Yeah.net": "yeah",
    "139.com": "china139",
    "custom IMAP over SSL/TLS": "custom",
}


def test_every_spec_provider_has_a_complete_preset():
    for spec_name, key in SPEC_PROVIDERS.items():
        preset = providers.get_preset(key)
        assert preset is not None, spec_name
        assert preset.imap_port in {993, 143} and preset.smtp_port in {465, 587}, spec_name
        assert preset.imap_security in {"ssl", "starttls"} and preset.smtp_security in {"ssl", "starttls"}
        assert preset.attachment_limit_mb > 0
        assert preset.auth_kind in {"password", "app_password", "oauth2"}
        if key != "custom":
            filled = preset.for_domain("acme.example")
            assert "." in filled.imap_host and "." in filled.smtp_host, spec_name
            assert "{domain}" not in filled.imap_host + filled.smtp_host
        if preset.app_password_required:
            assert preset.help_text and preset.help_url, f"{spec_name}: say where to create an app password"
    assert providers.get_preset("gmail").oauth_provider == "google"
    assert providers.get_preset("office365").oauth_provider == "microsoft"
    assert not providers.get_preset("outlook").password_allowed


@pytest.mark.parametrize(
    ("address", "key", "imap_host"),
    [
        ("Ann@Gmail.com", "gmail", "imap.gmail.com"),
        ("ann@googlemail.com", "gmail", "imap.gmail.com"),
        ("ann@yahoo.co.uk", "yahoo", "imap.mail.yahoo.com"),
        ("ann@hotmail.com", "outlook", "outlook.office365.com"),
        ("ann@live.com", "outlook", "outlook.office365.com"),
        ("ann@me.com", "icloud", "imap.mail.me.com"),
        ("ann@aol.com", "aol", "imap.aol.com"),
        ("ann@gmx.de", "gmx", "imap.gmx.net"),
        ("ann@bk.ru", "mailru", "imap.mail.ru"),
        ("ann@ya.ru", "yandex", "imap.yandex.com"),
        ("ann@qq.com", "qq", "imap.qq.com"),
        ("ann@163.com", "netease163", "imap.163.com"),
        ("ann@126.com", "netease126", "imap.126.com"),
        ("ann@yeah.net", "yeah", "imap.yeah.net"),
        ("ann@139.com", "china139", "imap.139.com"),
        ("ann@aliyun.com", "aliyun", "imap.aliyun.com"),
        ("ann@fastmail.com", "fastmail", "imap.fastmail.com"),
    ],
)
def test_detect_provider_by_domain_without_dns(address, key, imap_host):
    detection = providers.detect_provider(address, mx_lookup=failing_mx)
    assert (detection.preset.key, detection.via, detection.preset.imap_host) == (key, "domain", imap_host)


@pytest.mark.parametrize(
    ("mx_hosts", "key"),
    [
        (["aspmx.l.google.com.", "alt1.aspmx.l.google.com"], "google_workspace"),
        (["smtp.google.com"], "google_workspace"),
        (["acme-example.mail.protection.outlook.com"], "office365"),
        (["mx.zoho.com", "mx2.zoho.com"], "zoho"),
        (["mx.yandex.net"], "yandex"),
        (["in1-smtp.messagingengine.com"], "fastmail"),
        (["spool.mail.gandi.net"], "gandi"),
        (["mx.mail.ru"], "mailru"),
        (["mxbiz1.mxhichina.com"], "aliyun_enterprise"),
        (["mx01.privateemail.com"], "namecheap"),
        (["smtp.secureserver.net"], "godaddy"),
    ],
)
def test_detect_provider_by_mx_for_hosted_domains(mx_hosts, key):
    detection = providers.detect_provider("ann@acme.example", mx_lookup=lambda domain: mx_hosts)
    assert (detection.preset.key, detection.via) == (key, "mx")


def test_hosting_presets_fill_in_the_domain_and_unknown_domains_ask():
    bluehost = providers.detect_provider("ann@acme.example", mx_lookup=lambda d: ["box5.bluehost.com"])
    assert (bluehost.preset.imap_host, bluehost.preset.smtp_host) == ("mail.acme.example", "mail.acme.example")
    unknown = providers.detect_provider("ann@acme.example", mx_lookup=lambda d: ["mx.unknown-host.example"])
    assert unknown.preset is None and unknown.mx_hosts == ("mx.unknown-host.example",)
    assert providers.detect_provider("not-an-address", mx_lookup=failing_mx).preset is None


def test_real_mx_lookup_fails_gracefully():
    # No network in the sandbox, NXDOMAIN in CI: either way an empty list, quickly.
    started = timezone.now()
    assert providers.lookup_mx("no-such-domain.invalid", timeout=2) == []
    assert (timezone.now() - started).total_seconds() < 5
    assert providers.detect_provider("ann@no-such-domain.invalid").preset is None


# --------------------------------------------------------------------------------------------------
# Credentials at rest


def test_encryption_round_trip_and_model_helpers(settings, db, alice):
    settings.MAILSYNC_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    token = crypto.encrypt("pässword with spaces ")
    assert "pässword" not in token
    assert crypto.decrypt(token) == "pässword with spaces "
    account = EmailAccount(user=alice, email_address="a@x.test", imap_host="imap.x.test")
    account.set_secret("s3cret-Value")
    assert account.has_secret and "s3cret" not in account.secret_encrypted
    assert account.get_secret() == "s3cret-Value"


def test_key_rotation(settings, db, alice):
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.MAILSYNC_ENCRYPTION_KEYS = [old_key]
    account = EmailAccount.objects.create(user=alice, email_address="a@x.test", imap_host="imap.x.test")
    account.set_secret("rotate-me")
    account.save()
    old_token = account.secret_encrypted

    settings.MAILSYNC_ENCRYPTION_KEYS = f"{new_key},{old_key}"  # a comma-separated string works too
    assert crypto.decrypt(old_token) == "rotate-me"  # old tokens still open
    assert services.reencrypt_all_secrets() == 1
    account.refresh_from_db()
    assert account.secret_encrypted != old_token

    settings.MAILSYNC_ENCRYPTION_KEYS = [new_key]  # the old key can now be dropped
    assert account.get_secret() == "rotate-me"
    settings.MAILSYNC_ENCRYPTION_KEYS = [old_key]
    with pytest.raises(crypto.CredentialsUnreadable) as caught:
        account.get_secret()
    assert caught.value.needs_reauth


def test_development_key_comes_from_secret_key(settings):
    settings.MAILSYNC_ENCRYPTION_KEYS = []
    settings.SECRET_KEY = "one-secret-key-for-tests"
    assert crypto.using_development_key()
    token = crypto.encrypt("pw")
    settings.SECRET_KEY = "another-secret-key"
    with pytest.raises(crypto.CredentialsUnreadable):
        crypto.decrypt(token)


def test_invalid_keys_are_reported_without_echoing_them(settings):
    settings.MAILSYNC_ENCRYPTION_KEYS = ["not-a-fernet-key-xyz"]
    with pytest.raises(ValueError) as caught:
        crypto.encrypt("pw")
    assert "not-a-fernet-key-xyz" not in str(caught.value)


# --------------------------------------------------------------------------------------------------
# OAuth2 (the token endpoint function is the only thing replaced)


def id_token_for(email: str) -> str:
    payload = base64.urlsafe_b64encode(json.dumps({"email": email}).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJub25lIn0.{payload}.sig"


@pytest.fixture
def google_configured(monkeypatch):
    monkeypatch.setenv("GOOGLE_OAUTH_CLIENT_ID", "client-123.apps.example")
    monkeypatch.setenv("GOOGLE_OAUTH_CLIENT_SECRET", "client-secret-abc")


@pytest.fixture
def token_endpoint(monkeypatch):
    """Replaces oauth.post_token_request; `responses` are returned in order, `requests` recorded."""

    class Endpoint:
        requests: list = []
        responses: list = []

        def __call__(self, url, form, **kwargs):
            self.requests.append((url, dict(form)))
            return self.responses.pop(0)

    endpoint = Endpoint()
    endpoint.requests, endpoint.responses = [], []
    monkeypatch.setattr(oauth, "post_token_request", endpoint)
    return endpoint


def test_oauth_not_configured_is_explicit(monkeypatch):
    monkeypatch.delenv("GOOGLE_OAUTH_CLIENT_ID", raising=False)
    assert not oauth.PROVIDERS["google"].is_configured
    with pytest.raises(errors.OAuthNotConfigured):
        oauth.authorization_url("google", redirect_uri="https://crm.test/cb", state="s", code_verifier="v" * 43)


def test_oauth_authorize_url_exchange_and_refresh(google_configured, token_endpoint):
    verifier = oauth.new_code_verifier()
    url = oauth.authorization_url(
        "google", redirect_uri="https://crm.test/cb", state="st4te", code_verifier=verifier, login_hint="a@gmail.com"
    )
    assert url.startswith("https://accounts.google.com/o/oauth2/v2/auth?")
    for part in ("client_id=client-123.apps.example", "state=st4te", "access_type=offline", "mail.google.com"):
        assert part in url
    # PKCE (RFC 7636): the S256 challenge goes to the consent page, the verifier only to the token endpoint.
    assert f"code_challenge={oauth.code_challenge(verifier)}" in url and "code_challenge_method=S256" in url
    assert verifier not in url

    token_endpoint.responses = [
        {"access_token": "at-1", "refresh_token": "rt-1", "expires_in": 3599, "id_token": id_token_for("A@Gmail.com")},
        {"access_token": "at-2", "expires_in": 3599},  # Google sends no new refresh token on refresh
        {"error": "invalid_grant", "error_description": "Token has been expired or revoked."},
    ]
    tokens = oauth.exchange_code("google", code="the-code", redirect_uri="https://crm.test/cb", code_verifier=verifier)
    assert (tokens.access_token, tokens.refresh_token, tokens.email) == ("at-1", "rt-1", "a@gmail.com")
    assert token_endpoint.requests[0][1]["grant_type"] == "authorization_code"
    assert token_endpoint.requests[0][1]["code_verifier"] == verifier
    assert token_endpoint.requests[0][1]["client_secret"] == "client-secret-abc"
    refreshed = oauth.refresh_access_token("google", refresh_token="rt-1")
    assert (refreshed.access_token, refreshed.refresh_token) == ("at-2", "rt-1")
    assert oauth.OAuthTokens.from_secret(refreshed.to_secret()) == refreshed
    with pytest.raises(errors.OAuthFailed) as caught:
        oauth.refresh_access_token("google", refresh_token="rt-1")
    assert "invalid_grant" in caught.value.detail and caught.value.needs_reauth


def test_token_endpoint_unreachable_is_classified(closed_port):
    with pytest.raises(errors.Unreachable):
        oauth.post_token_request(f"http://127.0.0.1:{closed_port}/token", {"grant_type": "x"}, timeout=2)


def test_xoauth2_sasl_string():
    assert oauth.xoauth2_string("a@b.test", "tok") == "user=a@b.test\x01auth=Bearer tok\x01\x01"
    assert base64.b64decode(oauth.xoauth2_base64("a@b.test", "tok")) == b"user=a@b.test\x01auth=Bearer tok\x01\x01"


# --------------------------------------------------------------------------------------------------
# Services against the real servers


@pytest.fixture
def trusted_test_ca(settings, test_ca):
    """What an admin of a self-hosted deployment does: trust the company CA for every account (A4)."""
    settings.MAILSYNC_TRUSTED_CA_FILE = str(test_ca.ca_path)
    return test_ca


def dovecot_settings(dovecot, smtp_server, user, **overrides) -> config.AccountSettings:
    values = {
        "email_address": user.address,
        "provider": "custom",
        "username": user.username,
        "auth_kind": AuthKind.PASSWORD,
        "imap_host": dovecot.host,
        "imap_port": dovecot.imaps_port,
        "imap_security": "ssl",
        "smtp_host": smtp_server.host,
        "smtp_port": smtp_server.port,
        "smtp_security": "starttls",
    }
    values.update(overrides)
    return config.AccountSettings(**values)


def make_messages(account: EmailAccount, count: int) -> list[int]:
    thread = EmailThread.objects.create(owner=account.user, subject="Synced before")
    return [
        EmailMessage.objects.create(
            account=account, thread=thread, message_key=f"key-{account.pk}-{i}", subject=str(i)
        ).pk
        for i in range(count)
    ]


@pytest.fixture
def connected_account(db, alice, dovecot, smtp_server, mail_user, trusted_test_ca):
    account_settings = dovecot_settings(dovecot, smtp_server, mail_user)
    config.check_connection(account_settings=account_settings, secret=mail_user.password)
    return services.connect_account(user=alice, account_settings=account_settings, secret=mail_user.password)


@pytest.mark.dovecot
def test_check_connection_uses_the_deployment_ca(db, dovecot, smtp_server, mail_user, settings, test_ca):
    account_settings = dovecot_settings(dovecot, smtp_server, mail_user)
    settings.MAILSYNC_TRUSTED_CA_FILE = ""
    with pytest.raises(errors.TlsCertificateError):
        config.check_connection(account_settings=account_settings, secret=mail_user.password)
    settings.MAILSYNC_TRUSTED_CA_FILE = str(test_ca.ca_path)
    config.check_connection(account_settings=account_settings, secret=mail_user.password)
    # IMAP is fine; the SMTP step runs too (here the server wants STARTTLS before offering AUTH).
    with pytest.raises(errors.SmtpAuthUnavailable):
        config.check_connection(
            account_settings=dovecot_settings(dovecot, smtp_server, mail_user, smtp_security="none"),
            secret=mail_user.password,
        )


@pytest.mark.dovecot
def test_connect_starts_the_sync_task_which_sets_the_state(
    connected_account, django_capture_on_commit_callbacks, alice, dovecot, smtp_server, mail_user
):
    assert connected_account.state == State.CONNECTING
    assert connected_account.get_secret() == mail_user.password
    assert list(connected_account.addresses.values_list("address", flat=True)) == [mail_user.address]
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        services.connect_account(
            user=alice,
            account_settings=dovecot_settings(dovecot, smtp_server, mail_user),
            secret=mail_user.password,
        )
    assert len(callbacks) == 1  # tasks.sync_account enqueued on commit (eager in tests)
    connected_account.refresh_from_db()
    # The task ran a real sync of the (empty) mailbox: initial sync done, now incremental.
    assert connected_account.state == State.SYNCING
    assert connected_account.initial_sync_done_at is not None
    assert connected_account.last_success_at is not None and connected_account.last_sync_at is not None
    assert connected_account.folders.filter(role="inbox").exists()


@pytest.mark.dovecot
def test_readding_the_same_mailbox_reuses_the_row_and_keeps_messages(
    connected_account, alice, dovecot, smtp_server, mail_user
):
    message_ids = make_messages(connected_account, 2)
    MailFolder.objects.create(account=connected_account, name="INBOX", role="inbox", uidvalidity=7, uidnext=3)
    services.pause_account(account=connected_account)
    services.remove_account(account=connected_account)
    connected_account.refresh_from_db()
    assert connected_account.state == State.REMOVED and connected_account.removed_at is not None
    assert connected_account.secret_encrypted == ""
    assert sorted(EmailMessage.objects.filter(account=connected_account).values_list("pk", flat=True)) == message_ids

    again = services.connect_account(
        user=alice,
        account_settings=dovecot_settings(dovecot, smtp_server, mail_user, email_address=mail_user.address.upper()),
        secret=mail_user.password,
    )
    assert again.pk == connected_account.pk
    assert EmailAccount.objects.filter(user=alice).count() == 1
    assert again.state == State.CONNECTING and again.removed_at is None
    assert again.get_secret() == mail_user.password
    assert sorted(EmailMessage.objects.filter(account=again).values_list("pk", flat=True)) == message_ids
    assert MailFolder.objects.get(account=again).uidvalidity == 7  # cursors kept: sync continues, no duplicates
    assert AccountAddress.objects.filter(account=again).count() == 1


@pytest.mark.dovecot
def test_several_accounts_per_user(connected_account, alice, dovecot, smtp_server, trusted_test_ca):
    second_user = dovecot.add_user()
    services.connect_account(
        user=alice,
        account_settings=dovecot_settings(dovecot, smtp_server, second_user),
        secret=second_user.password,
    )
    assert EmailAccount.objects.filter(user=alice).count() == 2


@pytest.mark.dovecot
def test_changed_password_needs_reauth_then_retry_then_new_password(connected_account, mail_user):
    connected_account.set_secret("an-old-password")  # the user changed the password at the provider
    connected_account.save(update_fields=["secret_encrypted"])
    make_messages(connected_account, 1)

    tasks.sync_account(connected_account.pk)
    connected_account.refresh_from_db()
    assert connected_account.state == State.NEEDS_REAUTH
    assert connected_account.last_error_code == "auth_failed" and connected_account.last_error_fix

    assert services.reauthenticate(account=connected_account).code == "auth_failed"  # stored data first
    assert services.reauthenticate(account=connected_account, new_secret="still-wrong").code == "auth_failed"
    connected_account.refresh_from_db()
    assert connected_account.get_secret() == "an-old-password"  # a failing password is not stored

    assert services.reauthenticate(account=connected_account, new_secret=mail_user.password) is None
    connected_account.refresh_from_db()
    assert connected_account.state == State.CONNECTING and connected_account.last_error_code == ""
    assert connected_account.get_secret() == mail_user.password
    assert EmailMessage.objects.filter(account=connected_account).count() == 1


@pytest.mark.dovecot
def test_unreachable_server_is_a_transient_error_with_backoff(connected_account, closed_port):
    EmailAccount.objects.filter(pk=connected_account.pk).update(imap_port=closed_port)
    connected_account.refresh_from_db()
    error = services.retest_account(account=connected_account)
    connected_account.refresh_from_db()
    assert error.code == "unreachable" and error.transient
    assert connected_account.state == State.ERROR
    assert connected_account.next_retry_at > timezone.now()
    assert connected_account.consecutive_failures == 1


@pytest.mark.dovecot
def test_paused_account_is_not_synced_and_resume_restarts(connected_account, django_capture_on_commit_callbacks):
    services.pause_account(account=connected_account)
    tasks.sync_account(connected_account.pk)
    connected_account.refresh_from_db()
    assert connected_account.state == State.PAUSED and connected_account.last_sync_at is None
    with django_capture_on_commit_callbacks(execute=True):
        services.resume_account(account=connected_account)
    connected_account.refresh_from_db()
    assert connected_account.state == State.SYNCING  # the resumed sync ran (eager) and finished
    assert connected_account.last_success_at is not None


@pytest.mark.dovecot
def test_oauth_account_refreshes_its_token_and_logs_in_with_xoauth2(
    db, alice, dovecot, smtp_server, mail_user, trusted_test_ca, google_configured, token_endpoint
):
    expired = oauth.OAuthTokens(
        provider="google",
        access_token="expired-access-token",
        refresh_token="refresh-1",
        expires_at=timezone.now() - dt.timedelta(minutes=5),
        email=mail_user.address,
    )
    account_settings = dovecot_settings(dovecot, smtp_server, mail_user, auth_kind=AuthKind.OAUTH2)
    account = services.connect_account(user=alice, account_settings=account_settings, secret=expired.to_secret())
    token_endpoint.responses = [{"access_token": mail_user.access_token, "expires_in": 3600}]

    tasks.sync_account(account.pk)  # refresh (token endpoint), then XOAUTH2 on real Dovecot and aiosmtpd

    account.refresh_from_db()
    assert account.state == State.SYNCING, account.last_error_message
    assert account.folders.filter(role="inbox").exists()  # the sync itself logged in with XOAUTH2
    stored = oauth.OAuthTokens.from_secret(account.get_secret())
    assert (stored.access_token, stored.refresh_token) == (mail_user.access_token, "refresh-1")
    assert token_endpoint.requests[0][1]["grant_type"] == "refresh_token"
    assert config.account_imap_config(account).secret == mail_user.access_token  # no second refresh
    assert len(token_endpoint.requests) == 1


def test_reset_folder_sync_state_keeps_messages(db, alice):
    account = EmailAccount.objects.create(user=alice, email_address="a@x.test", imap_host="imap.x.test")
    folder = MailFolder.objects.create(account=account, name="INBOX", uidvalidity=5, uidnext=10, highestmodseq=99)
    make_messages(account, 2)
    services.reset_folder_sync_state(folder=folder)
    folder.refresh_from_db()
    assert (folder.uidvalidity, folder.uidnext, folder.highestmodseq) == (None, None, None)
    assert EmailMessage.objects.filter(account=account).count() == 2


def test_resolve_settings_from_the_form():
    resolution = services.resolve_account_settings(
        {"email_address": "ann@icloud.com", "provider": "", "username": "", "imap_host": ""}, mx_lookup=failing_mx
    )
    assert resolution.account_settings.imap_host == "imap.mail.me.com"
    assert resolution.account_settings.auth_kind == AuthKind.APP_PASSWORD
    assert resolution.account_settings.smtp_port == 587
    unknown = services.resolve_account_settings(
        {"email_address": "ann@acme.example", "provider": "", "imap_host": ""}, mx_lookup=no_mx
    )
    assert unknown.account_settings is None and "acme.example" in unknown.problem
    exchange = services.resolve_account_settings(
        {"email_address": "ann@acme.example", "provider": "exchange", "imap_host": ""}, mx_lookup=failing_mx
    )
    assert exchange.account_settings is None and exchange.prefill["imap_host"] == "mail.acme.example"
    outlook = services.resolve_account_settings({"email_address": "ann@outlook.com", "imap_host": ""})
    assert outlook.account_settings is None and outlook.oauth_only
    typed = services.resolve_account_settings(
        {
            "email_address": "ann@acme.example",
            "provider": "",
            "imap_host": "imap.acme.example",
            "imap_port": None,
            "imap_security": "starttls",
            "smtp_host": "smtp.acme.example",
            "smtp_port": None,
            "smtp_security": "ssl",
        },
        mx_lookup=failing_mx,
    )
    assert (typed.account_settings.imap_port, typed.account_settings.smtp_port) == (143, 465)
    assert typed.account_settings.provider == "custom"


# --------------------------------------------------------------------------------------------------
# Pages (personas: alice owns the accounts, bob is a teammate, charlie an outsider, admin_user an admin)


def plain_account(user, address="alice@mail.example", **fields) -> EmailAccount:
    values = {"imap_host": "imap.mail.example", "smtp_host": "smtp.mail.example", "state": State.SYNCING}
    values.update(fields)
    account = EmailAccount(user=user, email_address=address, username=address, **values)
    account.set_secret("plain-account-password")
    account.save()
    return account


def htmx(**headers):
    return {"HTTP_HX_REQUEST": "true", **headers}


def test_settings_page_lists_own_accounts_only(alice_client, alice, bob):
    mine = plain_account(
        alice,
        last_error_code="auth_failed",
        last_error_message="Login refused.",
        state=State.NEEDS_REAUTH,
        last_error_fix="Type it again.",
    )
    plain_account(alice, "gone@mail.example", state=State.REMOVED)
    plain_account(bob, "bob@mail.example")
    response = alice_client.get(reverse("mailsync:settings"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "alice@mail.example" in html and "Login refused." in html and "Type it again." in html
    assert "Re-authenticate" in html
    assert "gone@mail.example" not in html and "bob@mail.example" not in html
    assert reverse("mailsync:account_test", args=[mine.pk]) in html
    assert 'href="/mail/settings/"' in html  # the navigation link


def test_settings_page_shows_the_last_try_only_when_it_failed(alice_client, alice):
    from django.utils import timezone

    worked = timezone.now() - timezone.timedelta(hours=2)
    account = plain_account(alice, state=State.SYNCING, last_sync_at=worked, last_success_at=worked)
    assert "last try" not in alice_client.get(reverse("mailsync:settings")).content.decode()
    EmailAccount.objects.filter(pk=account.pk).update(last_sync_at=worked + timezone.timedelta(hours=1))
    assert "last try an hour ago" in alice_client.get(reverse("mailsync:settings")).content.decode()


def test_settings_page_says_how_many_changes_wait_for_the_mail_account(alice_client, alice):
    from mailsync.models import PendingServerAction

    account = plain_account(alice, state=State.PAUSED)
    html = alice_client.get(reverse("mailsync:settings")).content.decode()
    assert "still to be made in this mail account" not in html
    for action in ("archive", "read"):
        PendingServerAction.objects.create(account=account, action=action, message_ids=[1])
    html = alice_client.get(reverse("mailsync:settings")).content.decode()
    assert "2 changes made in the CRM still to be made in this mail account" in html


def test_settings_page_htmx_partial_and_wrong_method(alice_client, alice):
    plain_account(alice, state=State.CONNECTING)
    partial = alice_client.get(reverse("mailsync:settings"), **htmx())
    assert partial.status_code == 200
    assert b"<html" not in partial.content and b'id="account-list"' in partial.content
    assert b'hx-trigger="every 3s"' in partial.content  # keeps polling while an account connects
    assert alice_client.post(reverse("mailsync:settings")).status_code == 405


def test_account_list_status_polls_while_syncing_and_shows_one_state(alice_client, alice, bob):
    from django.utils import timezone

    account = plain_account(alice, state=State.INITIAL_SYNC)
    plain_account(bob, "bob@mail.example", state=State.INITIAL_SYNC)
    url = reverse("mailsync:account_list_status")
    html = alice_client.get(url, **htmx()).content.decode()
    assert "<html" not in html and 'data-polling="true"' in html and 'hx-trigger="every 3s"' in html
    assert "Initial sync of the last 3 days is running." in html and "bob@mail.example" not in html
    account.state, account.last_success_at = State.SYNCING, timezone.now()
    account.save(update_fields=["state", "last_success_at"])
    html = alice_client.get(url, **htmx()).content.decode()
    assert 'data-polling="false"' in html and "hx-trigger" not in html  # settled: the polling stops
    row = html[html.index('id="account-') :]
    # One state: the badge only (no "Working" beside "Syncing" beside "Up to date").
    assert row.count("Up to date") == 1 and "Syncing" not in row and "Working" not in row
    assert alice_client.get(url).status_code == 302  # a plain GET goes to the settings page
    assert alice_client.post(url, **htmx()).status_code == 405


@pytest.mark.parametrize("name", ["account_test", "account_pause", "account_resume"])
def test_post_only_account_actions_refuse_get(alice_client, alice, name):
    account = plain_account(alice)
    assert alice_client.get(reverse(f"mailsync:{name}", args=[account.pk])).status_code == 405


@pytest.mark.parametrize(
    ("name", "method"),
    [
        ("account_test", "post"),
        ("account_pause", "post"),
        ("account_resume", "post"),
        ("account_reauth", "get"),
        ("account_reauth", "post"),
        ("account_remove", "get"),
        ("account_remove", "post"),
    ],
)
def test_others_get_404_admins_included(alice, bob, charlie, admin_user, name, method):
    account = plain_account(alice, state=State.PAUSED)
    for other in (bob, charlie, admin_user):
        response = getattr(client_for(other), method)(reverse(f"mailsync:{name}", args=[account.pk]))
        assert response.status_code == 404, (other, name)
    account.refresh_from_db()
    assert account.state == State.PAUSED and account.has_secret


def test_pause_and_resume_from_the_page(alice_client, alice, django_capture_on_commit_callbacks):
    account = plain_account(alice)
    response = alice_client.post(reverse("mailsync:account_pause", args=[account.pk]))
    assert response.status_code == 302 and response.url == reverse("mailsync:settings")
    account.refresh_from_db()
    assert account.state == State.PAUSED
    with django_capture_on_commit_callbacks() as callbacks:
        row = alice_client.post(reverse("mailsync:account_resume", args=[account.pk]), **htmx())
    assert row.status_code == 200 and row.content.decode().lstrip().startswith(f'<tr id="account-{account.pk}"')
    assert "is resumed" in row.content.decode()
    account.refresh_from_db()
    assert account.state == State.CONNECTING and len(callbacks) == 1


def test_remove_confirms_that_mail_is_kept_and_hides_the_account(alice_client, alice):
    from mailsync.models import PendingServerAction

    account = plain_account(alice)
    message_ids = make_messages(account, 2)
    PendingServerAction.objects.create(account=account, action="archive", message_ids=message_ids)
    confirm = alice_client.get(reverse("mailsync:account_remove", args=[account.pk]))
    assert confirm.status_code == 200 and "Email already synced stays in the CRM" in confirm.content.decode()
    response = alice_client.post(reverse("mailsync:account_remove", args=[account.pk]))
    assert response.status_code == 302
    account.refresh_from_db()
    assert account.state == State.REMOVED and not account.has_secret
    assert sorted(EmailMessage.objects.filter(account=account).values_list("pk", flat=True)) == message_ids
    assert not PendingServerAction.objects.exists()  # not replayed if the mailbox is added again later
    assert f'id="account-{account.pk}"' not in alice_client.get(reverse("mailsync:settings")).content.decode()
    assert alice_client.post(reverse("mailsync:account_remove", args=[account.pk])).status_code == 404


def test_add_page_renders_and_refuses_put(alice_client):
    response = alice_client.get(reverse("mailsync:account_add") + "?email_address=ann@yahoo.com")
    html = response.content.decode()
    assert response.status_code == 200
    assert 'name="password"' in html and "Yahoo! Mail needs an app password" in html
    assert alice_client.put(reverse("mailsync:account_add")).status_code == 405


def test_provider_hint_partial(alice_client, monkeypatch):
    monkeypatch.delenv("GOOGLE_OAUTH_CLIENT_ID", raising=False)
    url = reverse("mailsync:provider_hint")
    hint = alice_client.get(url, {"email_address": "ann@gmail.com"}, **htmx())
    html = hint.content.decode()
    assert hint.status_code == 200 and "<html" not in html
    assert "Gmail" in html and "not configured on this CRM" in html and "app password" in html
    monkeypatch.setenv("GOOGLE_OAUTH_CLIENT_ID", "id")
    monkeypatch.setenv("GOOGLE_OAUTH_CLIENT_SECRET", "secret")
    html = alice_client.get(url, {"email_address": "ann@gmail.com"}, **htmx()).content.decode()
    assert "Connect with Google" in html and reverse("mailsync:oauth_start", args=["google"]) in html
    outlook = alice_client.get(url, {"email_address": "ann@outlook.com"}, **htmx()).content.decode()
    assert "accepts only sign-in with Microsoft" in outlook
    plain = alice_client.get(url, {"email_address": "ann@gmail.com"})
    assert plain.status_code == 302 and plain.url.startswith(reverse("mailsync:account_add"))
    assert alice_client.post(url).status_code == 405


def test_add_unknown_domain_asks_for_servers(alice_client, monkeypatch):
    monkeypatch.setattr(providers, "lookup_mx", no_mx)
    response = alice_client.post(
        reverse("mailsync:account_add"), {"email_address": "ann@acme.example", "password": "pw-typed"}
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert "We do not know the mail servers of acme.example" in html
    assert '<details class="server-settings" open>' in html
    assert 'value="ann@acme.example"' in html and "pw-typed" not in html
    assert not EmailAccount.objects.exists()


def test_add_outlook_with_a_password_explains_oauth_only(alice_client):
    response = alice_client.post(
        reverse("mailsync:account_add"), {"email_address": "ann@outlook.com", "password": "pw-typed"}
    )
    assert "accepts only “Connect with Microsoft”" in response.content.decode()
    assert not EmailAccount.objects.exists()


def test_add_refuses_unencrypted_connections_to_remote_servers(alice_client):
    response = alice_client.post(
        reverse("mailsync:account_add"),
        {
            "email_address": "ann@acme.example",
            "password": "pw",
            "imap_host": "imap.acme.example",
            "imap_security": "none",
            "smtp_host": "smtp.acme.example",
            "smtp_security": "ssl",
        },
    )
    assert "Unencrypted connections are only allowed" in response.content.decode()
    assert not EmailAccount.objects.exists()


def add_form_data(dovecot, smtp_server, user, password, **extra):
    data = {
        "email_address": user.address,
        "password": password,
        "provider": "custom",
        "imap_host": dovecot.host,
        "imap_port": dovecot.imaps_port,
        "imap_security": "ssl",
        "smtp_host": smtp_server.host,
        "smtp_port": smtp_server.port,
        "smtp_security": "starttls",
    }
    data.update(extra)
    return data


@pytest.mark.dovecot
def test_add_with_wrong_password_shows_the_classified_error_and_keeps_the_input(
    alice_client, dovecot, smtp_server, mail_user, trusted_test_ca, caplog
):
    caplog.set_level(logging.DEBUG)
    response = alice_client.post(
        reverse("mailsync:account_add"), add_form_data(dovecot, smtp_server, mail_user, "Wrong-Pass-99")
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert 'data-error-code="auth_failed"' in html
    assert "did not accept the username or password" in html and "How to fix it" in html
    assert f'value="{mail_user.address}"' in html and f'value="{dovecot.imaps_port}"' in html
    assert "Wrong-Pass-99" not in html and "Wrong-Pass-99" not in caplog.text
    assert "Traceback" not in html
    assert not EmailAccount.objects.exists()


@pytest.mark.dovecot
def test_add_against_an_untrusted_server_shows_the_certificate_problem(
    alice_client, dovecot, smtp_server, mail_user, settings
):
    settings.MAILSYNC_TRUSTED_CA_FILE = ""
    response = alice_client.post(
        reverse("mailsync:account_add"), add_form_data(dovecot, smtp_server, mail_user, mail_user.password)
    )
    html = response.content.decode()
    assert 'data-error-code="tls_untrusted"' in html and "administrator can trust" in html
    assert not EmailAccount.objects.exists()


@pytest.mark.dovecot
def test_add_success_saves_encrypted_and_never_renders_the_password(
    alice_client,
    alice,
    support,
    dovecot,
    smtp_server,
    mail_user,
    trusted_test_ca,
    caplog,
    django_capture_on_commit_callbacks,
):
    caplog.set_level(logging.DEBUG)
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_client.post(
            reverse("mailsync:account_add"), add_form_data(dovecot, smtp_server, mail_user, mail_user.password)
        )
    assert response.status_code == 302 and response.url == reverse("mailsync:settings")
    account = EmailAccount.objects.get(user=alice)
    assert account.state == State.SYNCING  # connected, then the (eager) initial sync of an empty mailbox
    assert account.secret_encrypted and mail_user.password not in account.secret_encrypted

    page = alice_client.get(reverse("mailsync:settings")).content.decode()
    assert mail_user.address in page and "is connected" in page
    reauth = alice_client.get(reverse("mailsync:account_reauth", args=[account.pk])).content.decode()
    admin = client_for(support)
    admin_page_response = admin.get(reverse("admin:mailsync_emailaccount_change", args=[account.pk]))
    assert admin_page_response.status_code == 200
    admin_page = admin_page_response.content.decode()
    admin_list = admin.get(reverse("admin:mailsync_emailaccount_changelist")).content.decode()
    assert mail_user.address in admin_list
    for html in (page, reauth, admin_page, admin_list):
        assert mail_user.password not in html
        assert account.secret_encrypted not in html
    assert "secret_encrypted" not in admin_page
    assert mail_user.password not in caplog.text


@pytest.mark.dovecot
def test_remove_and_add_again_through_the_pages_keeps_one_account_and_its_mail(
    alice_client, alice, dovecot, smtp_server, mail_user, trusted_test_ca
):
    data = add_form_data(dovecot, smtp_server, mail_user, mail_user.password)
    assert alice_client.post(reverse("mailsync:account_add"), data).status_code == 302
    account = EmailAccount.objects.get(user=alice)
    message_ids = make_messages(account, 2)
    assert alice_client.post(reverse("mailsync:account_remove", args=[account.pk])).status_code == 302
    assert alice_client.post(reverse("mailsync:account_add"), data).status_code == 302
    assert list(EmailAccount.objects.filter(user=alice).values_list("pk", "state")) == [(account.pk, State.CONNECTING)]
    assert sorted(EmailMessage.objects.filter(account=account).values_list("pk", flat=True)) == message_ids
    assert EmailMessage.objects.count() == 2


@pytest.mark.dovecot
def test_test_connection_button(alice_client, connected_account, mail_user):
    row = alice_client.post(reverse("mailsync:account_test", args=[connected_account.pk]), **htmx())
    assert row.status_code == 200 and "the connection works" in row.content.decode()
    connected_account.set_secret("wrong-now")
    connected_account.save(update_fields=["secret_encrypted"])
    response = alice_client.post(reverse("mailsync:account_test", args=[connected_account.pk]))
    assert response.status_code == 302
    connected_account.refresh_from_db()
    assert connected_account.state == State.NEEDS_REAUTH
    page = alice_client.get(reverse("mailsync:settings")).content.decode()
    assert "did not accept the username or password" in page and "Re-authenticate" in page


@pytest.mark.dovecot
def test_reauthenticate_page_retries_then_asks(alice_client, connected_account, mail_user):
    connected_account.set_secret("outdated")
    connected_account.save(update_fields=["secret_encrypted"])
    url = reverse("mailsync:account_reauth", args=[connected_account.pk])
    retried = alice_client.post(url)  # the button on the settings page: stored data first
    html = retried.content.decode()
    assert retried.status_code == 200 and 'data-error-code="auth_failed"' in html
    assert 'name="password"' in html and "outdated" not in html
    wrong = alice_client.post(url, {"password": "still-wrong"})
    assert wrong.status_code == 200 and "still-wrong" not in wrong.content.decode()
    fixed = alice_client.post(url, {"password": mail_user.password})
    assert fixed.status_code == 302
    connected_account.refresh_from_db()
    assert connected_account.state == State.CONNECTING and connected_account.get_secret() == mail_user.password


def test_oauth_start_when_not_configured(alice_client, monkeypatch):
    monkeypatch.delenv("MICROSOFT_OAUTH_CLIENT_ID", raising=False)
    response = alice_client.get(reverse("mailsync:oauth_start", args=["microsoft"]) + "?email_address=a@outlook.com")
    assert response.status_code == 302 and response.url.startswith(reverse("mailsync:account_add"))
    page = alice_client.get(response.url).content.decode()
    assert "Sign-in with Microsoft is not configured" in page


def test_oauth_round_trip_creates_an_oauth_account(alice_client, alice, google_configured, token_endpoint):
    start = alice_client.get(reverse("mailsync:oauth_start", args=["google"]) + "?email_address=ann@gmail.com")
    assert start.status_code == 302 and start.url.startswith("https://accounts.google.com/")
    state = alice_client.session["mailsync_oauth"]["state"]
    assert f"state={state}" in start.url and "login_hint=ann%40gmail.com" in start.url

    forged = alice_client.get(reverse("mailsync:oauth_callback"), {"state": "forged", "code": "c"})
    assert forged.status_code == 302 and not EmailAccount.objects.exists()

    second_start = alice_client.get(reverse("mailsync:oauth_start", args=["google"]) + "?email_address=ann@gmail.com")
    state = alice_client.session["mailsync_oauth"]["state"]
    verifier = alice_client.session["mailsync_oauth"]["code_verifier"]
    assert f"code_challenge={oauth.code_challenge(verifier)}" in second_start.url
    token_endpoint.responses = [
        {"access_token": "at-1", "refresh_token": "rt-1", "expires_in": 3600, "id_token": id_token_for("ann@gmail.com")}
    ]
    done = alice_client.get(reverse("mailsync:oauth_callback"), {"state": state, "code": "auth-code"})
    assert done.status_code == 302 and done.url == reverse("mailsync:settings")
    account = EmailAccount.objects.get(user=alice)
    assert (account.email_address, account.provider, account.auth_kind) == ("ann@gmail.com", "gmail", "oauth2")
    assert (account.imap_host, account.smtp_host) == ("imap.gmail.com", "smtp.gmail.com")
    tokens = oauth.OAuthTokens.from_secret(account.get_secret())
    assert (tokens.access_token, tokens.refresh_token) == ("at-1", "rt-1")
    assert "rt-1" not in account.secret_encrypted
    assert token_endpoint.requests[0][1]["code"] == "auth-code"
    assert token_endpoint.requests[0][1]["code_verifier"] == verifier


def test_pkce_challenge_is_rfc7636_s256():
    # RFC 7636, appendix B.
    assert (
        oauth.code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")
        == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    )
    verifier = oauth.new_code_verifier()
    assert 43 <= len(verifier) <= 128 and verifier != oauth.new_code_verifier()


# --------------------------------------------------------------------------------------------------
# Admin (O1)


@pytest.fixture
def support(db):
    from crm.models import User

    return User.objects.create_superuser(email="support@company.test", password="support-password-1")


def test_admin_list_counts_without_n_plus_one(support, alice, bob, django_assert_max_num_queries):
    for user, address in ((alice, "a1@mail.example"), (alice, "a2@mail.example"), (bob, "b@mail.example")):
        account = plain_account(user, address)
        make_messages(account, 3)
        MailFolder.objects.create(account=account, name="INBOX")
    admin = client_for(support)
    with django_assert_max_num_queries(12):
        response = admin.get(reverse("admin:mailsync_emailaccount_changelist"))
    html = response.content.decode()
    assert response.status_code == 200
    assert html.count('<td class="field-message_count">3</td>') == 3
    assert html.count('<td class="field-folder_count">1</td>') == 3
    with django_assert_max_num_queries(12):
        admin.get(reverse("admin:mailsync_emailaccount_changelist"), {"state__exact": "syncing"})


def test_admin_actions_pause_resume_sync_now_and_folder_reset(support, alice, django_capture_on_commit_callbacks):
    account = plain_account(alice, state=State.SYNCING)
    folder = MailFolder.objects.create(account=account, name="INBOX", uidvalidity=3, uidnext=9, highestmodseq=4)
    admin = client_for(support)
    changelist = reverse("admin:mailsync_emailaccount_changelist")
    admin.post(changelist, {"action": "pause_sync", "_selected_action": [account.pk]})
    account.refresh_from_db()
    assert account.state == State.PAUSED
    with django_capture_on_commit_callbacks() as callbacks:
        admin.post(changelist, {"action": "resume_sync", "_selected_action": [account.pk]})
    account.refresh_from_db()
    assert account.state == State.CONNECTING and len(callbacks) == 1
    # "Sync now" runs the sync task (eager here); this account's server name does not resolve.
    admin.post(changelist, {"action": "sync_now", "_selected_action": [account.pk]})
    account.refresh_from_db()
    assert account.state == State.ERROR and account.last_error_code == "unreachable"
    admin.post(
        reverse("admin:mailsync_mailfolder_changelist"), {"action": "reset_sync_state", "_selected_action": [folder.pk]}
    )
    folder.refresh_from_db()
    assert (folder.uidvalidity, folder.uidnext, folder.highestmodseq) == (None, None, None)


def test_admin_can_trust_a_custom_ca_but_not_garbage(support, alice, test_ca):
    account = plain_account(alice)
    admin = client_for(support)
    url = reverse("admin:mailsync_emailaccount_change", args=[account.pk])
    form = {
        "display_name": "",
        "provider": "custom",
        "username": account.username,
        "imap_host": account.imap_host,
        "imap_port": 993,
        "imap_security": "ssl",
        "smtp_host": account.smtp_host,
        "smtp_port": 465,
        "smtp_security": "ssl",
        "attachment_limit_mb": 25,
        "initial_sync_days": 3,
        "sync_all_folders": "on",
        "addresses-TOTAL_FORMS": 0,
        "addresses-INITIAL_FORMS": 0,
        "trusted_ca_pem": "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----",
    }
    bad = admin.post(url, form)
    assert bad.status_code == 200 and "not a valid PEM" in bad.content.decode()
    harmless = admin.post(url, {**form, "trusted_ca_pem": "", "attachment_limit_mb": 20})
    assert harmless.status_code == 302
    account.refresh_from_db()
    assert account.attachment_limit_mb == 20
    assert account.get_secret() == "plain-account-password"  # a change that does not re-route credentials
    good = admin.post(url, {**form, "trusted_ca_pem": test_ca.ca_pem})
    assert good.status_code == 302
    account.refresh_from_db()
    assert account.trusted_ca_pem.strip() == test_ca.ca_pem.strip()
    # A CA trusted by staff could let them intercept the connection: the owner re-enters the password.
    assert account.get_secret() == "" and account.state == State.NEEDS_REAUTH
    assert client_for(alice).get(url).status_code == 302  # not staff: sent to the admin login


def test_reserved_domains_are_not_looked_up_in_dns(monkeypatch):
    import dns.resolver

    from mailsync.accounts import providers

    def no_dns(*args, **kwargs):
        raise AssertionError("DNS must not be asked about a reserved domain")

    monkeypatch.setattr(dns.resolver.Resolver, "resolve", no_dns)
    assert providers.lookup_mx("mail.test") == []
    assert providers.lookup_mx("corp.example") == []
