"""Account health (A5, A6, O2): status per account, "Sync now", the banner on every page, and the
admin-only status page that shows every account's sync state but never mail or credentials."""

import datetime as dt

import pytest
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone

from conftest import client_for
from crm.context_processors import mail_attention
from mailsync.accounts import health
from mailsync.models import EmailAccount
from tests.mail_factories import EmailAccountFactory, create_thread

pytestmark = pytest.mark.django_db

State = EmailAccount.State
HTMX = {"HX-Request": "true"}


def make(user, address="alice@mail.example", *, minutes_since_success=1, **fields) -> EmailAccount:
    now = timezone.now()
    values = {
        "state": State.SYNCING,
        "last_success_at": now - dt.timedelta(minutes=minutes_since_success) if minutes_since_success else None,
        "initial_sync_done_at": now - dt.timedelta(days=1),
    }
    values.update(fields)
    account = EmailAccountFactory(user=user, email_address=address, **values)
    if "created_at" in fields:  # auto_now_add ignores a given value
        EmailAccount.objects.filter(pk=account.pk).update(created_at=fields["created_at"])
        account.refresh_from_db()
    return account


def status_of(account) -> str:
    return health.account_health(account).status


# --- Status per account -------------------------------------------------------------------------------------


def test_statuses(alice, settings):
    settings.MAILSYNC_SYNC_INTERVAL = 60
    long_ago = timezone.now() - dt.timedelta(hours=2)
    assert status_of(make(alice, "ok@x.example")) == health.OK
    assert status_of(make(alice, "new@x.example", state=State.CONNECTING, minutes_since_success=0)) == health.SYNCING
    assert status_of(make(alice, "initial@x.example", state=State.INITIAL_SYNC)) == health.SYNCING
    first = health.account_health(make(alice, "first@x.example", minutes_since_success=0))
    assert (first.status, first.summary) == (health.SYNCING, "Waiting for its first sync.")
    assert status_of(make(alice, "past@x.example", past_sync_state="running")) == health.SYNCING
    assert status_of(make(alice, "paused@x.example", state=State.PAUSED, minutes_since_success=600)) == health.PAUSED
    assert status_of(make(alice, "removed@x.example", state=State.REMOVED)) == health.REMOVED

    reauth = make(
        alice,
        "reauth@x.example",
        state=State.NEEDS_REAUTH,
        last_error_message="The server did not accept the username or password.",
        last_error_fix="Type the password again, or create an app password.",
    )
    result = health.account_health(reauth)
    assert result.needs_attention and result.summary.startswith("The server did not accept")
    assert result.fix == "Type the password again, or create an app password."

    failing = make(
        alice,
        "error@x.example",
        state=State.ERROR,
        last_error_message="Cannot reach imap.x.example.",
        last_error_fix="Check the server name and port.",
        next_retry_at=timezone.now() + dt.timedelta(minutes=30),
    )
    result = health.account_health(failing)
    assert result.needs_attention and "Next automatic try in 29" in result.fix

    stale = make(alice, "stale@x.example", minutes_since_success=120)
    result = health.account_health(stale)
    assert result.needs_attention and result.stale and "No successful sync for 2" in result.summary
    never = make(alice, "never@x.example", minutes_since_success=0, created_at=long_ago, state=State.CONNECTING)
    assert health.account_health(never).stale and "not synced successfully yet" in health.account_health(never).summary


def test_stale_needs_three_intervals_and_at_least_the_minimum(alice, settings):
    settings.MAILSYNC_SYNC_INTERVAL = 60
    assert health.stale_after() == dt.timedelta(seconds=health.MIN_STALE_SECONDS)
    nine_minutes = make(alice, "a@x.example", minutes_since_success=9)
    assert status_of(nine_minutes) == health.OK
    settings.MAILSYNC_SYNC_INTERVAL = 3600
    assert health.stale_after() == dt.timedelta(hours=3)
    assert status_of(make(alice, "b@x.example", minutes_since_success=120)) == health.OK
    assert status_of(make(alice, "c@x.example", minutes_since_success=200)) == health.ATTENTION


