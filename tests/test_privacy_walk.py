"""A privacy walk over EVERY URL pattern of the project, found from the URL resolver: a page added later is
walked without anyone listing it here (SPEC P1-P3, O1, issue 10).

Alice owns a private thread with a unique marker in its subject, a participant's name and address, the
body, the snippet and an attachment's name, and a mailbox password with a marker of its own. Every object
the walk can name has the same primary key, WALK_PK, so that any `<int:pk>` or admin `<object_id>` of
any page points at Alice's object of that page's model (her thread, her attachment, her account, her
user, the deal her thread is linked to...).

As bob (teammate), charlie (outsider), admin_user (company admin, staff without model permissions) and
support (superuser: every admin page), each URL is requested with GET, GET with a search for the
marker, an htmx GET and a POST of plausible form fields; then:
- the mail marker and the password (clear or encrypted) never appear in any response;
- nothing of Alice's mail, links, account, credentials or settings changed;
- no page answers 500, and every HTML page carries a Content-Security-Policy.
"""

import itertools
import re

import pytest
from django.contrib.contenttypes.models import ContentType
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from contacts.models import OrganizationDomain, PersonEmail
from crm.models import Team, User, Visibility
from deals.models import Pipeline, Stage
from mailsync.mailboxes.placement import refresh_mailboxes
from mailsync.models import (
    AccountAddress,
    Attachment,
    BlockedAddress,
    EmailAccount,
    EmailMessage,
    EmailTemplate,
    EmailThread,
    MailFolder,
    MailSettings,
    MessageParticipant,
    PendingServerAction,
    Signature,
    SignatureImage,
    ThreadLink,
)
from tests.factories import DealFactory, LeadFactory, OrganizationFactory, PersonFactory, ProjectFactory, UserFactory

pytestmark = pytest.mark.django_db

WALK_PK = 4242
MAIL_MARKER = "Quokka7731"
SECRET_MARKER = "Wombat-pw-9917"
SEARCH = "Quokka"  # a search for the marker; its echo in a search box is not the marker itself


