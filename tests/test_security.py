"""Issue 10, tried as an attacker would: what a company admin, a teammate or an outsider can see or change.

Personas: alice owns the mail, bob is her teammate (Sales), charlie an outsider (Support), admin_user a
company admin and `support` a superuser (Django admin). Each section is one finding of the issue.
"""

import contextlib
import socket

import pytest
from django.contrib.admin.models import LogEntry
from django.core.exceptions import PermissionDenied
from django.urls import reverse

from conftest import client_for
from contacts.models import Person
from crm.admin_site import PrivateDeletionMixin
from crm.models import NOTES_MAX_LENGTH, Visibility
from crm.params import parse_id, parse_ids
from devtools.mailservers import LineServer
from mailsync.accounts import providers, services
from mailsync.connection import config as connection_config
from mailsync.linking import access
from mailsync.linking.rules import link_threads
from mailsync.models import EmailAccount, EmailMessage, EmailThread, MailFolder, ThreadLink
from mailsync.protocols import errors, hosts
from mailsync.workspace import conversation_services
from tests.factories import DealFactory
from tests.mail_factories import AttachmentFactory, create_thread

pytestmark = pytest.mark.django_db

State = EmailAccount.State
MARKER = "Quokka7731"  # in every piece of Alice's private mail below
PASSWORD = "alice-mailbox-pw-Quokka"


