"""Writes on conversations: manual links (L4, L5) to people, organizations, deals, leads and projects, a
person from an unknown sender, visibility (P1-P3), blocked addresses (F1) and the "remove emails not
related to contacts" clean-up (F3).

Who may do what:
- link / unlink / accept a suggestion: the thread's OWNER only, and only to records they may see. A
  shared thread is seen by whoever may see a record it is linked to, so its links ARE its audience: a
  link widens it, an unlink narrows it, and only the owner decides who sees their mail (P3).
- suggest a link: anyone else who can see the thread (`access.visible_threads`) AND the record
  (`visible_to`). A suggestion changes nobody's access (only linked records share a thread); it waits in
  the owner's thread view until they link it or say "not this one".
- change a thread's visibility: its owner only (P3); admins included in "nobody else".
- create a person from a sender: anyone who sees the thread (the person is theirs, a CRM record like any
  other); the thread's links then follow its owner's rules, and a link never widens a private thread.
- block list, default visibility and clean-up: each user for their own mail only.
Callers that break these rules get PermissionDenied (views answer 404 before it gets that far).
"""

from dataclasses import dataclass

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models, transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from contacts.models import Organization, Person, PersonEmail
from contacts.selectors import email_owners
from contacts.services import create_person
from crm.addresses import domain_of, is_free_mail_domain, normalize_email
from crm.models import User
from mailsync.linking import blocking
from mailsync.linking.access import can_change_links, can_change_visibility, visible_threads
from mailsync.linking.rules import MANUAL, USER_SUGGESTION, link_target, link_threads, own_addresses, target_field_for
from mailsync.mailboxes.placement import refresh_user_mailboxes
from mailsync.models import BlockedAddress, EmailMessage, EmailThread, MailSettings, MessageParticipant, ThreadLink


def _record_visible(user: User, record: models.Model) -> bool:
    return type(record).objects.visible_to(user).filter(pk=record.pk).exists()


def can_link(user: User, thread: EmailThread, record: models.Model) -> bool:
    """May `user` link / unlink this thread to / from this record (the owner, to a record they may see)."""
    return (
        can_change_links(user, thread)
        and visible_threads(user).filter(pk=thread.pk).exists()
        and _record_visible(user, record)
    )


def can_suggest(user: User, thread: EmailThread, record: models.Model) -> bool:
    """May `user` suggest this record to the thread's owner (anyone who sees both)."""
    return visible_threads(user).filter(pk=thread.pk).exists() and _record_visible(user, record)


def _lock_thread(thread: EmailThread) -> None:
    # Same lock as linking.link_threads: a user's decision is never lost to a concurrent re-link.
    EmailThread.objects.select_for_update().filter(pk=thread.pk).first()


def _set_link(*, user: User, thread: EmailThread, record: models.Model, state: str, reason: str) -> ThreadLink:
    if not can_change_links(user, thread):
        raise PermissionDenied(
            "Only the owner of this conversation links and unlinks it (its links decide who sees it). "
            "Suggest a record instead."
        )
    if not can_link(user, thread, record):
        raise PermissionDenied("You cannot change the links of this conversation to this record.")
    _lock_thread(thread)
    link, _created = ThreadLink.objects.update_or_create(
        thread=thread,
        **{target_field_for(record): record},
        defaults={"state": state, "rule": MANUAL, "reason": reason[:300], "created_by": user},
    )
    # Links derived from this one follow it (a person's single open deal, their organization...).
    link_threads([thread.pk])
    link.refresh_from_db()
    return link


@transaction.atomic
def link_thread(*, user: User, thread: EmailThread, record: models.Model) -> ThreadLink:
    """Link by hand; also lifts a sticky unlink of that record. Other links stay."""
    return _set_link(user=user, thread=thread, record=record, state=ThreadLink.State.LINKED, reason=f"Linked by {user}")


@transaction.atomic
def unlink_thread(*, user: User, thread: EmailThread, record: models.Model) -> ThreadLink:
    """Unlink; sticky for the whole thread, later replies included, until someone links it again (L5)."""
    return _set_link(
        user=user, thread=thread, record=record, state=ThreadLink.State.UNLINKED, reason=f"Unlinked by {user}"
    )