def test_the_banner_query_agrees_with_the_status(alice, settings):
    settings.MAILSYNC_SYNC_INTERVAL = 60
    long_ago = timezone.now() - dt.timedelta(hours=5)
    accounts = [
        make(alice, "ok@x.example"),
        make(alice, "reauth@x.example", state=State.NEEDS_REAUTH),
        make(alice, "error@x.example", state=State.ERROR),
        make(alice, "stale@x.example", minutes_since_success=60),
        make(alice, "never@x.example", minutes_since_success=0, created_at=long_ago, state=State.INITIAL_SYNC),
        make(alice, "fresh@x.example", minutes_since_success=0, state=State.CONNECTING),
        make(alice, "paused@x.example", state=State.PAUSED, minutes_since_success=600),
        make(alice, "removed@x.example", state=State.REMOVED, minutes_since_success=600),
    ]
    expected = sorted(a.email_address for a in accounts if health.account_health(a).needs_attention)
    assert expected == ["error@x.example", "never@x.example", "reauth@x.example", "stale@x.example"]
    banner = health.accounts_needing_attention(alice)
    assert [item.email_address for item in banner] == expected


# --- Banner -------------------------------------------------------------------------------------------------


def test_banner_on_every_page_when_an_account_needs_attention(alice):
    make(alice, state=State.NEEDS_REAUTH, last_error_message="The server refused the saved password.")
    client = client_for(alice)
    for url in (reverse("home"), reverse("contacts:person_list"), reverse("deals:deal_list")):
        html = client.get(url).content.decode()
        assert 'id="mail-attention-banner"' in html, url
        assert "alice@mail.example needs your attention" in html and "The server refused the saved password." in html
        assert f'href="{reverse("mailsync:settings")}"' in html


def test_no_banner_when_all_is_well_or_for_someone_else(alice, bob):
    make(alice)
    make(bob, "bob@mail.example", state=State.ERROR)
    html = client_for(alice).get(reverse("home")).content.decode()
    assert 'id="mail-attention-banner"' not in html
    assert 'id="mail-attention-banner"' in client_for(bob).get(reverse("home")).content.decode()


def test_banner_for_several_accounts_and_a_stale_one(alice, settings):
    settings.MAILSYNC_SYNC_INTERVAL = 60
    make(alice, "one@x.example", state=State.ERROR)
    make(alice, "two@x.example", minutes_since_success=90)
    html = client_for(alice).get(reverse("home")).content.decode()
    assert "2 of your mail accounts need your attention" in html
    assert "one@x.example" in html and "two@x.example" in html


def test_no_banner_and_no_query_for_anonymous_users(client, django_assert_num_queries):
    request = RequestFactory().get("/")
    from django.contrib.auth.models import AnonymousUser

    request.user = AnonymousUser()
    with django_assert_num_queries(0):
        assert mail_attention(request) == {}
    html = client.get(reverse("account_login")).content.decode()
    assert 'id="mail-attention-banner"' not in html


def test_banner_costs_one_query_and_only_when_shown(alice, django_assert_num_queries):
    make(alice, state=State.ERROR)
    request = RequestFactory().get("/")
    request.user = alice
    with django_assert_num_queries(0):
        context = mail_attention(request)  # lazy: a partial that never shows it costs nothing
    with django_assert_num_queries(1):
        assert len(context["mail_attention"]) == 1


# --- Sync now -----------------------------------------------------------------------------------------------


def test_sync_now_enqueues_a_sync(alice, django_capture_on_commit_callbacks):
    account = make(alice, state=State.ERROR, next_retry_at=timezone.now() + dt.timedelta(hours=1))
    url = reverse("mailsync:account_sync_now", args=[account.pk])
    with django_capture_on_commit_callbacks() as callbacks:
        row = client_for(alice).post(url, headers=HTMX)
    assert row.status_code == 200 and row.content.decode().lstrip().startswith(f'<tr id="account-{account.pk}"')
    assert "A sync of alice@mail.example has started" in row.content.decode()
    assert len(callbacks) == 1
    assert client_for(alice).get(url).status_code == 405


@pytest.mark.parametrize(
    ("state", "reason"), [(State.PAUSED, "resume it first"), (State.NEEDS_REAUTH, "re-authenticate")]
)
def test_sync_now_is_refused_with_the_reason(alice, django_capture_on_commit_callbacks, state, reason):
    account = make(alice, state=state)
    with django_capture_on_commit_callbacks() as callbacks:
        response = client_for(alice).post(reverse("mailsync:account_sync_now", args=[account.pk]), follow=True)
    assert reason in response.content.decode()
    assert not callbacks


