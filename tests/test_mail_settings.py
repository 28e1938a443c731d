"""Settings > Email sync beyond the account list: folders (S2), "Sync past emails" with progress (S4),
linking mode (L2/L3), default sharing (P1/P2), email links preference and the {% email_link %} tag (W6),
blocked addresses on the page (F1). Sync behaviour is checked against the real test Dovecot."""

import datetime as dt
import re

import pytest
from django.template import Context, Template
from django.test import RequestFactory
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from conftest import client_for
from mailsync.models import EmailAccount, EmailMessage, EmailThread, MailFolder, MailSettings
from mailsync.sync import engine
from tests.mail_factories import EmailAccountFactory, create_thread
from tests.mailservers import make_message
from tests.test_sync import deliver, live, make_account

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}
State = EmailAccount.State


@pytest.fixture
def account(alice):
    return EmailAccountFactory(user=alice, email_address="alice@mail.example")


def folders_for(account, *names_and_roles):
    return {
        name: MailFolder.objects.create(account=account, name=name, role=role, uidvalidity=1)
        for name, role in names_and_roles
    }


# --- The page ----------------------------------------------------------------------------------------------


def test_page_shows_every_section(alice, account):
    folders_for(account, ("INBOX", "inbox"), ("Sent", "sent"), ("Projects/2024", ""))
    MailFolder.objects.create(account=account, name="Gone", exists_on_server=False)
    MailFolder.objects.create(account=account, name="[Gmail]", noselect=True)
    html = client_for(alice).get(reverse("mailsync:settings")).content.decode()
    assert f'id="folders-{account.pk}"' in html
    assert "Projects/2024" in html and ">Gone<" not in html and "[Gmail]" not in html
    assert f'id="past-sync-{account.pk}"' in html
    assert "Offered once the initial sync (the last 3 days) has finished" in html
    assert 'name="months"' not in html  # not offered during the initial sync (S4)
    assert 'id="mail-preferences"' in html and "Only mail synced from now on gets this default" in html
    assert 'id="blocked-panel"' in html  # blocked addresses, with their preview step


def test_folders_appear_after_the_first_sync(alice, account):
    html = client_for(alice).get(reverse("mailsync:settings")).content.decode()
    assert "appear here after its first sync" in html
    assert 'name="folders"' not in html


def test_other_users_do_not_see_or_change_my_settings(alice, bob, charlie, admin_user, account):
    folders = folders_for(account, ("INBOX", "inbox"), ("Archive", "archive"))
    for other in (bob, charlie, admin_user):
        client = client_for(other)
        assert "alice@mail.example" not in client.get(reverse("mailsync:settings")).content.decode()
        urls = [
            ("post", reverse("mailsync:account_folders", args=[account.pk]), {"mode": "selected", "folders": []}),
            ("post", reverse("mailsync:past_sync", args=[account.pk]), {"months": 1}),
            ("get", reverse("mailsync:past_sync_progress", args=[account.pk]), {}),
            ("post", reverse("mailsync:account_sync_now", args=[account.pk]), {}),
        ]
        for method, url, data in urls:
            assert getattr(client, method)(url, data).status_code == 404, (other, url)
    account.refresh_from_db()
    assert account.sync_all_folders
    assert all(MailFolder.objects.filter(pk__in=[f.pk for f in folders.values()]).values_list("selected", flat=True))


@pytest.mark.parametrize("name", ["account_folders", "past_sync", "account_sync_now"])
def test_post_only(alice, account, name):
    assert client_for(alice).get(reverse(f"mailsync:{name}", args=[account.pk])).status_code == 405


def test_preferences_and_progress_refuse_wrong_methods(alice, account):
    client = client_for(alice)
    assert client.get(reverse("mailsync:preferences")).status_code == 405
    assert client.post(reverse("mailsync:past_sync_progress", args=[account.pk])).status_code == 405


# --- Folders (S2) ------------------------------------------------------------------------------------------