@pytest.fixture(autouse=True)
def media_in_tmp(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path


@pytest.fixture
def world(db):
    sales = Team.objects.create(pk=WALK_PK, name="Sales")
    alice = UserFactory(pk=WALK_PK, email="alice@company.test", first_name="Alice", last_name="Owner", team=sales)
    organization = OrganizationFactory(pk=WALK_PK, owner=alice, name="Client Corp", visibility=Visibility.COMPANY)
    OrganizationDomain.objects.create(pk=WALK_PK, organization=organization, domain="client.example")
    person = PersonFactory(pk=WALK_PK, owner=alice, first_name="Ann", last_name="Client", organization=organization)
    PersonEmail.objects.create(pk=WALK_PK, person=person, email="ann@client.example", is_primary=True)
    pipeline = Pipeline.objects.create(pk=WALK_PK, name="Walk pipeline")
    stage = Stage.objects.create(pk=WALK_PK, pipeline=pipeline, name="Walk stage", order=1)
    deal = DealFactory(pk=WALK_PK, owner=alice, title="Client deal", pipeline=pipeline, stage=stage, person=person)
    LeadFactory(pk=WALK_PK, owner=alice, title="Client lead", person=person)
    ProjectFactory(pk=WALK_PK, owner=alice, title="Client project", deal=deal)

    account = EmailAccount(
        pk=WALK_PK,
        user=alice,
        email_address="alice@company.test",
        username="alice@company.test",
        imap_host="imap.company.example",
        smtp_host="smtp.company.example",
        state=EmailAccount.State.SYNCING,
    )
    account.set_secret(SECRET_MARKER)
    account.save()
    AccountAddress.objects.create(pk=WALK_PK, account=account, address="alice.alias@company.test")
    folder = MailFolder.objects.create(pk=WALK_PK, account=account, name="INBOX", role="inbox", uidvalidity=7)
    thread = EmailThread.objects.create(
        pk=WALK_PK,
        owner=alice,
        subject=f"Merger {MAIL_MARKER}",
        normalized_subject=f"merger {MAIL_MARKER.lower()}",
        visibility=EmailThread.Visibility.PRIVATE,
        message_count=1,
    )
    from django.utils import timezone

    message = EmailMessage.objects.create(
        pk=WALK_PK,
        account=account,
        thread=thread,
        message_key="k" * 64,
        message_id=f"{MAIL_MARKER}@rival.example",
        subject=f"Merger {MAIL_MARKER}",
        from_name=f"Boss {MAIL_MARKER}",
        from_address=f"boss.{MAIL_MARKER.lower()}@rival.example",
        date=timezone.now(),
        snippet=f"Snippet {MAIL_MARKER}",
        body_text=f"Body {MAIL_MARKER}",
        body_html=f"<p>Body {MAIL_MARKER}</p>",
        has_attachments=True,
    )
    from mailsync.models import MessageLocation

    MessageLocation.objects.create(pk=WALK_PK, message=message, folder=folder, uidvalidity=7, uid=1)
    MessageParticipant.objects.create(
        pk=WALK_PK, message=message, role="from", address=message.from_address, name=message.from_name
    )
    MessageParticipant.objects.create(message=message, role="to", address="ann@client.example", name="Ann")
    from django.core.files.base import ContentFile

    attachment = Attachment(pk=WALK_PK, message=message, filename=f"{MAIL_MARKER}-plan.pdf", size=9)
    attachment.file.save("plan.pdf", ContentFile(f"%PDF {MAIL_MARKER}".encode()), save=False)
    attachment.save()
    # Linked to records everybody may see: shared, it would be on their timelines; private, never.
    ThreadLink.objects.create(pk=WALK_PK, thread=thread, deal=deal, state=ThreadLink.State.LINKED, rule="manual")
    ThreadLink.objects.create(thread=thread, person=person, state=ThreadLink.State.LINKED, rule="person_address")
    BlockedAddress.objects.create(pk=WALK_PK, user=alice, pattern="@spam.example")
    MailSettings.objects.create(pk=WALK_PK, user=alice)
    PendingServerAction.objects.create(pk=WALK_PK, account=account, action="read", message_ids=[WALK_PK])
    # Her private template and her signature with its image (issue 13): her own writing, like her mail.
    EmailTemplate.objects.create(
        pk=WALK_PK, owner=alice, name=f"Template {MAIL_MARKER}", subject=f"Offer {MAIL_MARKER}",
        body_html=f"<p>Template body {MAIL_MARKER}</p>", visibility=Visibility.OWNER,
    )  # fmt: skip
    signature = Signature.objects.create(
        pk=WALK_PK, account=account, name=f"Signature {MAIL_MARKER}", body_html=f"<p>{MAIL_MARKER}</p>",
        is_default_for_new=True,
    )  # fmt: skip
    image = SignatureImage(pk=WALK_PK, signature=signature, content_type="image/png", size=9)
    image.file.save("logo.png", ContentFile(f"PNG {MAIL_MARKER}".encode()), save=False)
    image.save()
    refresh_mailboxes([message.pk])  # the list row and its search document, as the sync writes them

    bob = UserFactory(email="bob@company.test", first_name="Bob", last_name="Teammate", team=sales)
    charlie = UserFactory(
        email="charlie@company.test",
        first_name="Charlie",
        last_name="Outsider",
        team=Team.objects.create(name="Support"),
    )
    admin_user = UserFactory(
        email="admin@company.test", first_name="Ada", last_name="Admin", role=User.Role.ADMIN, is_staff=True
    )
    support = User.objects.create_superuser(email="support@company.test", password="support-password-1")
    return {
        "alice": alice,
        "bob": bob,
        "charlie": charlie,
        "admin_user": admin_user,
        "support": support,
        "account": account,
    }


# --- Every URL, from the resolver ----------------------------------------------------------------------

_ROUTE_PARAM = re.compile(r"<(?:(?P<converter>\w+):)?(?P<name>\w+)>")


def _patterns(patterns, prefix: str = "", namespace: str = ""):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
            yield from _patterns(pattern.url_patterns, prefix + str(pattern.pattern), inner)
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern), f"{namespace}{pattern.name}" if pattern.name else None, pattern