@pytest.mark.dovecot
def test_sync_now_against_dovecot_clears_an_error(alice, dovecot, mail_user, django_capture_on_commit_callbacks):
    from tests.mailservers import make_message
    from tests.test_sync import make_account

    account = make_account(alice, mail_user, dovecot)
    EmailAccount.objects.filter(pk=account.pk).update(
        state=State.ERROR, last_error_code="timeout", last_error_message="The server did not answer in time."
    )
    dovecot.append(mail_user, make_message("Arrived while failing"))
    with django_capture_on_commit_callbacks(execute=True):
        client_for(alice).post(reverse("mailsync:account_sync_now", args=[account.pk]))
    account.refresh_from_db()
    assert account.state == State.SYNCING and account.last_error_code == ""
    assert health.account_health(account).status == health.OK
    assert account.messages.filter(subject="Arrived while failing").exists()
    assert 'id="mail-attention-banner"' not in client_for(alice).get(reverse("home")).content.decode()


# --- Settings page rows ------------------------------------------------------------------------------------


def test_settings_rows_show_health_with_the_fix(alice, settings):
    settings.MAILSYNC_SYNC_INTERVAL = 60
    make(alice, "stale@x.example", minutes_since_success=45)
    html = client_for(alice).get(reverse("mailsync:settings")).content.decode()
    assert 'data-health="attention"' in html and "No successful sync for 45" in html
    assert "How to fix it: Try “Sync now”" in html


# --- Admin status page (O2) --------------------------------------------------------------------------------


def test_status_page_is_for_company_admins_only(alice, bob, charlie, admin_user):
    url = reverse("mailsync:status")
    for user in (alice, bob, charlie):
        assert client_for(user).get(url).status_code == 404
        assert f'href="{url}"' not in client_for(user).get(reverse("home")).content.decode()
    assert client_for(admin_user).get(url).status_code == 200
    assert f'href="{url}"' in client_for(admin_user).get(reverse("home")).content.decode()
    assert client_for(admin_user).post(url).status_code == 405


def test_status_page_lists_every_account_without_mail_or_credentials(alice, bob, admin_user):
    broken = make(
        alice,
        state=State.NEEDS_REAUTH,
        last_error_code="auth_failed",
        last_error_message="Login refused.",
        last_error_detail="[AUTHENTICATIONFAILED] server words",
        consecutive_failures=3,
    )
    broken.set_secret("hunter2-secret")
    broken.save()
    make(bob, "bob@mail.example")
    make(bob, "old@mail.example", state=State.REMOVED)
    thread = create_thread(alice, sender="ann@acme.example", subject="Secret merger talks", account=broken)
    thread.messages.update(body_text="the merger price is 42", snippet="the merger price is 42")

    response = client_for(admin_user).get(reverse("mailsync:status"))
    html = response.content.decode()
    for address in ("alice@mail.example", "bob@mail.example", "old@mail.example"):
        assert address in html
    assert "auth_failed" in html and "Login refused." in html
    assert "Secret merger talks" not in html and "merger price" not in html and "ann@acme.example" not in html
    assert "hunter2" not in html and broken.secret_encrypted not in html
    assert "AUTHENTICATIONFAILED" not in html
    rows = html.split('id="account-status"')[1]
    assert rows.index("alice@mail.example") < rows.index("bob@mail.example")  # needing attention comes first
    counts = response.context["counts"]
    assert (counts[health.ATTENTION], counts[health.OK], counts[health.REMOVED]) == (1, 1, 1)


def test_status_page_shows_which_watcher_holds_each_account(alice, bob, admin_user):
    from mailsync.sync import leases

    watched = make(alice)
    url = reverse("mailsync:status")
    html = client_for(admin_user).get(url).content.decode()
    assert "No new-mail watcher is running" in html
    assert "not watched" in html

    leases.rebalance("crm-host-7:4242:abcd", leases.heartbeat("crm-host-7:4242:abcd"))
    make(bob, "bob@mail.example")
    html = client_for(admin_user).get(url).content.decode()
    assert "No new-mail watcher is running" not in html
    assert "crm-host-7 (pid 4242): 1 account" in html  # claimed before bob's account existed
    row = html.split(f'data-account="{watched.pk}"')[1].split("</tr>")[0]
    assert "crm-host-7" in row