def test_choosing_folders_persists_and_switching_back_keeps_the_choice(
    alice, account, django_capture_on_commit_callbacks
):
    folders = folders_for(account, ("INBOX", "inbox"), ("Archive", "archive"), ("Newsletters", ""))
    url = reverse("mailsync:account_folders", args=[account.pk])
    client = client_for(alice)
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(
            url, {"mode": "selected", "folders": [folders["INBOX"].pk, folders["Archive"].pk]}, headers=HTMX
        )
    assert response.status_code == 200 and b"<html" not in response.content
    assert b"Folders saved" in response.content
    assert len(callbacks) == 1  # a sync starts so the choice takes effect now
    account.refresh_from_db()
    assert not account.sync_all_folders
    selected = dict(MailFolder.objects.filter(account=account).values_list("name", "selected"))
    assert selected == {"INBOX": True, "Archive": True, "Newsletters": False}

    response = client.post(url, {"mode": "all"})
    assert response.status_code == 302 and response.url.endswith(f"#folders-{account.pk}")
    account.refresh_from_db()
    assert account.sync_all_folders
    assert dict(MailFolder.objects.filter(account=account).values_list("name", "selected")) == selected
    html = client.get(reverse("mailsync:settings")).content.decode()
    assert re.search(r'<input[^>]*name="mode"[^>]*value="all"[^>]*checked', html)


def test_choosing_no_folder_is_refused_and_changes_nothing(alice, account):
    folders = folders_for(account, ("INBOX", "inbox"))
    url = reverse("mailsync:account_folders", args=[account.pk])
    response = client_for(alice).post(url, {"mode": "selected"}, headers=HTMX)
    assert response.status_code == 200 and "Choose at least one folder" in response.content.decode()
    response = client_for(alice).post(url, {"mode": "selected"})  # without htmx: the whole page, with the error
    assert (
        response.status_code == 200
        and b"<html" in response.content
        and b"Choose at least one folder" in response.content
    )
    account.refresh_from_db()
    folders["INBOX"].refresh_from_db()
    assert account.sync_all_folders and folders["INBOX"].selected


def test_a_folder_of_another_account_cannot_be_chosen(alice, bob, account):
    mine = folders_for(account, ("INBOX", "inbox"))["INBOX"]
    theirs = folders_for(EmailAccountFactory(user=bob), ("INBOX", "inbox"))["INBOX"]
    url = reverse("mailsync:account_folders", args=[account.pk])
    response = client_for(alice).post(url, {"mode": "selected", "folders": [theirs.pk]}, headers=HTMX)
    assert "Select a valid choice" in response.content.decode()
    theirs.refresh_from_db()
    mine.refresh_from_db()
    assert theirs.selected and mine.selected


@pytest.mark.dovecot
def test_sync_respects_the_folder_choice_and_keeps_synced_mail(alice, dovecot, mail_user):
    account = make_account(alice, mail_user, dovecot)
    deliver(dovecot, mail_user, 2, prefix="Inbox")
    deliver(dovecot, mail_user, 2, folder="Archive", prefix="Archived")
    engine.sync_account(account.pk)
    assert live(account).count() == 4

    folders = dict(MailFolder.objects.filter(account=account).values_list("name", "pk"))
    response = client_for(alice).post(
        reverse("mailsync:account_folders", args=[account.pk]), {"mode": "selected", "folders": [folders["INBOX"]]}
    )
    assert response.status_code == 302
    deliver(dovecot, mail_user, 1, prefix="New inbox")
    deliver(dovecot, mail_user, 1, folder="Archive", prefix="New archived")
    report = engine.sync_account(account.pk)

    assert report.error is None
    subjects = set(live(account).values_list("subject", flat=True))
    assert "New inbox 0" in subjects and "New archived 0" not in subjects
    assert {"Archived 0", "Archived 1"} <= subjects  # synced before the change: still there (S2)

    client_for(alice).post(reverse("mailsync:account_folders", args=[account.pk]), {"mode": "all"})
    engine.sync_account(account.pk)
    assert "New archived 0" in set(live(account).values_list("subject", flat=True))


# --- Preferences: linking mode, default sharing (P2), email links (W6) -----------------------------------------


def test_preferences_are_saved_and_existing_conversations_keep_their_sharing(alice):
    private = create_thread(alice, sender="ann@acme.example", visibility=EmailThread.Visibility.PRIVATE)
    shared = create_thread(alice, sender="bo@acme.example", visibility=EmailThread.Visibility.SHARED)
    client = client_for(alice)
    html = client.get(reverse("mailsync:settings")).content.decode()
    assert "Only mail synced from now on gets this default" in html

    response = client.post(
        reverse("mailsync:preferences"),
        {"linking_mode": "manual", "default_visibility": "shared", "email_link_preference": "mailto"},
        headers=HTMX,
    )
    assert response.status_code == 200 and b'id="mail-preferences"' in response.content
    assert b"<html" not in response.content and b"Preferences saved" in response.content
    mail_settings = MailSettings.objects.get(user=alice)
    assert (mail_settings.linking_mode, mail_settings.default_visibility, mail_settings.email_link_preference) == (
        "manual",
        "shared",
        "mailto",
    )
    assert EmailThread.objects.get(pk=private.pk).visibility == "private"  # P2
    assert EmailThread.objects.get(pk=shared.pk).visibility == "shared"


