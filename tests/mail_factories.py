"""factory_boy factories for mail sync data, shared by every mail test.

`create_message` is the convenient way to put a message with its participants into a thread: it
keeps the thread's counters (message_count, first/last_message_at) the way ingestion does.
"""

from collections.abc import Sequence
from datetime import timedelta

import factory
from django.utils import timezone
from factory.django import DjangoModelFactory

from crm.addresses import normalize_email
from mailsync.models import (
    AccountAddress,
    Attachment,
    EmailAccount,
    EmailMessage,
    EmailThread,
    MailSettings,
    MessageParticipant,
    ThreadLink,
)
from mailsync.sync.parsing import message_id_key
from tests.factories import UserFactory


class EmailAccountFactory(DjangoModelFactory):
    class Meta:
        model = EmailAccount
        django_get_or_create = ("user", "email_address")

    user = factory.SubFactory(UserFactory)
    email_address = factory.SelfAttribute("user.email")
    username = factory.SelfAttribute("email_address")
    imap_host = "imap.company.test"
    smtp_host = "smtp.company.test"
    state = EmailAccount.State.SYNCING


class AccountAddressFactory(DjangoModelFactory):
    class Meta:
        model = AccountAddress

    account = factory.SubFactory(EmailAccountFactory)
    address = factory.Sequence(lambda n: f"alias{n}@company.test")


class MailSettingsFactory(DjangoModelFactory):
    class Meta:
        model = MailSettings
        django_get_or_create = ("user",)

    user = factory.SubFactory(UserFactory)


class EmailThreadFactory(DjangoModelFactory):
    class Meta:
        model = EmailThread

    owner = factory.SubFactory(UserFactory)
    subject = factory.Sequence(lambda n: f"Conversation {n}")
    normalized_subject = factory.LazyAttribute(lambda thread: thread.subject.lower())
    visibility = EmailThread.Visibility.PRIVATE


class EmailMessageFactory(DjangoModelFactory):
    class Meta:
        model = EmailMessage

    thread = factory.SubFactory(EmailThreadFactory)
    account = factory.LazyAttribute(lambda message: EmailAccountFactory(user=message.thread.owner))
    message_id = factory.Sequence(lambda n: f"message-{n}@mail.test")  # stored without <>, as ingestion does
    message_key = factory.LazyAttribute(lambda message: message_id_key(message.message_id))
    subject = factory.LazyAttribute(lambda message: message.thread.subject)
    from_address = "sender@customer.example"
    date = factory.LazyFunction(timezone.now)
    snippet = factory.LazyAttribute(lambda message: f"Snippet of {message.message_id}")
    body_text = "Hello,\n\nthis is a test message.\n"
    direction = EmailMessage.Direction.RECEIVED


class MessageParticipantFactory(DjangoModelFactory):
    class Meta:
        model = MessageParticipant

    message = factory.SubFactory(EmailMessageFactory)
    role = MessageParticipant.Role.TO
    address = factory.Sequence(lambda n: f"participant{n}@customer.example")


class AttachmentFactory(DjangoModelFactory):
    class Meta:
        model = Attachment

    message = factory.SubFactory(EmailMessageFactory)
    filename = "quote.pdf"
    content_type = "application/pdf"
    file = factory.django.FileField(filename="quote.pdf", data=b"%PDF-1.4 test attachment")
    size = factory.LazyAttribute(lambda attachment: attachment.file.size)


class ThreadLinkFactory(DjangoModelFactory):
    class Meta:
        model = ThreadLink

    thread = factory.SubFactory(EmailThreadFactory)
    state = ThreadLink.State.LINKED
    rule = "manual"


def create_message(
    thread: EmailThread,
    *,
    sender: str,
    to: Sequence[str] = (),
    cc: Sequence[str] = (),
    bcc: Sequence[str] = (),
    reply_to: Sequence[str] = (),
    sender_header: str = "",
    sent: bool | None = None,
    date=None,
    **fields,
) -> EmailMessage:
    """A message in `thread` with its participants, as ingestion stores it (addresses normalised).

    `sent` defaults to "the sender is the thread owner's account address".
    """
    account = fields.pop("account", None) or EmailAccountFactory(user=thread.owner)
    sender = normalize_email(sender)
    if sent is None:
        sent = sender == normalize_email(account.email_address)
    if date is None:
        latest = thread.last_message_at or timezone.now() - timedelta(days=1)
        date = latest + timedelta(minutes=1)
    message = EmailMessageFactory(
        thread=thread,
        account=account,
        from_address=sender,
        date=date,
        direction=EmailMessage.Direction.SENT if sent else EmailMessage.Direction.RECEIVED,
        recipient_count=len(to) + len(cc) + len(bcc),
        **fields,
    )
    roles = [
        (MessageParticipant.Role.FROM, [sender]),
        (MessageParticipant.Role.SENDER, [sender_header] if sender_header else []),
        (MessageParticipant.Role.REPLY_TO, reply_to),
        (MessageParticipant.Role.TO, to),
        (MessageParticipant.Role.CC, cc),
        (MessageParticipant.Role.BCC, bcc),
    ]
    MessageParticipant.objects.bulk_create(
        MessageParticipant(message=message, role=role, address=normalize_email(address))
        for role, addresses in roles
        for address in addresses
    )
    thread.message_count += 1
    thread.first_message_at = min(filter(None, [thread.first_message_at, date]))
    thread.last_message_at = max(filter(None, [thread.last_message_at, date]))
    thread.save(update_fields=["message_count", "first_message_at", "last_message_at"])
    return message


def create_thread(
    owner,
    *,
    sender: str,
    to: Sequence[str] = (),
    visibility: str | None = None,
    subject: str | None = None,
    **message_fields,
):
    """A thread owned by `owner` with one message from `sender` (to the owner unless `to` says otherwise)."""
    thread_fields = {"subject": subject} if subject is not None else {}
    thread = EmailThreadFactory(owner=owner, visibility=visibility or EmailThread.Visibility.PRIVATE, **thread_fields)
    create_message(thread, sender=sender, to=list(to) or [owner.email], **message_fields)
    return thread


def fast_password_hashing(settings) -> None:
    """Personas are created with a password; the default hasher costs ~0.3 s per user."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