@transaction.atomic
def suggest_link(*, user: User, thread: EmailThread, record: models.Model) -> ThreadLink:
    """A colleague's suggestion to the owner; nobody's access changes until the owner links it."""
    if not can_suggest(user, thread, record):
        raise PermissionDenied("You cannot suggest this record for this conversation.")
    _lock_thread(thread)
    field = target_field_for(record)
    existing = ThreadLink.objects.filter(thread=thread, **{field: record}).first()
    if existing is not None:
        if existing.state == ThreadLink.State.LINKED:
            raise ValidationError(f"This conversation is already linked to {record}.")
        if existing.state == ThreadLink.State.UNLINKED:
            raise ValidationError(
                f"{thread.owner} unlinked {record} from this conversation; only they can link it again."
            )
        return existing  # already suggested
    return ThreadLink.objects.create(
        thread=thread,
        state=ThreadLink.State.SUGGESTED,
        rule=USER_SUGGESTION,
        reason=f"Suggested by {user}"[:300],
        created_by=user,
        **{field: record},
    )


@transaction.atomic
def accept_suggestion(*, user: User, link: ThreadLink) -> ThreadLink:
    if link.state != ThreadLink.State.SUGGESTED:
        raise ValidationError("This suggestion is no longer open.")
    record = link_target(link)
    return _set_link(
        user=user,
        thread=link.thread,
        record=record,
        state=ThreadLink.State.LINKED,
        reason=f"Suggestion accepted by {user}: {link.reason}",
    )


# --- A person from an unknown sender ---------------------------------------------------------------


@dataclass(frozen=True)
class UnknownSender:
    name: str
    address: str
    organization: Organization | None  # found from the address's domain (never a free-mail domain)


def _organization_for(user: User, address: str) -> Organization | None:
    """The organization of the address's domain, if the user may see it; free-mail domains (gmail.com...)
    say nothing about where someone works."""
    domain = domain_of(address)
    if not domain or is_free_mail_domain(domain):
        return None
    return Organization.objects.visible_to(user).filter(domains__domain__iexact=domain).order_by("pk").first()


def unknown_senders(user: User, thread: EmailThread) -> list[UnknownSender]:
    """Who wrote in this conversation (the user excluded) and is no person of the CRM yet: "create a
    person from this sender". Only for a thread the user may see (the caller checked)."""
    senders: dict[str, str] = {}
    for name, address in (
        MessageParticipant.objects.filter(
            message__thread=thread, message__deleted_at__isnull=True, role=MessageParticipant.Role.FROM
        )
        .order_by("message__date", "pk")
        .values_list("name", "address")
    ):
        address = normalize_email(address)
        if address and address not in senders:
            senders[address] = name
    for address in own_addresses(user) | set(email_owners(senders)):
        senders.pop(address, None)
    return [
        UnknownSender(name=name, address=address, organization=_organization_for(user, address))
        for address, name in senders.items()
    ]


def _split_name(name: str) -> tuple[str, str]:
    """ "Ann Smith" -> ("Ann", "Smith"); "Smith, Ann" -> ("Ann", "Smith"); "" -> ("", "")."""
    name = " ".join(name.replace('"', " ").split())
    if "," in name:
        last, _, first = name.partition(",")
        return first.strip()[:100], last.strip()[:100]
    first, _, last = name.partition(" ")
    return first[:100], last[:100]


@transaction.atomic
def create_person_from_sender(*, user: User, thread: EmailThread, address: str) -> Person:
    """A person (owned by `user`) for a sender of a conversation the user may see, in the organization of
    the address's domain when there is one; the person's conversations are linked by address as usual
    (the thread's owner's rules; a link never widens who sees a private conversation)."""
    if not visible_threads(user).filter(pk=thread.pk).exists():
        raise PermissionDenied("You cannot see this conversation.")
    sender = next((item for item in unknown_senders(user, thread) if item.address == normalize_email(address)), None)
    if sender is None:
        raise ValidationError(f"{address} did not write in this conversation, or is already a person of the CRM.")
    first_name, last_name = _split_name(sender.name)
    person = create_person(
        owner=user,
        first_name=first_name,
        last_name=last_name,
        emails=[sender.address],
        organization=sender.organization,
    )
    link_threads([thread.pk])  # this conversation at once; the others after the commit (create_person)
    return person