@pytest.mark.dovecot
def test_new_default_sharing_applies_to_mail_synced_afterwards(alice, dovecot, mail_user):
    account = make_account(alice, mail_user, dovecot)
    dovecot.append(mail_user, make_message("Before the change"))
    engine.sync_account(account.pk)
    client_for(alice).post(
        reverse("mailsync:preferences"),
        {"linking_mode": "automatic", "default_visibility": "shared", "email_link_preference": "crm"},
    )
    dovecot.append(mail_user, make_message("After the change"))
    engine.sync_account(account.pk)
    visibility = dict(live(account).values_list("subject", "thread__visibility"))
    assert visibility == {"Before the change": "private", "After the change": "shared"}


def test_bad_preferences_are_refused_with_a_message(alice):
    response = client_for(alice).post(
        reverse("mailsync:preferences"),
        {"linking_mode": "sometimes", "default_visibility": "everyone", "email_link_preference": "crm"},
        headers=HTMX,
    )
    assert response.status_code == 200
    assert response.content.decode().count("Select a valid choice") == 2
    assert not MailSettings.objects.filter(user=alice).exists()


def render_link(user, address, label=""):
    request = RequestFactory().get("/")
    request.user = user
    template = Template("{% load mail_links %}{% email_link address label %}")
    return template.render(Context({"request": request, "address": address, "label": label}))


def test_email_link_tag_follows_the_preference(alice, bob):
    MailSettings.objects.create(user=alice, email_link_preference=MailSettings.LinkPreference.MAILTO)
    assert render_link(alice, "ann+sales@acme.example") == (
        '<a href="mailto:ann+sales@acme.example" class="email-link" data-link-kind="mailto">'
        "<bdi>ann+sales@acme.example</bdi></a>"
    )
    assert "<bdi>&lt;b&gt;Ann&lt;/b&gt;</bdi>" in render_link(alice, "ann@acme.example", "<b>Ann</b>")
    assert render_link(alice, "") == ""

    # Bob never chose: the default is "open in the CRM".
    html = render_link(bob, "ann@acme.example")
    try:
        compose = reverse("mailsync:compose_new")
    except NoReverseMatch:  # the mail workspace is not installed: mailto: is the fallback
        assert 'href="mailto:ann@acme.example"' in html and 'data-link-kind="crm"' not in html
    else:
        # The CRM's composer with To filled in (W6).
        assert f'href="{compose}?to=ann%40acme.example"' in html and 'data-link-kind="crm"' in html


def test_email_link_tag_reads_the_preference_once_per_request(alice, django_assert_num_queries):
    request = RequestFactory().get("/")
    request.user = alice
    template = Template("{% load mail_links %}{% for a in addresses %}{% email_link a %}{% endfor %}")
    with django_assert_num_queries(1):
        html = template.render(Context({"request": request, "addresses": [f"p{i}@x.example" for i in range(20)]}))
    assert html.count("<a ") == 20


# --- Sync past emails (S4) ---------------------------------------------------------------------------------


def test_past_sync_is_refused_before_the_initial_sync(alice, account):
    response = client_for(alice).post(reverse("mailsync:past_sync", args=[account.pk]), {"months": 3}, headers=HTMX)
    assert response.status_code == 200
    assert "once the initial sync has finished" in response.content.decode()
    account.refresh_from_db()
    assert account.past_sync_state == ""


def test_past_sync_form_validates_months(alice, account):
    account.initial_sync_done_at = timezone.now()
    account.save(update_fields=["initial_sync_done_at"])
    response = client_for(alice).post(reverse("mailsync:past_sync", args=[account.pk]), {"months": 2}, headers=HTMX)
    assert "Select a valid choice" in response.content.decode()
    account.refresh_from_db()
    assert account.past_sync_state == ""


