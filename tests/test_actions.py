"""Bulk actions of the mail lists (S5, S6): CRM-side, hostile posts, and repeated on the real Dovecot
when the user asked for it, with the next sync keeping exactly one message in its CRM state."""

import datetime as dt

import pytest
from django.contrib.messages import get_messages
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from mailsync.accounts import services
from mailsync.linking import access
from mailsync.models import (
    EmailAccount,
    EmailMessage,
    MailFolder,
    MailSettings,
    MessageLocation,
    PendingServerAction,
)
from mailsync.sync import engine, outbox
from mailsync.workspace import actions, conversation_services, inbox
from mailsync.workspace.inbox import InboxFilters
from tests.factories import DealFactory
from tests.mail_factories import create_message, fast_password_hashing
from tests.mailservers import make_message
from tests.test_inbox import folder_of, listed, put_in, settle, thread_in

pytestmark = pytest.mark.django_db
ACTION_URL = "mailsync:inbox_action"


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    fast_password_hashing(settings)


def post(client, mailbox, action, threads, **extra):
    """POST a bulk action and follow the redirect back to the list (which shows the messages)."""
    data = {"mailbox": mailbox, "action": action, "thread": [thread.pk for thread in threads], **extra}
    return client.post(reverse(ACTION_URL), data, follow=True)