def _values_for(name: str) -> list[str]:
    if name == "content_type_id":  # the admin's "view on site": every mail model
        return [str(ct.pk) for ct in ContentType.objects.filter(app_label="mailsync")]
    if name == "app_label":
        return ["mailsync", "crm"]
    if name == "provider":
        return ["google", "microsoft"]
    if name in ("uidb36", "key"):
        return ["1", "x-y"]
    return [str(WALK_PK)]  # pk, link_pk, object_id and any id added later


def all_urls() -> list[str]:
    """One or more concrete URLs for every URL pattern of the project."""
    urls: list[str] = []
    for route, full_name, pattern in _patterns(get_resolver().url_patterns):
        regex = pattern.pattern.regex
        names = list(regex.groupindex) or [m.group("name") for m in _ROUTE_PARAM.finditer(route)]
        if "url" in names:  # the admin's catch-all
            urls.append("/admin/no-such-page/")
            continue
        for values in itertools.product(*(_values_for(name) for name in names)):
            kwargs = dict(zip(names, values, strict=True))
            if full_name:
                urls.append(reverse(full_name, kwargs=kwargs))
            else:
                urls.append("/" + _ROUTE_PARAM.sub(lambda m, kw=kwargs: kw[m.group("name")], route).lstrip("^"))
    return sorted(set(urls))


def test_the_walk_finds_every_kind_of_page():
    urls = all_urls()
    for expected in (
        f"/mail/threads/{WALK_PK}/",
        f"/mail/attachments/{WALK_PK}/",
        f"/mail/threads/{WALK_PK}/suggestions/{WALK_PK}/accept/",
        f"/admin/mailsync/emailaccount/{WALK_PK}/delete/",
        f"/admin/crm/user/{WALK_PK}/delete/",
        f"/admin/crm/user/{WALK_PK}/password/",
        "/admin/mailsync/emailaccount/",
        "/admin/autocomplete/",
        f"/people/{WALK_PK}/",
        "/accounts/login/",
    ):
        assert expected in urls, expected
    assert len(urls) > 150


# --- Requests --------------------------------------------------------------------------------------------

PRODUCT_POST = {
    "target": f"deal:{WALK_PK}",
    "visibility": "shared",
    "confirm": "yes",
    "mailbox": "inbox",
    "action": "delete",
    "thread": [str(WALK_PK)],
    "mode": "all",
    "folders": [str(WALK_PK)],
    "months": "3",
    "pattern": "@client.example",
    "linking_mode": "manual",
    "default_visibility": "shared",
    "email_link_preference": "mailto",
    "email_address": "alice@company.test",
    "password": "not-the-password",
    "title": "Renamed by a walker",
    "first_name": "Renamed",
    "name": "Renamed",
    "q": SEARCH,
}
ADMIN_POST = {"action": "delete_selected", "_selected_action": [str(WALK_PK)], "index": "0", "q": SEARCH}
AUTOCOMPLETE_QUERIES = [
    {"app_label": "mailsync", "model_name": "mailfolder", "field_name": "account", "term": SEARCH},
    {"app_label": "deals", "model_name": "deal", "field_name": "person", "term": SEARCH},
]


def requests_for(url: str, user: User):
    """(method, url, data, headers) to send to one URL as `user`."""
    yield "get", url, {}, {}
    names_an_object = str(WALK_PK) in url
    if url.startswith("/admin/"):
        if url == "/admin/autocomplete/":
            for query in AUTOCOMPLETE_QUERIES:
                yield "get", url, query, {}
        elif not names_an_object:  # changelists: search, filters and raw-id popups
            yield "get", url, {"q": SEARCH}, {}
            yield "get", url, {"_popup": "1", "_to_field": "id", "q": SEARCH}, {}
        # Editing and deleting through the admin are an admin's powers, not what is walked here (the guard
        # on credentials is in test_security.py). Any non-empty POST to a delete page confirms it, so an
        # empty one shows the confirmation again; change and add forms are read with GET only.
        if url.endswith("/delete/"):
            yield "post", url, {}, {}
        elif not url.endswith(("/change/", "/add/")):
            yield "post", url, ADMIN_POST, {}
        return
    if not names_an_object or url.startswith("/mail/"):
        # Unicode digits (int() refuses "²") in every id-like parameter a page may read.
        yield "get", url, {"q": SEARCH, "images": "²", "page": "²", "pipeline": "²", "since": "²"}, {}
    yield "get", url, {"q": SEARCH}, {"HX-Request": "true"}
    if url.endswith("/delete/") and user.is_company_admin:
        return  # company admins may delete CRM records (and so their links): a power, not a leak
    yield "post", url, PRODUCT_POST, {}
    yield "post", url, PRODUCT_POST, {"HX-Request": "true"}