def test_progress_partial_polls_while_running_and_stops_when_done(alice, account):
    account.initial_sync_done_at = timezone.now()
    account.past_sync_months = 3
    account.past_sync_state = "running"
    account.past_sync_done = 1240
    account.past_sync_total = 3000
    account.save()
    url = reverse("mailsync:past_sync_progress", args=[account.pk])
    client = client_for(alice)
    html = client.get(url, headers=HTMX).content.decode()
    assert "1,240 of ~3,000 messages (41%)" in html
    assert 'value="41"' in html and f'hx-get="{url}"' in html and 'hx-trigger="every 1s"' in html
    assert 'name="months"' not in html  # no second request while one runs

    EmailAccount.objects.filter(pk=account.pk).update(past_sync_state="done", past_sync_done=2990)
    html = client.get(url, headers=HTMX).content.decode()
    assert 'value="100"' in html and "Done: 2,990 messages of the last 3 months" in html
    assert "hx-trigger" not in html  # polling stops
    assert 'name="months"' in html  # and another period can be asked for

    # A plain GET (no htmx) goes to the settings page.
    response = client.get(url)
    assert response.status_code == 302 and response.url.endswith(f"#past-sync-{account.pk}")


def test_progress_stops_polling_while_the_account_cannot_sync(alice, account):
    EmailAccount.objects.filter(pk=account.pk).update(
        initial_sync_done_at=timezone.now(), past_sync_state="running", past_sync_total=10, state=State.NEEDS_REAUTH
    )
    html = client_for(alice).get(reverse("mailsync:past_sync_progress", args=[account.pk]), headers=HTMX)
    html = html.content.decode()
    assert "hx-trigger" not in html and "Waiting for the account" in html


@pytest.mark.dovecot
def test_past_sync_from_the_page_runs_a_real_sync(alice, dovecot, mail_user, django_capture_on_commit_callbacks):
    account = make_account(alice, mail_user, dovecot)
    deliver(dovecot, mail_user, 2, days_ago=1, prefix="Recent")
    deliver(dovecot, mail_user, 5, days_ago=40, prefix="Older")
    deliver(dovecot, mail_user, 3, days_ago=200, prefix="Ancient")
    engine.sync_account(account.pk)
    assert live(account).count() == 2
    client = client_for(alice)
    assert 'name="months"' in client.get(reverse("mailsync:settings")).content.decode()

    with django_capture_on_commit_callbacks(execute=True) as callbacks:  # Celery is eager in the test suite
        response = client.post(reverse("mailsync:past_sync", args=[account.pk]), {"months": 3}, headers=HTMX)
    assert response.status_code == 200 and callbacks  # the sync task ran after the commit (then ingestion's own)
    assert "Syncing the past 3 months" in response.content.decode()

    account.refresh_from_db()
    assert (account.past_sync_state, account.past_sync_done, account.past_sync_total) == ("done", 5, 5)
    assert live(account).count() == 7 and not live(account).filter(subject__startswith="Ancient").exists()
    html = client.get(reverse("mailsync:past_sync_progress", args=[account.pk]), headers=HTMX).content.decode()
    assert 'value="100"' in html and "Done: 5 messages" in html


def test_a_second_past_sync_is_refused_while_one_runs(alice, account, django_capture_on_commit_callbacks):
    EmailAccount.objects.filter(pk=account.pk).update(initial_sync_done_at=timezone.now(), past_sync_state="queued")
    with django_capture_on_commit_callbacks() as callbacks:
        response = client_for(alice).post(reverse("mailsync:past_sync", args=[account.pk]), {"months": 12}, follow=True)
    assert response.redirect_chain[-1][0].endswith(f"#past-sync-{account.pk}")
    assert "already running" in response.content.decode()
    assert not callbacks


def test_past_sync_without_htmx_redirects_to_its_section(alice, account, django_capture_on_commit_callbacks):
    EmailAccount.objects.filter(pk=account.pk).update(initial_sync_done_at=timezone.now() - dt.timedelta(hours=1))
    with django_capture_on_commit_callbacks() as callbacks:
        response = client_for(alice).post(
            reverse("mailsync:past_sync", args=[account.pk]), {"months": 12, "only_contacts": "on"}
        )
    assert response.status_code == 302 and response.url.endswith(f"#past-sync-{account.pk}")
    assert len(callbacks) == 1
    account.refresh_from_db()
    assert (account.past_sync_state, account.past_sync_months, account.past_sync_only_contacts) == ("queued", 12, True)
    assert EmailMessage.objects.count() == 0