def _valid_visibility(visibility: str) -> str:
    if visibility not in EmailThread.Visibility.values:
        raise ValidationError("Choose “Private” or “Shared with the company”.")
    return visibility


@transaction.atomic
def set_thread_visibility(*, user: User, thread: EmailThread, visibility: str) -> EmailThread:
    if not can_change_visibility(user, thread):
        raise PermissionDenied("Only the owner of this conversation can change who sees it.")
    thread.visibility = _valid_visibility(visibility)
    thread.save(update_fields=["visibility"])
    return thread


@transaction.atomic
def set_default_visibility(*, user: User, visibility: str) -> MailSettings:
    """The visibility of conversations synced from now on; existing threads keep theirs (P2)."""
    mail_settings, _created = MailSettings.objects.get_or_create(user=user)
    mail_settings.default_visibility = _valid_visibility(visibility)
    mail_settings.save(update_fields=["default_visibility"])
    return mail_settings


# --- Blocked addresses (F1) ----------------------------------------------------------------------------


def preview_blocked_address(*, user: User, pattern: str) -> tuple[str, int]:
    """(normalised pattern, how many visible messages it would hide); ValidationError when invalid."""
    normalized = blocking.normalize_block_pattern(pattern)
    if BlockedAddress.objects.filter(user=user, pattern=normalized).exists():
        raise ValidationError(f"{normalized} is already blocked.")
    return normalized, blocking.preview_block(user, normalized)


@transaction.atomic
def add_blocked_address(*, user: User, pattern: str) -> BlockedAddress:
    return blocking.add_block(user, pattern)


@transaction.atomic
def remove_blocked_address(*, user: User, blocked: BlockedAddress) -> None:
    if blocked.user_id != user.pk:
        raise PermissionDenied("This blocked address belongs to someone else.")
    blocking.remove_block(user, blocked)


# --- Contacts filter and clean-up (F2, F3) -------------------------------------------------------------


def _contact_participant(user: User) -> Exists:
    """A participant of a thread (OuterRef) is a person the user may see, other than the user."""
    contact_addresses = PersonEmail.objects.filter(person__in=Person.objects.visible_to(user)).values("email")
    return Exists(
        MessageParticipant.objects.filter(
            message__thread=OuterRef("pk"), message__deleted_at__isnull=True, address__in=contact_addresses
        ).exclude(address__in=own_addresses(user) or {""})
    )


def from_existing_contact(threads: QuerySet[EmailThread], user: User) -> QuerySet[EmailThread]:
    """Inbox filter (F2): threads with at least one participant who is a contact the user may see."""
    return threads.filter(_contact_participant(user))


def _non_contact_messages(user: User) -> QuerySet[EmailMessage]:
    """The user's own visible messages in threads not related to any contact.

    A thread is related when a participant is a person the user may see, or when it is linked to any
    record (a person, an organization, a deal, a lead or a project): mail on a record's timeline is
    never "not related to contacts". Drafts are kept: they are unsent work.
    """
    related = EmailThread.objects.filter(owner=user).filter(
        Q(_contact_participant(user))
        | Q(Exists(ThreadLink.objects.filter(thread=OuterRef("pk"), state=ThreadLink.State.LINKED)))
    )
    return EmailMessage.objects.filter(
        thread__owner=user, deleted_at__isnull=True, is_blocked=False, is_draft=False
    ).exclude(thread__in=related)


def preview_remove_non_contact_mail(user: User) -> int:
    return _non_contact_messages(user).count()


@transaction.atomic
def remove_non_contact_mail(user: User) -> int:
    """Soft-delete (deleted_at) the messages `preview_remove_non_contact_mail` counts; returns how many."""
    # deletion_source "user": a deletion in the CRM that a later sync must not undo.
    removed = _non_contact_messages(user).update(deleted_at=timezone.now(), deletion_source="user")
    refresh_user_mailboxes(user)  # the lists and their counts follow (mailsync.mailbox)
    return removed