@pytest.fixture(autouse=True)
def media_in_tmp(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path


@pytest.fixture
def support(db):
    from crm.models import User

    return User.objects.create_superuser(email="support@company.test", password="support-password-1")


def alice_account(alice, **fields) -> EmailAccount:
    values = {"imap_host": "imap.mail.example", "smtp_host": "smtp.mail.example", "state": State.SYNCING}
    values.update(fields)
    account = EmailAccount(user=alice, email_address="alice@mail.example", username="alice@mail.example", **values)
    account.set_secret(PASSWORD)
    account.save()
    return account


@pytest.fixture
def private_mail(alice):
    """Alice's private thread: the marker in its subject, a participant's name and address, the body and an
    attachment name; one folder; a manual link to a deal everybody may see."""
    account = alice_account(alice)
    MailFolder.objects.create(account=account, name="INBOX", role="inbox")
    thread = create_thread(
        alice,
        sender=f"ceo.{MARKER.lower()}@rival.example",
        subject=f"Merger {MARKER}",
        visibility=EmailThread.Visibility.PRIVATE,
        account=account,
        body_text=f"Body {MARKER}",
        snippet=f"Snippet {MARKER}",
    )
    message = thread.messages.get()
    message.participants.filter(role="from").update(name=f"Boss {MARKER}")
    AttachmentFactory(message=message, filename=f"{MARKER}-plan.pdf")
    deal = DealFactory(owner=alice, title="Company deal", visibility=Visibility.COMPANY)
    ThreadLink.objects.create(thread=thread, deal=deal, state=ThreadLink.State.LINKED, rule="manual")
    return {"account": account, "thread": thread, "deal": deal}


def body_of(response) -> str:
    content = b"".join(response.streaming_content) if response.streaming else response.content
    return content.decode(errors="replace")


# --------------------------------------------------------------------------------------------------
# 1. The admin's delete pages list no private mail: counts only


def assert_no_mail_content(html: str) -> None:
    assert MARKER.lower() not in html.lower()
    assert PASSWORD not in html


def test_account_delete_page_counts_and_does_not_list(support, private_mail):
    account = private_mail["account"]
    response = client_for(support).get(reverse("admin:mailsync_emailaccount_delete", args=[account.pk]))
    html = body_of(response)
    assert response.status_code == 200
    assert_no_mail_content(html)
    assert "Email messages: 1" in html and "Attachments: 1" in html  # Django's summary, by counts
    assert "alice@mail.example" in html  # the account itself is named


def test_delete_selected_action_counts_and_does_not_list(support, private_mail):
    response = client_for(support).post(
        reverse("admin:mailsync_emailaccount_changelist"),
        {"action": "delete_selected", "_selected_action": [private_mail["account"].pk]},
    )
    html = body_of(response)
    assert response.status_code == 200 and "Are you sure" in html
    assert_no_mail_content(html)
    assert "Email messages: 1" in html


def test_user_and_record_delete_pages_count_and_do_not_list(support, alice, private_mail):
    admin = client_for(support)
    pages = [
        reverse("admin:crm_user_delete", args=[alice.pk]),
        reverse("admin:deals_deal_delete", args=[private_mail["deal"].pk]),
        reverse("admin:mailsync_mailfolder_delete", args=[private_mail["account"].folders.get().pk]),
    ]
    for url in pages:
        response = admin.get(url)
        assert response.status_code == 200, url
        assert_no_mail_content(body_of(response))
    # Alice owns a record (PROTECT): the page says what blocks the deletion, still without her mail.
    html = body_of(admin.get(reverse("admin:crm_user_delete", args=[alice.pk])))
    assert "Company deal" in html


def test_delete_still_deletes(support, alice):
    account = alice_account(alice)
    create_thread(alice, sender="x@customer.example", account=account, subject=f"Gone {MARKER}")
    admin = client_for(support)
    response = admin.post(reverse("admin:mailsync_emailaccount_delete", args=[account.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not EmailAccount.objects.filter(pk=account.pk).exists()
    assert not EmailMessage.objects.filter(account_id=account.pk).exists()
    entry = LogEntry.objects.get(object_id=str(account.pk), action_flag=3)  # DELETION, by the admin
    assert entry.user == support


def test_every_admin_registration_has_counts_only_deletion():
    from django.contrib import admin

    assert admin.site._registry  # the admin is populated
    for model, model_admin in admin.site._registry.items():
        assert isinstance(model_admin, PrivateDeletionMixin), model


# --------------------------------------------------------------------------------------------------
# 2. An admin cannot capture a mailbox password


class RecordingImapServer(LineServer):
    """An IMAP server of the admin's own on loopback: greets, answers CAPABILITY, and writes down every
    line it receives (a LOGIN carries the password in clear)."""

    def __init__(self):
        self.received: list[str] = []
        super().__init__(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n", imap_capabilities="IMAP4rev1 AUTH=PLAIN")

    def _answer(self, conn):
        with contextlib.suppress(OSError), conn.makefile("rb") as lines:
            for line in lines:
                text = line.decode(errors="replace").strip()
                self.received.append(text)
                tag, _, command = text.partition(" ")
                if command.upper().startswith("CAPABILITY"):
                    conn.sendall(f"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n{tag} OK done\r\n".encode())
                elif command.upper().startswith("LOGOUT"):
                    conn.sendall(f"* BYE\r\n{tag} OK bye\r\n".encode())
                    return
                else:
                    conn.sendall(f"{tag} NO [AUTHENTICATIONFAILED] nope\r\n".encode())


@pytest.fixture
def admins_server():
    server = RecordingImapServer()
    yield server
    server.close()


def account_admin_form(account, **overrides) -> dict:
    data = {
        "display_name": "",
        "provider": "custom",
        "username": account.username,
        "imap_host": account.imap_host,
        "imap_port": account.imap_port,
        "imap_security": account.imap_security,
        "smtp_host": account.smtp_host,
        "smtp_port": account.smtp_port,
        "smtp_security": account.smtp_security,
        "trusted_ca_pem": "",
        "attachment_limit_mb": 25,
        "initial_sync_days": 3,
        "sync_all_folders": "on",
        "addresses-TOTAL_FORMS": 0,
        "addresses-INITIAL_FORMS": 0,
    }
    data.update(overrides)
    return data


def test_admin_pointing_an_account_at_their_server_never_gets_the_password(support, alice, admins_server):
    account = alice_account(alice)
    admin = client_for(support)
    url = reverse("admin:mailsync_emailaccount_change", args=[account.pk])
    form = account_admin_form(account, imap_host="127.0.0.1", imap_port=admins_server.port, imap_security="none")
    assert admin.post(url, form).status_code == 302
    admin.post(
        reverse("admin:mailsync_emailaccount_changelist"), {"action": "sync_now", "_selected_action": [account.pk]}
    )
    from mailsync.sync import engine

    engine.sync_account(account.pk)  # and a scheduled sync, as beat would start it
    assert not any(PASSWORD in line for line in admins_server.received)
    assert not any("LOGIN" in line.upper() for line in admins_server.received)
    account.refresh_from_db()
    assert account.imap_host == "127.0.0.1"  # the change itself is kept...
    assert (account.state, account.secret_encrypted, account.last_error_code) == (
        State.NEEDS_REAUTH,
        "",
        "settings_changed",
    )  # ...but the owner must accept it by entering the password
    # The owner sees where re-authenticating will connect, before typing anything.
    reauth = body_of(client_for(alice).get(reverse("mailsync:account_reauth", args=[account.pk])))
    assert f"127.0.0.1:{admins_server.port}" in reauth and "changed the server settings" in reauth
    # History (LogEntry) of what staff did, by whom.
    messages = [entry.get_change_message() for entry in LogEntry.objects.filter(object_id=str(account.pk))]
    assert any("credentials dropped" in message for message in messages)
    assert all(PASSWORD not in message for message in messages)


@pytest.mark.parametrize(
    "field", ["username", "imap_host", "imap_port", "imap_security", "smtp_host", "smtp_port", "smtp_security"]
)
def test_every_server_setting_change_drops_the_secret(support, alice, field):
    account = alice_account(alice)
    changed = {
        "username": "someone.else@mail.example",
        "imap_host": "imap.other.example",
        "imap_port": 1993,
        "imap_security": "starttls",
        "smtp_host": "smtp.other.example",
        "smtp_port": 2525,
        "smtp_security": "starttls",
    }[field]
    url = reverse("admin:mailsync_emailaccount_change", args=[account.pk])
    assert client_for(support).post(url, account_admin_form(account, **{field: changed})).status_code == 302
    account.refresh_from_db()
    assert account.secret_encrypted == "" and account.state == State.NEEDS_REAUTH


def test_admin_form_refuses_what_the_owner_form_refuses(support, alice):
    account = alice_account(alice)
    url = reverse("admin:mailsync_emailaccount_change", args=[account.pk])
    admin = client_for(support)
    for overrides, expected in (
        ({"imap_security": "none"}, "Unencrypted connections are only allowed"),
        ({"smtp_security": "none"}, "Unencrypted connections are only allowed"),
        ({"imap_host": "http://imap.mail.example"}, "Enter a server name"),
        ({"imap_host": ""}, "This field is required"),
        ({"imap_port": 0}, "greater than or equal to 1"),
        ({"smtp_port": 70000}, "less than or equal to 65535"),
    ):
        response = admin.post(url, account_admin_form(account, **overrides))
        assert response.status_code == 200 and expected in body_of(response), overrides
    account.refresh_from_db()
    assert account.get_secret() == PASSWORD and account.state == State.SYNCING


def test_admin_actions_are_in_the_history(support, alice):
    account = alice_account(alice)
    folder = MailFolder.objects.create(account=account, name="INBOX", uidvalidity=1)
    admin = client_for(support)
    changelist = reverse("admin:mailsync_emailaccount_changelist")
    admin.post(changelist, {"action": "pause_sync", "_selected_action": [account.pk]})
    admin.post(changelist, {"action": "resume_sync", "_selected_action": [account.pk]})
    admin.post(changelist, {"action": "sync_now", "_selected_action": [account.pk]})
    admin.post(
        reverse("admin:mailsync_mailfolder_changelist"), {"action": "reset_sync_state", "_selected_action": [folder.pk]}
    )
    entries = LogEntry.objects.filter(user=support).order_by("pk")
    assert [entry.get_change_message() for entry in entries] == [
        "Paused sync (admin action).",
        "Resumed sync (admin action).",
        "Sync requested (admin action).",
        "Reset the folder's sync state (admin action).",
    ]
    history = body_of(admin.get(reverse("admin:mailsync_emailaccount_history", args=[account.pk])))
    assert "Paused sync" in history and PASSWORD not in history


# --------------------------------------------------------------------------------------------------
# 3. Only the owner changes who sees a thread


@pytest.fixture
def shared_thread(alice, charlie):
    """Alice's shared thread, linked to a deal of her team (bob sees it) and to nothing charlie can see."""
    team_deal = DealFactory(owner=alice, title="Team deal", visibility=Visibility.TEAM)
    company_deal = DealFactory(owner=alice, title="Company deal", visibility=Visibility.COMPANY)
    thread = create_thread(alice, sender="buyer@prospect.example", visibility=EmailThread.Visibility.SHARED)
    ThreadLink.objects.create(thread=thread, deal=team_deal, state=ThreadLink.State.LINKED, rule="manual")
    return {"thread": thread, "team_deal": team_deal, "company_deal": company_deal}


def sees(user, thread) -> bool:
    return access.visible_threads(user).filter(pk=thread.pk).exists()


def test_a_teammate_link_is_a_suggestion_and_widens_nothing(alice, bob, charlie, shared_thread):
    thread, company_deal = shared_thread["thread"], shared_thread["company_deal"]
    response = client_for(bob).post(
        reverse("mailsync:thread_link", args=[thread.pk]), {"target": f"deal:{company_deal.pk}"}
    )
    assert response.status_code == 302
    link = ThreadLink.objects.get(thread=thread, deal=company_deal)
    assert (link.state, link.created_by) == (ThreadLink.State.SUGGESTED, bob)
    assert not sees(charlie, thread)  # the company deal would have shown it to everybody
    link_threads([thread.pk])  # automatic linking keeps the colleague's suggestion for the owner
    assert ThreadLink.objects.get(pk=link.pk).state == ThreadLink.State.SUGGESTED
    # Alice sees it, with who suggested it, and accepts: now it is shared with the company.
    page = body_of(client_for(alice).get(reverse("mailsync:thread_detail", args=[thread.pk])))
    assert "Suggested by Bob Teammate" in page
    accepted = client_for(alice).post(reverse("mailsync:thread_accept_suggestion", args=[thread.pk, link.pk]))
    assert accepted.status_code == 302
    assert sees(charlie, thread)


def test_an_outsider_cannot_unlink_to_hide_a_thread_from_the_team(alice, bob, charlie, shared_thread):
    thread, team_deal, company_deal = shared_thread["thread"], shared_thread["team_deal"], shared_thread["company_deal"]
    conversation_services.link_thread(user=alice, thread=thread, record=company_deal)
    assert sees(charlie, thread) and sees(bob, thread)
    outsider = client_for(charlie)
    response = outsider.post(reverse("mailsync:thread_unlink", args=[thread.pk]), {"target": f"deal:{team_deal.pk}"})
    assert response.status_code == 403
    response = outsider.post(reverse("mailsync:thread_unlink", args=[thread.pk]), {"target": f"deal:{company_deal.pk}"})
    assert response.status_code == 403
    assert set(ThreadLink.objects.filter(thread=thread).values_list("state", flat=True)) == {"linked"}
    assert sees(bob, thread) and sees(charlie, thread)


@pytest.mark.parametrize("persona", ["bob", "admin_user"])
def test_non_owners_cannot_unlink_or_accept(request, alice, persona, shared_thread):
    user = request.getfixturevalue(persona)
    thread, team_deal = shared_thread["thread"], shared_thread["team_deal"]
    suggestion = ThreadLink.objects.create(
        thread=thread, deal=shared_thread["company_deal"], state=ThreadLink.State.SUGGESTED, rule="organization_deal"
    )
    client = client_for(user)
    unlink = client.post(reverse("mailsync:thread_unlink", args=[thread.pk]), {"target": f"deal:{team_deal.pk}"})
    accept = client.post(reverse("mailsync:thread_accept_suggestion", args=[thread.pk, suggestion.pk]))
    assert (unlink.status_code, accept.status_code) == (403, 403)
    assert ThreadLink.objects.get(thread=thread, deal=team_deal).state == ThreadLink.State.LINKED
    assert ThreadLink.objects.get(pk=suggestion.pk).state == ThreadLink.State.SUGGESTED
    # The services refuse too, whatever calls them.
    for service in (conversation_services.link_thread, conversation_services.unlink_thread):
        with pytest.raises(PermissionDenied):
            service(user=user, thread=thread, record=team_deal)
    with pytest.raises(PermissionDenied):
        conversation_services.accept_suggestion(user=user, link=suggestion)
    # The links box offers a suggestion form, and no unlink or accept button.
    page = body_of(client.get(reverse("mailsync:thread_detail", args=[thread.pk])))
    assert "Suggest a record" in page and ">Unlink<" not in page and "Not this one" not in page


def test_an_owner_unlink_cannot_be_overridden_by_a_suggestion(alice, bob, shared_thread):
    thread, team_deal = shared_thread["thread"], shared_thread["team_deal"]
    conversation_services.link_thread(user=alice, thread=thread, record=shared_thread["company_deal"])
    conversation_services.unlink_thread(user=alice, thread=thread, record=team_deal)
    response = client_for(bob).post(
        reverse("mailsync:thread_link", args=[thread.pk]),
        {"target": f"deal:{team_deal.pk}"},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 400 and "only they can link it again" in body_of(response)
    assert ThreadLink.objects.get(thread=thread, deal=team_deal).state == ThreadLink.State.UNLINKED


def test_outsider_and_admin_cannot_even_suggest_on_a_private_thread(alice, charlie, admin_user, shared_thread):
    thread = shared_thread["thread"]
    conversation_services.set_thread_visibility(user=alice, thread=thread, visibility="private")
    for user in (charlie, admin_user):
        response = client_for(user).post(
            reverse("mailsync:thread_link", args=[thread.pk]), {"target": f"deal:{shared_thread['company_deal'].pk}"}
        )
        assert response.status_code == 404
    assert not ThreadLink.objects.filter(thread=thread, deal=shared_thread["company_deal"]).exists()


# --------------------------------------------------------------------------------------------------
# 4. The add-account connection test: no banners, no private hosts, rate-limited


def add_account_data(host: str, port: int, **extra) -> dict:
    data = {
        "email_address": "alice@mail.example",
        "password": PASSWORD,
        "provider": "custom",
        "imap_host": host,
        "imap_port": port,
        "imap_security": "none",
        "smtp_host": host,
        "smtp_port": port,
        "smtp_security": "none",
    }
    data.update(extra)
    return data


@pytest.fixture
def ssh_server():
    server = LineServer(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n")
    yield server
    server.close()


def test_a_non_mail_server_is_classified_not_echoed(alice_client, ssh_server):
    response = alice_client.post(reverse("mailsync:account_add"), add_account_data("127.0.0.1", ssh_server.port))
    html = body_of(response)
    assert 'data-error-code="not_imap"' in html and "an SSH server" in html
    assert "OpenSSH" not in html and "SSH-2.0" not in html and "deb12u3" not in html


def test_smtp_to_a_non_mail_server_is_classified_not_echoed(ssh_server):
    from mailsync.protocols import smtp

    config = connection_config.smtp_config(
        services.settings_from_preset(providers.CUSTOM, email_address="a@mail.example", username="a@mail.example"),
        secret="x",
    )
    config = smtp.SmtpConfig(
        host="127.0.0.1",
        port=ssh_server.port,
        security="none",
        username="a",
        secret="x",
        timeout=3,
        resolve_host=config.resolve_host,
    )
    with pytest.raises(errors.MailError) as caught:
        smtp.verify_login(config)
    text = f"{caught.value.message} {caught.value.detail}"
    assert "an SSH server" in text and "OpenSSH" not in text and "SSH-2.0" not in text


def test_private_addresses_are_refused_before_connecting(settings, alice_client, alice, ssh_server):
    settings.MAILSYNC_ALLOW_PRIVATE_HOSTS = False
    for host in ("127.0.0.1", "localhost", "[::1]"):
        response = alice_client.post(
            reverse("mailsync:account_add"), add_account_data(host, ssh_server.port, imap_security="none")
        )
        assert 'data-error-code="private_host"' in body_of(response), host
    assert ssh_server._connections == []  # nothing was even opened
    assert not EmailAccount.objects.filter(user=alice).exists()


def fake_dns(monkeypatch, answers: dict[str, list[list[str]]]):
    """getaddrinfo answering from `answers` (one list of addresses per successive call), counting calls."""
    calls: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):
        calls.append(host)
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "not found")
        queue = answers[host]
        addresses = queue.pop(0) if len(queue) > 1 else queue[0]
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return calls


def no_real_connections(monkeypatch):
    """socket.create_connection replaced: records where it was asked to go and refuses, so a test about
    public addresses never sends a packet anywhere."""
    attempts: list[tuple[str, int]] = []

    def create_connection(address, *args, **kwargs):
        attempts.append(address)
        raise ConnectionRefusedError("test: no connection")

    monkeypatch.setattr(socket, "create_connection", create_connection)
    return attempts


@pytest.mark.parametrize(
    "address",
    [
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.10",
        "127.0.0.2",
        "169.254.169.254",  # cloud metadata service
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:10.0.0.1",
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "2002:c0a8:0101::1",  # 6to4 of 192.168.1.1
    ],
)
def test_non_public_addresses(address):
    assert not hosts.is_public_address(address)


def test_public_addresses():
    assert hosts.is_public_address("93.184.215.14")
    assert hosts.is_public_address("2606:2800:21f:cb07:6820:80da:af6b:8b2c")


def test_every_resolved_address_is_checked(settings, monkeypatch):
    settings.MAILSYNC_ALLOW_PRIVATE_HOSTS = False
    fake_dns(monkeypatch, {"mail.mixed.example": [["93.184.215.14", "10.0.0.5"]]})
    attempts = no_real_connections(monkeypatch)
    with pytest.raises(errors.PrivateHostRefused) as caught:
        connection_config.mail_host_resolver()("mail.mixed.example", 993)
    assert "10.0.0.5" not in str(caught.value)  # which internal address it was is not told
    assert attempts == []


def test_the_connection_goes_to_the_checked_address_not_a_second_answer(settings, monkeypatch):
    """DNS rebinding: the first answer is public, a second lookup would say 127.0.0.1."""
    settings.MAILSYNC_ALLOW_PRIVATE_HOSTS = False
    attempts = no_real_connections(monkeypatch)
    from mailsync.protocols import imap, smtp

    calls = fake_dns(monkeypatch, {"mail.rebind.example": [["93.184.215.14"], ["127.0.0.1"]]})
    imap_config = imap.ImapConfig(
        host="mail.rebind.example",
        port=993,
        username="a",
        secret="b",
        resolve_host=connection_config.mail_host_resolver(),
    )
    with pytest.raises(errors.Unreachable):
        imap.connect(imap_config)
    assert calls == ["mail.rebind.example"]  # resolved once, and never again by the socket library
    calls = fake_dns(monkeypatch, {"mail.rebind.example": [["93.184.215.14"], ["127.0.0.1"]]})
    smtp_config = smtp.SmtpConfig(
        host="mail.rebind.example",
        port=465,
        username="a",
        secret="b",
        resolve_host=connection_config.mail_host_resolver(),
    )
    with pytest.raises(errors.Unreachable):
        smtp.verify_login(smtp_config)
    assert calls == ["mail.rebind.example"]
    assert attempts == [("93.184.215.14", 993), ("93.184.215.14", 465)]


def test_sync_connections_are_checked_too(settings, monkeypatch, alice):
    settings.MAILSYNC_ALLOW_PRIVATE_HOSTS = False
    fake_dns(monkeypatch, {"imap.inside.example": [["192.168.10.20"]]})
    attempts = no_real_connections(monkeypatch)
    account = alice_account(alice, imap_host="imap.inside.example")
    from mailsync.sync import engine

    report = engine.sync_account(account.pk)
    account.refresh_from_db()
    assert report.error is not None and account.last_error_code == "private_host"
    assert attempts == []


def test_private_hosts_allowed_by_the_operator(settings, alice_client, ssh_server):
    settings.MAILSYNC_ALLOW_PRIVATE_HOSTS = True  # make run and the test suite
    response = alice_client.post(reverse("mailsync:account_add"), add_account_data("127.0.0.1", ssh_server.port))
    assert 'data-error-code="not_imap"' in body_of(response)  # it connected, and classified what answered


def test_connection_tests_are_rate_limited_per_user(settings, alice_client, bob, ssh_server):
    settings.MAILSYNC_CONNECTION_TEST_LIMIT = 2
    url = reverse("mailsync:account_add")
    data = add_account_data("127.0.0.1", ssh_server.port)
    for _ in range(2):
        assert 'data-error-code="not_imap"' in body_of(alice_client.post(url, data))
    connections = len(ssh_server._connections)
    third = body_of(alice_client.post(url, data))
    assert 'data-error-code="rate_limited"' in third and "Too many connection tests" in third
    assert len(ssh_server._connections) == connections  # refused before connecting
    # Another user has their own allowance.
    assert 'data-error-code="not_imap"' in body_of(client_for(bob).post(url, data))


def test_test_button_and_reauth_count_too(settings, alice, alice_client):
    settings.MAILSYNC_CONNECTION_TEST_LIMIT = 1
    account = alice_account(alice)
    alice_client.post(reverse("mailsync:account_test", args=[account.pk]))
    account.refresh_from_db()
    failures = account.consecutive_failures
    response = alice_client.post(reverse("mailsync:account_test", args=[account.pk]), follow=True)
    assert "Too many connection tests" in body_of(response)
    response = alice_client.post(reverse("mailsync:account_reauth", args=[account.pk]), {"password": "x"})
    assert 'data-error-code="rate_limited"' in body_of(response)
    account.refresh_from_db()
    assert account.consecutive_failures == failures  # the limit is not the account's failure


# --------------------------------------------------------------------------------------------------
# 5. Ids: Unicode digits give 400/404 or are ignored, never a 500


def test_parse_id():
    assert parse_id("42") == 42 and parse_id(7) == 7
    for raw in ("²", "٣", "①", "4²", " 4", "4 ", "-1", "+1", "", None, "1" * 19, True, "0x1", "1.0"):
        assert parse_id(raw) is None, raw
    assert parse_ids(["1", "²", "x", "3"]) == {1, 3}


@pytest.fixture
def ids_world(alice):
    thread = create_thread(alice, sender="ann@acme.example")
    deal = DealFactory(owner=alice)
    return {"thread": thread, "deal": deal}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("page", 200),
        ("images", 200),
        ("pipeline", 200),
        ("pipeline_form", 200),
        ("target", 302),  # "Choose a deal, lead or project." (400 for htmx)
        ("thread", 302),
        ("since", 400),
    ],
)
@pytest.mark.parametrize("digit", ["²", "٣", "①"])
def test_unicode_digits_never_500(alice_client, ids_world, name, expected, digit):
    thread = ids_world["thread"]
    if name == "page":
        response = alice_client.get(reverse("mailsync:inbox"), {"page": digit})
    elif name == "images":
        response = alice_client.get(reverse("mailsync:thread_detail", args=[thread.pk]), {"images": digit})
    elif name == "pipeline":
        response = alice_client.get(reverse("deals:stage_options"), {"pipeline": digit})
    elif name == "pipeline_form":
        response = alice_client.post(reverse("deals:deal_create"), {"title": "X", "pipeline": digit})
    elif name == "target":
        response = alice_client.post(reverse("mailsync:thread_link", args=[thread.pk]), {"target": f"deal:{digit}"})
    elif name == "thread":
        data = {"mailbox": "inbox", "action": "read", "thread": [digit]}
        response = alice_client.post(reverse("mailsync:inbox_action"), data)
    else:
        response = alice_client.get(
            reverse("mailsync:inbox_news"), {"mailbox": "inbox", "since": digit}, headers={"HX-Request": "true"}
        )
    assert response.status_code == expected
    assert not ThreadLink.objects.filter(thread=thread, rule="manual").exists()


# --------------------------------------------------------------------------------------------------
# 6. File names with bidi controls


def test_bidi_controls_are_removed_from_attachment_names(alice, alice_client):
    thread = create_thread(alice, sender="ann@acme.example")
    attachment = AttachmentFactory(message=thread.messages.get(), filename="passwd\u202egnp.exe")
    page = body_of(alice_client.get(reverse("mailsync:thread_detail", args=[thread.pk])))
    assert "passwdgnp.exe" in page and "\u202e" not in page
    download = alice_client.get(reverse("mailsync:attachment_download", args=[attachment.pk]))
    disposition = download["Content-Disposition"]
    assert "passwdgnp.exe" in disposition
    assert "%E2%80%AE" not in disposition.upper() and "\u202e" not in disposition


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("invoice\u2067fdp.exe\u2069.pdf", "invoicefdp.exe.pdf"),
        ("\u200freport\u200e.pdf", "report.pdf"),
        ("a\u0000b\tc\n.txt", "ab c .txt"),
        ("\u202e\u202c", "attachment"),
        ("\u0633\u0646\u062f\u200c\u0647\u0627.pdf", "\u0633\u0646\u062f\u200c\u0647\u0627.pdf"),  # Persian joiner kept
    ],
)
def test_display_filename(raw, shown):
    from mailsync.models.filenames import display_filename

    assert display_filename(raw) == shown


# --------------------------------------------------------------------------------------------------
# 7. Hardening


def test_every_page_has_a_content_security_policy(alice_client, support, alice):
    thread = create_thread(alice, sender="ann@acme.example")
    for client, url in (
        (alice_client, reverse("home")),
        (alice_client, reverse("contacts:person_list")),
        (alice_client, reverse("mailsync:settings")),
        (alice_client, reverse("mailsync:inbox")),
        (client_for(support), reverse("admin:index")),
        (client_for(support), reverse("admin:mailsync_emailaccount_changelist")),
    ):
        policy = client.get(url)["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy, url
        assert "unsafe-eval" not in policy and "object-src 'none'" in policy
    # Anonymous pages too.
    from django.test import Client

    assert "script-src 'self'" in Client().get(reverse("account_login"))["Content-Security-Policy"]
    # The thread view keeps its own, stricter policy (the mail frames inherit it).
    from mailsync.workspace import display

    response = alice_client.get(reverse("mailsync:thread_detail", args=[thread.pk]))
    assert response["Content-Security-Policy"] == display.content_security_policy(remote_images=False)


def test_encryption_key_warning_in_production(settings, caplog):
    from mailsync import checks

    settings.MAILSYNC_ENCRYPTION_KEYS = []
    settings.DEBUG = False
    assert [message.id for message in checks.check_encryption_keys()] == ["mailsync.W001"]
    with caplog.at_level("WARNING", logger="mailsync"):
        checks.warn_at_start()
    assert "MAILSYNC_ENCRYPTION_KEYS is not set" in caplog.text
    settings.DEBUG = True
    assert checks.check_encryption_keys() == []
    settings.DEBUG = False
    from cryptography.fernet import Fernet

    settings.MAILSYNC_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    assert checks.check_encryption_keys() == []


def test_failed_logins_are_rate_limited(alice):
    from django.test import Client

    from tests.factories import PASSWORD as RIGHT

    client = Client()
    url = reverse("account_login")
    for _ in range(5):
        response = client.post(url, {"login": alice.email, "password": "wrong-password"})
        assert response.status_code == 200
    response = client.post(url, {"login": alice.email, "password": RIGHT})
    assert "_auth_user_id" not in client.session  # even the right password waits now
    assert response.status_code in (200, 429)
    assert "Too many failed login attempts" in body_of(response)


def test_the_admin_login_is_the_rate_limited_product_login(alice, support):
    from django.test import Client

    client = Client()
    response = client.get(reverse("admin:login"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("account_login"))
    # Posting passwords to the admin's own form logs nobody in: it is not a second, unthrottled door.
    response = client.post(reverse("admin:login"), {"username": support.email, "password": "support-password-1"})
    assert response.status_code == 302 and "_auth_user_id" not in client.session
    # Staff log in on the product's page and reach the admin.
    client.post(reverse("account_login"), {"login": support.email, "password": "support-password-1"})
    assert client.get(reverse("admin:index")).status_code == 200
    # A logged-in regular user is refused the admin, not shown a second login form.
    assert client_for(alice).get(reverse("admin:login")).status_code == 403


def test_notes_and_names_have_length_limits(alice_client, alice, support):
    too_long = "x" * (NOTES_MAX_LENGTH + 1)
    response = alice_client.post(
        reverse("contacts:person_create"),
        {"first_name": "Ann", "last_name": "Long", "notes": too_long, "visibility": "company", "owner": alice.pk},
    )
    assert response.status_code == 200 and "at most 10000 characters" in body_of(response).replace(",", "")
    assert not Person.objects.filter(last_name="Long").exists()
    for field in ("emails", "first_name"):
        value = "a" * 5001 if field == "emails" else "a" * 101
        response = alice_client.post(
            reverse("contacts:person_create"), {"first_name": "B", field: value, "visibility": "company"}
        )
        assert response.status_code == 200 and "at most" in body_of(response), field


def test_proxy_ssl_header_hsts_and_redirect_come_from_the_environment():
    import json
    import os
    import subprocess
    import sys

    script = (
        "import django, json; django.setup(); from django.conf import settings as s; "
        "print(json.dumps([s.SECURE_PROXY_SSL_HEADER, s.SECURE_SSL_REDIRECT, s.SECURE_HSTS_SECONDS, "
        "s.SECURE_HSTS_INCLUDE_SUBDOMAINS, s.SECURE_HSTS_PRELOAD, s.MAILSYNC_ALLOW_PRIVATE_HOSTS]))"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "crm.settings",
        "DJANGO_SECURE_PROXY_SSL_HEADER": "1",
        "DJANGO_SECURE_SSL_REDIRECT": "1",
        "DJANGO_SECURE_HSTS_SECONDS": "31536000",
        "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS": "1",
        "DJANGO_SECURE_HSTS_PRELOAD": "1",
        "MAILSYNC_ALLOW_PRIVATE_HOSTS": "0",
    }
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [
        ["HTTP_X_FORWARDED_PROTO", "https"],
        True,
        31536000,
        True,
        True,
        False,
    ]


def test_oauth_redirect_uri_is_https_behind_a_proxy(settings, alice_client, monkeypatch):
    monkeypatch.setenv("GOOGLE_OAUTH_CLIENT_ID", "client-123.apps.example")
    monkeypatch.setenv("GOOGLE_OAUTH_CLIENT_SECRET", "client-secret-abc")
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    response = alice_client.get(
        reverse("mailsync:oauth_start", args=["google"]), headers={"X-Forwarded-Proto": "https"}
    )
    assert "redirect_uri=https%3A%2F%2F" in response["Location"]


def documented_production_env() -> dict[str, str]:
    """The environment of the README's production setup, placeholders filled in."""
    from pathlib import Path

    from cryptography.fernet import Fernet

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("<!-- production-env", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    env = {}
    for line in block.strip().splitlines():
        name, _, value = line.strip().partition("=")
        env[name] = value
    placeholders = {
        "<long random string>": "x7" * 30 + "secret",
        "<Fernet key>": Fernet.generate_key().decode(),
    }
    return {name: placeholders.get(value, value) for name, value in env.items()}


def test_check_deploy_is_clean_with_the_documented_production_env(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    documented = documented_production_env()
    assert {"DJANGO_SECRET_KEY", "MAILSYNC_ENCRYPTION_KEYS", "DJANGO_SECURE_HSTS_SECONDS"} <= set(documented)
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("DJANGO_", "MAILSYNC_", "CRM_", "DATABASE_", "CELERY_"))
    }
    env = {**inherited, **documented, "CRM_VAR_DIR": str(tmp_path)}
    manage = Path(__file__).resolve().parent.parent / "manage.py"
    result = subprocess.run(
        [sys.executable, str(manage), "check", "--deploy", "--fail-level", "WARNING"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
    # And without the encryption keys, the deployment is told.
    del env["MAILSYNC_ENCRYPTION_KEYS"]
    result = subprocess.run([sys.executable, str(manage), "check", "--deploy"], env=env, capture_output=True, text=True)
    assert "mailsync.W001" in result.stdout + result.stderr