def alice_state(world) -> tuple:
    """Everything of Alice's that another persona must not be able to change."""
    alice, account = world["alice"], world["account"]
    return (
        list(EmailThread.objects.filter(owner=alice).values_list("pk", "visibility", "subject")),
        list(
            EmailMessage.objects.filter(account=account).values_list(
                "pk", "is_read", "is_archived", "deleted_at", "is_blocked", "mailbox", "restored_to_inbox"
            )
        ),
        list(ThreadLink.objects.order_by("pk").values_list("pk", "state", "rule", "deal", "person", "lead")),
        list(Attachment.objects.values_list("pk", "filename")),
        list(
            EmailAccount.objects.filter(pk=account.pk).values_list(
                "secret_encrypted",
                "state",
                "username",
                "imap_host",
                "imap_port",
                "imap_security",
                "smtp_host",
                "smtp_port",
                "smtp_security",
                "trusted_ca_pem",
                "sync_all_folders",
                "past_sync_state",
                "removed_at",
            )
        ),
        list(MailFolder.objects.filter(account=account).values_list("pk", "selected", "uidvalidity")),
        list(AccountAddress.objects.filter(account=account).values_list("address", flat=True)),
        list(BlockedAddress.objects.filter(user=alice).values_list("pattern", flat=True)),
        list(MailSettings.objects.filter(user=alice).values_list("linking_mode", "default_visibility")),
        PendingServerAction.objects.filter(account=account).count(),
        list(EmailTemplate.objects.filter(owner=alice).values_list("pk", "name", "subject", "body_html", "visibility")),
        list(Signature.objects.filter(account=account).values_list("pk", "name", "body_html", "is_default_for_new")),
        list(SignatureImage.objects.values_list("pk", "file")),
        list(User.objects.filter(pk=alice.pk).values_list("password", "is_active", "is_staff", "email", "team")),
    )


def forbidden_strings(world) -> list[str]:
    return [MAIL_MARKER.lower(), SECRET_MARKER.lower(), world["account"].secret_encrypted.lower()]


def _content(response) -> str:
    raw = b"".join(response.streaming_content) if response.streaming else response.content
    return raw.decode(errors="replace").lower()


def _search_count(response) -> int | None:
    context = getattr(response, "context", None)
    if context is None:
        return None
    changelist = context.get("cl")
    return getattr(changelist, "result_count", None)


def _client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize("persona", ["bob", "charlie", "admin_user", "support"])
def test_privacy_walk_over_every_url(world, persona):
    user = world[persona]
    client = _client_for(user)
    before = alice_state(world)
    forbidden = forbidden_strings(world)
    walked = 0
    for url in all_urls():
        for method, target, data, headers in requests_for(url, user):
            if "_auth_user_id" not in client.session:
                client = _client_for(user)  # a logout page was walked
            response = getattr(client, method)(target, data, headers=headers)
            walked += 1
            where = f"{persona} {method.upper()} {target} {data if method == 'get' else ''}"
            assert response.status_code < 500, where
            body = _content(response)
            for text in forbidden:
                assert text not in body, f"{where}: shows {text!r}"
            content_type = response.get("Content-Type", "")
            if response.status_code == 200 and content_type.startswith("text/html"):
                assert response.get("Content-Security-Policy"), f"{where}: no Content-Security-Policy"
            if data.get("q") == SEARCH and _search_count(response) is not None:
                # A search for the marker finds what a search for nothing finds: no oracle by counts.
                control = client.get(target, {**data, "q": "Zzzzzz"}, headers=headers)
                assert _search_count(response) == _search_count(control), where
        assert alice_state(world) == before, f"{persona} at {url}: changed Alice's mail"
    assert walked > 500