def notes(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def redirected_to(response) -> str:
    return response.redirect_chain[0][0]


# --- CRM side ---------------------------------------------------------------------------------------------


def test_mark_read_and_unread(client, alice):
    one, two = thread_in(alice, "inbox"), thread_in(alice, "inbox")
    settle(alice)
    client.force_login(alice)
    response = post(client, "inbox", "read", [one, two], next=reverse("mailsync:inbox") + "?unread=1")
    assert redirected_to(response) == reverse("mailsync:inbox") + "?unread=1"
    assert notes(response) == ["2 conversations marked read."]
    assert not EmailMessage.objects.filter(thread__in=[one, two], is_read=False).exists()
    assert listed(alice, filters=InboxFilters(unread=True)) == []
    post(client, "inbox", "unread", [one])
    assert listed(alice, filters=InboxFilters(unread=True)) == [one.pk]
    assert inbox.mailbox_counts(alice)["inbox"].unread == 1


def test_archive_then_move_back_keeps_my_replies_in_sent(client, alice):
    thread = thread_in(alice, "inbox", subject="Quote request")
    reply = create_message(thread, sender=alice.email, account=thread.messages.first().account)
    put_in(reply, folder_of(reply.account, "sent"))
    other = thread_in(alice, "inbox")
    settle(alice)
    client.force_login(alice)

    response = post(client, "inbox", "archive", [thread])
    assert notes(response) == ["1 conversation archived."]
    assert listed(alice, "inbox") == [other.pk]
    assert listed(alice, "archive") == [thread.pk]
    assert listed(alice, "sent") == [thread.pk]  # the reply was not archived
    assert not EmailMessage.objects.get(pk=reply.pk).is_archived

    response = post(client, "archive", "inbox", [thread])
    assert notes(response) == ["1 conversation moved to the Inbox."]
    assert set(listed(alice, "inbox")) == {thread.pk, other.pk}
    assert listed(alice, "archive") == []


def test_move_back_from_the_server_trash(client, alice):
    thread = thread_in(alice, "trash")
    settle(alice)
    client.force_login(alice)
    post(client, "trash", "inbox", [thread])
    assert listed(alice, "inbox") == [thread.pk] and listed(alice, "trash") == []


def test_delete_asks_first_and_says_it_cannot_be_undone(client, alice):
    deal = DealFactory(owner=alice)
    thread = thread_in(alice, "inbox", subject="Delete me")
    create_message(thread, sender=alice.email, account=thread.messages.first().account)  # in Sent too
    conversation_services.link_thread(user=alice, thread=thread, record=deal)
    keep = thread_in(alice, "inbox")
    settle(alice)
    client.force_login(alice)

    confirm = post(client, "inbox", "delete", [thread])
    assert confirm.status_code == 200
    page = confirm.content.decode()
    assert "cannot be undone" in page.lower() and "synced again from your mail provider" in page
    assert "1 conversation (2 emails)" in page
    assert 'name="confirm" value="yes"' in page
    assert not EmailMessage.objects.filter(thread=thread, deleted_at__isnull=False).exists()

    response = post(client, "inbox", "delete", [thread], confirm="yes")
    assert notes(response) == ["1 conversation deleted."]
    assert set(EmailMessage.objects.filter(thread=thread).values_list("deletion_source", flat=True)) == {"user"}
    assert listed(alice, "inbox") == [keep.pk] and listed(alice, "sent") == []
    assert not access.visible_threads(alice).filter(pk=thread.pk).exists()
    assert access.timeline_for(alice, deal=deal) == []  # L6


def test_nothing_selected_or_unknown_action(client, alice):
    thread = thread_in(alice, "trash")
    settle(alice)
    client.force_login(alice)
    response = post(client, "inbox", "archive", [])
    assert notes(response) == ["Select at least one conversation first."]
    response = post(client, "trash", "archive", [thread])  # not offered in Trash
    assert notes(response) == ["This action is not available here."]
    response = post(client, "nowhere", "read", [thread])
    assert notes(response) == ["This action is not available here."]
    assert listed(alice, "trash") == [thread.pk]
    assert client.get(reverse(ACTION_URL)).status_code == 405


def test_foreign_next_url_is_not_followed(client, alice):
    thread = thread_in(alice, "inbox")
    settle(alice)
    client.force_login(alice)
    response = post(client, "inbox", "read", [thread], next="https://evil.example/phish")
    assert redirected_to(response) == reverse("mailsync:inbox")


@pytest.mark.parametrize("action", ["read", "archive", "delete"])
def test_hostile_post_with_someone_elses_threads_changes_nothing_and_says_so(client, alice, bob, action):
    deal = DealFactory(owner=alice)
    private = thread_in(alice, "inbox")
    shared = thread_in(alice, "inbox", visibility="shared")
    conversation_services.link_thread(user=alice, thread=shared, record=deal)  # bob may SEE it, not act on it
    settle(alice)
    before = list(EmailMessage.objects.order_by("pk").values_list("is_read", "is_archived", "deleted_at"))
    client.force_login(bob)
    response = post(client, "inbox", action, [private, shared], confirm="yes")
    assert response.status_code == 200 and redirected_to(response) == reverse("mailsync:inbox")
    assert notes(response) == ["2 selected conversations were not changed: they are not yours, or no longer in Inbox."]
    assert list(EmailMessage.objects.order_by("pk").values_list("is_read", "is_archived", "deleted_at")) == before
    assert set(listed(alice)) == {private.pk, shared.pk}


def test_mixed_post_changes_only_the_users_own_threads(client, alice, bob):
    mine = thread_in(bob, "inbox")
    theirs = thread_in(alice, "inbox")
    settle(alice, bob)
    client.force_login(bob)
    response = client.post(
        reverse(ACTION_URL),
        {"mailbox": "inbox", "action": "archive", "thread": [mine.pk, theirs.pk, "nonsense", 99999999]},
        follow=True,
    )
    assert notes(response) == [
        "1 conversation archived.",
        "3 selected conversations were not changed: they are not yours, or no longer in Inbox.",
    ]
    assert listed(bob, "archive") == [mine.pk]
    assert listed(alice, "inbox") == [theirs.pk]


def test_admin_cannot_act_on_private_mail(client, alice, admin_user):
    thread = thread_in(alice, "inbox")
    settle(alice)
    client.force_login(admin_user)
    post(client, "inbox", "delete", [thread], confirm="yes")
    assert not EmailMessage.objects.filter(thread=thread, deleted_at__isnull=False).exists()


def test_delete_confirmation_for_someone_elses_threads_is_refused(client, alice, bob):
    thread = thread_in(alice, "inbox")
    settle(alice)
    client.force_login(bob)
    response = post(client, "inbox", "delete", [thread])
    assert redirected_to(response) == reverse("mailsync:inbox")
    assert "not yours" in notes(response)[0]


def test_crm_only_actions_do_not_touch_the_server(alice, django_capture_on_commit_callbacks, monkeypatch):
    """Without the setting, archive and delete stay in the CRM (S5): no task is even queued."""
    queued = []
    monkeypatch.setattr("mailsync.sync.tasks.apply_server_actions.delay", queued.append)
    thread = thread_in(alice, "inbox")
    settle(alice)
    with django_capture_on_commit_callbacks(execute=True):
        actions.apply_bulk_action(user=alice, mailbox="inbox", action="archive", thread_ids=[thread.pk])
    assert queued == [] and not PendingServerAction.objects.exists()
    with django_capture_on_commit_callbacks(execute=True):
        actions.apply_bulk_action(user=alice, mailbox="archive", action="read", thread_ids=[thread.pk])
    account = thread.messages.get().account
    assert queued == [account.pk]  # read state is two-way, always
    assert list(PendingServerAction.objects.values_list("account", "action", "message_ids")) == [
        (account.pk, "read", [thread.messages.get().pk])
    ]


def test_the_outbox_is_written_with_the_crm_change_and_not_without_it(alice, monkeypatch):
    """The outbox row commits (or rolls back) with the CRM change: a crash after the commit loses nothing."""
    monkeypatch.setattr("mailsync.sync.tasks.apply_server_actions.delay", lambda account_id: None)
    thread = thread_in(alice, "inbox")
    settle(alice)
    MailSettings.objects.update_or_create(user=alice, defaults={"apply_actions_on_server": True})
    with pytest.raises(RuntimeError), transaction.atomic():
        actions.apply_bulk_action(user=alice, mailbox="inbox", action="archive", thread_ids=[thread.pk])
        raise RuntimeError("the request dies before the commit")
    assert not PendingServerAction.objects.exists() and listed(alice, "inbox") == [thread.pk]
    actions.apply_bulk_action(user=alice, mailbox="inbox", action="archive", thread_ids=[thread.pk])
    assert PendingServerAction.objects.get().action == "archive"  # the task never ran: the row waits


# --- on the real server (Dovecot) ---------------------------------------------------------------------


def synced_account(alice, dovecot, mail_user, *, subjects=("First", "Second"), server_actions=True, **extra):
    from tests.test_sync import make_account

    now = dt.datetime.now(dt.UTC)
    for subject in subjects:
        dovecot.append(mail_user, make_message(subject, to=mail_user.address, date=now))
    account = make_account(alice, mail_user, dovecot, **extra)
    assert engine.sync_account(account.pk).error is None
    MailSettings.objects.update_or_create(user=alice, defaults={"apply_actions_on_server": server_actions})
    return account


def thread_of(account, subject):
    return EmailMessage.objects.get(account=account, subject=subject).thread


def act(alice, mailbox, action, threads, capture):
    with capture(execute=True):
        return actions.apply_bulk_action(
            user=alice, mailbox=mailbox, action=action, thread_ids=[thread.pk for thread in threads]
        )


@pytest.mark.dovecot
def test_archive_on_the_server_then_sync_keeps_one_archived_message(
    alice, dovecot, mail_user, django_capture_on_commit_callbacks
):
    account = synced_account(alice, dovecot, mail_user)
    first = thread_of(account, "First")
    result = act(alice, "inbox", "archive", [first], django_capture_on_commit_callbacks)
    assert result.on_server and result.summary().endswith("Your mail account is updated too.")

    assert len(dovecot.uids(mail_user, "INBOX")) == 1
    assert len(dovecot.uids(mail_user, "Archive")) == 1
    location = MessageLocation.objects.get(message__thread=first)
    assert location.folder.name == "Archive" and location.uid == dovecot.uids(mail_user, "Archive")[0]

    assert engine.sync_account(account.pk).error is None
    message = EmailMessage.objects.get(account=account, subject="First")  # still exactly one
    assert message.is_archived and message.deleted_at is None
    assert list(message.locations.values_list("folder__name", flat=True)) == ["Archive"]
    assert listed(alice, "archive") == [first.pk]
    assert listed(alice, "inbox") == [thread_of(account, "Second").pk]

    # And back: moved to the server's INBOX, one message, in the Inbox list.
    act(alice, "archive", "inbox", [first], django_capture_on_commit_callbacks)
    assert len(dovecot.uids(mail_user, "INBOX")) == 2 and dovecot.uids(mail_user, "Archive") == []
    assert engine.sync_account(account.pk).error is None
    assert EmailMessage.objects.filter(account=account, subject="First").count() == 1
    assert set(listed(alice, "inbox")) == {first.pk, thread_of(account, "Second").pk}


@pytest.mark.dovecot
def test_delete_on_the_server_moves_to_trash_and_stays_deleted_after_sync(
    alice, dovecot, mail_user, django_capture_on_commit_callbacks
):
    account = synced_account(alice, dovecot, mail_user)
    first = thread_of(account, "First")
    act(alice, "inbox", "delete", [first], django_capture_on_commit_callbacks)
    assert len(dovecot.uids(mail_user, "INBOX")) == 1
    assert len(dovecot.uids(mail_user, "Trash")) == 1  # not expunged: the provider still has it (S6)

    for _ in range(2):
        assert engine.sync_account(account.pk).error is None
    message = EmailMessage.objects.get(account=account, subject="First")
    assert message.deleted_at is not None and message.deletion_source == "user"
    assert listed(alice, "trash") == [] and listed(alice, "inbox") == [thread_of(account, "Second").pk]


@pytest.mark.dovecot
def test_read_state_goes_to_the_server_both_ways(alice, dovecot, mail_user, django_capture_on_commit_callbacks):
    account = synced_account(alice, dovecot, mail_user, server_actions=False)
    first = thread_of(account, "First")
    uid = MessageLocation.objects.get(message__thread=first).uid
    act(alice, "inbox", "read", [first], django_capture_on_commit_callbacks)
    assert "\\Seen" in dovecot.flags(mail_user, uid)
    assert engine.sync_account(account.pk).error is None
    assert EmailMessage.objects.get(account=account, subject="First").is_read  # the sync agrees

    act(alice, "inbox", "unread", [first], django_capture_on_commit_callbacks)
    assert "\\Seen" not in dovecot.flags(mail_user, uid)
    assert engine.sync_account(account.pk).error is None
    assert not EmailMessage.objects.get(account=account, subject="First").is_read


@pytest.mark.dovecot
def test_without_the_setting_archive_stays_in_the_crm(alice, dovecot, mail_user, django_capture_on_commit_callbacks):
    account = synced_account(alice, dovecot, mail_user, server_actions=False)
    first = thread_of(account, "First")
    result = act(alice, "inbox", "archive", [first], django_capture_on_commit_callbacks)
    assert not result.on_server
    assert len(dovecot.uids(mail_user, "INBOX")) == 2 and dovecot.uids(mail_user, "Archive") == []
    assert engine.sync_account(account.pk).error is None
    assert listed(alice, "archive") == [first.pk]  # archived in the CRM, whatever the server says


@pytest.mark.dovecot
def test_archive_into_a_folder_that_is_not_synced_never_loses_the_message(
    alice, dovecot, mail_user, django_capture_on_commit_callbacks
):
    account = synced_account(alice, dovecot, mail_user)
    EmailAccount.objects.filter(pk=account.pk).update(sync_all_folders=False)
    MailFolder.objects.filter(account=account).exclude(name="INBOX").update(selected=False)
    first = thread_of(account, "First")
    act(alice, "inbox", "archive", [first], django_capture_on_commit_callbacks)
    assert len(dovecot.uids(mail_user, "Archive")) == 1
    assert engine.sync_account(account.pk).error is None  # INBOX lost the copy; Archive is not synced
    message = EmailMessage.objects.get(account=account, subject="First")
    assert message.deleted_at is None and message.is_archived
    assert listed(alice, "archive") == [first.pk]


@pytest.mark.dovecot
def test_server_failure_is_recorded_and_the_crm_action_stays(
    alice, dovecot, mail_user, django_capture_on_commit_callbacks
):
    account = synced_account(alice, dovecot, mail_user)
    account.set_secret("wrong password")
    account.save(update_fields=["secret_encrypted"])
    first = thread_of(account, "First")
    result = act(alice, "inbox", "archive", [first], django_capture_on_commit_callbacks)
    account.refresh_from_db()
    assert account.last_error_code and account.state == EmailAccount.State.NEEDS_REAUTH
    assert len(dovecot.uids(mail_user, "INBOX")) == 2  # nothing moved
    assert listed(alice, "archive") == [first.pk]  # but archived in the CRM
    assert EmailMessage.objects.get(pk=first.messages.get().pk).is_archived

    # Another action while the account needs re-authentication: kept, and the user is told so.
    second = thread_of(account, "Second")
    result = act(alice, "inbox", "read", [second], django_capture_on_commit_callbacks)
    result = act(alice, "inbox", "archive", [second], django_capture_on_commit_callbacks)
    assert result.waiting == 1 and "when its sync runs again" in result.summary()
    assert list(PendingServerAction.objects.values_list("action", flat=True)) == ["archive", "read", "archive"]

    # Re-authenticated: the next sync applies them in order before it reads the server.
    account.set_secret(mail_user.password)  # (this account has no SMTP server for the full re-auth check)
    account.save(update_fields=["secret_encrypted"])
    services.record_connection_success(account=account, restart_sync=False)
    assert engine.sync_account(account.pk).error is None
    assert dovecot.uids(mail_user, "INBOX") == [] and len(dovecot.uids(mail_user, "Archive")) == 2
    assert "\\Seen" in dovecot.flags(mail_user, dovecot.uids(mail_user, "Archive")[-1], "Archive")
    assert not PendingServerAction.objects.exists()
    assert EmailMessage.objects.filter(account=account).count() == 2  # moved, not duplicated
    assert set(listed(alice, "archive")) == {first.pk, second.pk} and listed(alice, "inbox") == []


@pytest.mark.dovecot
def test_an_old_uidvalidity_is_not_acted_on(alice, dovecot, mail_user, django_capture_on_commit_callbacks):
    account = synced_account(alice, dovecot, mail_user)
    first = thread_of(account, "First")
    MessageLocation.objects.filter(message__thread=first).update(uidvalidity=1)  # stale: the server renumbered
    PendingServerAction.objects.create(
        account=account, action="archive", message_ids=list(first.messages.values_list("pk", flat=True))
    )
    report = outbox.apply_pending_on_server(account_id=account.pk)
    assert report.moved == 0 and report.applied == 1 and not PendingServerAction.objects.exists()
    assert len(dovecot.uids(mail_user, "INBOX")) == 2


@pytest.mark.dovecot
def test_read_state_set_while_paused_reaches_the_server_and_survives_the_sync(
    alice, dovecot, mail_user, django_capture_on_commit_callbacks
):
    account = synced_account(alice, dovecot, mail_user, server_actions=False)
    first = thread_of(account, "First")
    uid = MessageLocation.objects.get(message__thread=first).uid
    services.pause_account(account=account)
    act(alice, "inbox", "read", [first], django_capture_on_commit_callbacks)
    assert "\\Seen" not in dovecot.flags(mail_user, uid)  # paused: the mail account is not touched
    services.resume_account(account=account)
    assert engine.sync_account(account.pk).error is None
    assert "\\Seen" in dovecot.flags(mail_user, uid)
    assert EmailMessage.objects.get(account=account, subject="First").is_read  # not undone by the sync


@pytest.mark.dovecot
def test_a_command_the_server_refuses_does_not_block_the_rest(
    alice, dovecot, mail_user, django_capture_on_commit_callbacks, monkeypatch
):
    account = synced_account(alice, dovecot, mail_user)
    first, second = thread_of(account, "First"), thread_of(account, "Second")
    services.pause_account(account=account)
    act(alice, "inbox", "archive", [first], django_capture_on_commit_callbacks)
    act(alice, "inbox", "archive", [second], django_capture_on_commit_callbacks)
    refused_once = []
    real_move = outbox.imap.ImapSession.move

    def move(session, uids, destination):
        if not refused_once:
            refused_once.append(uids)
            raise outbox.errors.ServerError("MOVE refused", protocol="imap")
        return real_move(session, uids, destination)

    monkeypatch.setattr(outbox.imap.ImapSession, "move", move)
    services.resume_account(account=account)
    assert engine.sync_account(account.pk).error is None
    assert len(dovecot.uids(mail_user, "INBOX")) == 1 and len(dovecot.uids(mail_user, "Archive")) == 1
    assert not PendingServerAction.objects.exists()
    assert engine.sync_account(account.pk).error is None
    assert set(listed(alice, "archive")) == {first.pk, second.pk}  # the CRM state stands either way


def test_a_paused_account_keeps_its_outbox_and_a_removed_one_drops_it(alice):
    thread = thread_in(alice, "inbox")
    account = thread.messages.get().account
    PendingServerAction.objects.create(account=account, action="read", message_ids=[thread.messages.get().pk])
    EmailAccount.objects.filter(pk=account.pk).update(state=EmailAccount.State.PAUSED)
    report = outbox.apply_pending_on_server(account_id=account.pk)
    assert report.skipped == "account paused: kept for its next sync" and report.flagged == 0
    assert PendingServerAction.objects.count() == 1
    EmailAccount.objects.filter(pk=account.pk).update(state=EmailAccount.State.REMOVED)
    report = outbox.apply_pending_on_server(account_id=account.pk)
    assert report.skipped == "account removed" and report.dropped == 1
    assert not PendingServerAction.objects.exists()


def test_deleted_mail_is_not_acted_on_again(client, alice):
    thread = thread_in(alice, "inbox")
    settle(alice)
    EmailMessage.objects.filter(thread=thread).update(deleted_at=timezone.now(), deletion_source="user")
    settle(alice)
    client.force_login(alice)
    response = post(client, "inbox", "read", [thread])
    assert "not yours, or no longer in Inbox" in notes(response)[0]
