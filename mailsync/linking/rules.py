"""Which CRM records a conversation belongs to (SPEC L1-L7), computed from its participants' addresses.

`link_threads(thread_ids)` computes the wanted links of each thread from the current CRM data and
brings its ThreadLink rows to that state. It is idempotent: running it twice changes nothing, so
ingestion and every CRM change that may affect links can simply re-run it.

Rules, in the words the thread view shows (ThreadLink.rule -> RULE_LABELS):
- people: a participant's address (any role, any non-deleted message) is one of their addresses;
- organizations: a participant's domain is one of the organization's domains (exact domain; free-mail
  domains such as gmail.com never identify an organization), or a linked person works there;
- deals / leads / projects, only OPEN ones of the linked people and organizations:
  * automatic mode: a linked person's single open deal is linked; several open deals are never
    guessed: none is linked and all are suggested; deals known only through an organization are
    suggested; a mass email (more than MASS_EMAIL_PARTICIPANTS external participants) only suggests;
    a conversation that ended more than OLD_MAIL_DAYS before the deal was created is only suggested
    ("before_deal"): the inquiry that led to a deal is linked, last year's mail is offered;
  * manual mode: people and organizations are linked (contact timelines), deals only suggested.
- The thread owner's own addresses never count, and only records the thread owner may see are linked
  or suggested, so a link never reveals a record to the owner that they could not open.

Users have the last word:
- a link made or accepted by a user (rule "manual") is never removed by automatic linking, nor is a
  colleague's suggestion (rule "user_suggestion") the owner has not answered yet;
- an unlink (state "unlinked") is sticky for the whole thread, including later replies, until a user
  links that record again (L5);
- an automatic link stays while the reason it was made still holds structurally (the person is still a
  participant, the deal still theirs), even when the deal is closed or a second deal appears later, so a
  deal's email history does not vanish; a link whose reason no longer holds is removed.
"""

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import connection, models, transaction
from django.db.models import Q
from django.utils import timezone

from contacts.models import Organization, OrganizationDomain, Person, PersonEmail
from crm.addresses import is_free_mail_domain, normalize_domain, normalize_email
from crm.models import User
from crm.params import parse_id
from deals.models import Deal
from leads.models import Lead
from mailsync.mailboxes.tuning import tune_planner
from mailsync.models import (
    AccountAddress,
    EmailAccount,
    EmailMessage,
    EmailThread,
    MailSettings,
    MessageParticipant,
    ThreadLink,
)
from projects.models import Project

from .access import thread_links_for_user

MASS_EMAIL_PARTICIPANTS = 50
# Threads are linked in batches of this many: the number of queries per batch is constant.
BATCH_SIZE = 500

TARGET_FIELDS = ("person", "organization", "deal", "lead", "project")
RECORD_KINDS = ("deal", "lead", "project")
RECORD_MODELS: dict[str, type[models.Model]] = {"deal": Deal, "lead": Lead, "project": Project}
LINKABLE_MODELS: dict[str, type[models.Model]] = {"person": Person, "organization": Organization, **RECORD_MODELS}
OPEN_STATUS = {"deal": Deal.Status.OPEN, "lead": Lead.Status.OPEN, "project": Project.Status.OPEN}
PLURAL = {"deal": "deals", "lead": "leads", "project": "projects"}

MANUAL = "manual"
# A colleague (not the owner) suggested the record: kept until the owner decides, or the owner's own
# rules link it.
USER_SUGGESTION = "user_suggestion"
PERSON_ADDRESS = "person_address"
ORG_DOMAIN = "org_domain"
PERSON_ORGANIZATION = "person_organization"
MANUAL_MODE = "manual_mode"
MASS_EMAIL = "mass_email"
# A conversation whose latest message is this much older than a deal (lead, project) is only suggested for
# it: the mail that led to a new deal (days before) is linked; an 8-month-old thread is not filed under it.
OLD_MAIL_DAYS = 30

RULE_LABELS = {
    MANUAL: "Linked by a user",
    USER_SUGGESTION: "Suggested by a colleague",
    PERSON_ADDRESS: "A participant's address belongs to this person",
    ORG_DOMAIN: "A participant's email domain belongs to this organization",
    PERSON_ORGANIZATION: "A linked person works at this organization",
    MANUAL_MODE: "Manual linking mode: suggested, never linked automatically",
    MASS_EMAIL: "Mass email: records are suggested, not linked automatically",
}
for _kind in RECORD_KINDS:
    RULE_LABELS[f"single_open_{_kind}"] = f"The only open {_kind} of a linked person"
    RULE_LABELS[f"several_open_{PLURAL[_kind]}"] = f"Several open {PLURAL[_kind]}: choose one"
    RULE_LABELS[f"organization_{_kind}"] = f"Open {_kind} of a linked organization"
    RULE_LABELS[f"another_{_kind}_linked"] = f"The thread is already linked to another {_kind}"
    RULE_LABELS[f"before_{_kind}"] = f"Mail that ended long before the {_kind} was created: suggested"


def rule_label(rule: str) -> str:
    return RULE_LABELS.get(rule, rule.replace("_", " "))


def link_target(link: ThreadLink) -> models.Model | None:
    return link.person or link.organization or link.deal or link.lead or link.project


def target_key(link: ThreadLink) -> tuple[str, int]:
    for name in TARGET_FIELDS:
        target_id = getattr(link, f"{name}_id")
        if target_id:
            return name, target_id
    raise ValueError(f"ThreadLink {link.pk} has no target")


def visible_record(user, reference: str) -> models.Model | None:
    """The record named by "deal:12" (person, organization, deal, lead, project) if `user` may see it;
    None for anything else (a malformed reference, another kind, a record out of sight)."""
    kind, _colon, raw_pk = (reference or "").partition(":")
    model = LINKABLE_MODELS.get(kind)
    pk = parse_id(raw_pk)
    if model is None or pk is None:
        return None
    return model.objects.visible_to(user).filter(pk=pk).first()


def reference_of(record: models.Model | None) -> str:
    """ "deal:12" for a record (the reverse of visible_record); "" for None."""
    return f"{target_field_for(record)}:{record.pk}" if record is not None else ""


def target_field_for(record: models.Model) -> str:
    """ "person", "organization", "deal", "lead" or "project" for a CRM record."""
    for name, model in (("person", Person), ("organization", Organization), *RECORD_MODELS.items()):
        if isinstance(record, model):
            return name
    raise TypeError(f"{type(record).__name__} cannot be linked to a conversation")


# --- Public entry points -------------------------------------------------------------------------------


def link_threads(thread_ids: Iterable[int]) -> None:
    """(Re)compute the links of these threads. Queries are constant per batch and thread owner."""
    ids = sorted(set(thread_ids))
    for start in range(0, len(ids), BATCH_SIZE):
        _link_batch(ids[start : start + BATCH_SIZE])


def relink_for_addresses(addresses: Iterable[str]) -> None:
    """Re-run linking on every thread in which one of these addresses takes part (L7).

    Contacts services call it with the addresses a person gained AND lost, so that new conversations
    appear on their timeline and links whose reason disappeared are removed.
    """
    wanted = {normalize_email(address) for address in addresses} - {""}
    if wanted:
        link_threads(_thread_ids_with_participants(Q(address__in=wanted)))


def relink_for_domains(domains: Iterable[str]) -> None:
    """Re-run linking on every thread with a participant at one of these domains (exact domain)."""
    wanted = {normalize_domain(domain) for domain in domains} - {""}
    if not wanted:
        return
    condition = Q()
    for domain in wanted:
        condition |= Q(address__endswith=f"@{domain}")
    link_threads(_thread_ids_with_participants(condition))


def relink_for_person(person: Person) -> None:
    """After a person was created or changed (addresses, organization, visibility)."""
    addresses = list(PersonEmail.objects.filter(person=person).values_list("email", flat=True))
    thread_ids = set(ThreadLink.objects.filter(person=person).values_list("thread_id", flat=True))
    if addresses:
        thread_ids |= set(_thread_ids_with_participants(Q(address__in=addresses)))
    link_threads(thread_ids)


def relink_for_organization(organization: Organization) -> None:
    """After an organization was created or changed (domains, visibility, people)."""
    domains = list(OrganizationDomain.objects.filter(organization=organization).values_list("domain", flat=True))
    people_addresses = list(
        PersonEmail.objects.filter(person__organization=organization).values_list("email", flat=True)
    )
    thread_ids = set(ThreadLink.objects.filter(organization=organization).values_list("thread_id", flat=True))
    condition = Q(address__in=people_addresses) if people_addresses else Q(pk__in=[])
    for domain in domains:
        condition |= Q(address__endswith=f"@{domain}")
    thread_ids |= set(_thread_ids_with_participants(condition))
    link_threads(thread_ids)


def relink_for_record(record: Deal | Lead | Project) -> None:
    """After a deal, lead or project was created or changed (status, person, organization, visibility).

    Re-runs the threads already linked to it, to its person or to its organization.
    """
    kind = target_field_for(record)
    condition = Q(**{kind: record})
    if record.person_id:
        condition |= Q(person_id=record.person_id)
    if record.organization_id:
        condition |= Q(organization_id=record.organization_id)
    link_threads(ThreadLink.objects.filter(condition).values_list("thread_id", flat=True).distinct())


def suggestions_for_thread(thread: EmailThread, user: User) -> list[ThreadLink]:
    """Suggested links of the thread whose record `user` may see (the thread view offers them)."""
    return [link for link in thread_links_for_user(user, thread) if link.state == ThreadLink.State.SUGGESTED]


def own_addresses(user: User) -> set[str]:
    """The addresses of the user's mailboxes and aliases (and login): never a participant to link."""
    # order_by(): SQLite refuses ORDER BY (the models' default ordering) inside a UNION.
    accounts = EmailAccount.objects.filter(user_id=user.pk).order_by().values_list("email_address", flat=True)
    aliases = AccountAddress.objects.filter(account__user_id=user.pk).order_by().values_list("address", flat=True)
    addresses = {normalize_email(address) for address in accounts.union(aliases)}
    addresses.add(normalize_email(user.email))
    return addresses - {""}


def _thread_ids_with_participants(condition: Q) -> list[int]:
    return list(
        MessageParticipant.objects.filter(condition, message__deleted_at__isnull=True)
        .values_list("message__thread_id", flat=True)
        .distinct()
    )


# --- The computation -----------------------------------------------------------------------------------


@dataclass
class Wanted:
    state: str
    rule: str
    reason: str


@dataclass
class OwnerData:
    """Everything linking needs about the threads of one owner, loaded in a constant number of queries."""

    owner: User
    manual_mode: bool
    participants: dict[int, set[str]]
    existing: dict[int, dict[tuple[str, int], ThreadLink]]
    person_by_address: dict[str, int] = field(default_factory=dict)
    organization_by_domain: dict[str, int] = field(default_factory=dict)
    people: dict[int, Person] = field(default_factory=dict)
    organizations: dict[int, Organization] = field(default_factory=dict)
    records: dict[str, dict[int, models.Model]] = field(default_factory=dict)
    # thread id -> date of its latest message (a deal created after it is only suggested)
    last_message_at: dict[int, datetime | None] = field(default_factory=dict)


@transaction.atomic
def _link_batch(thread_ids: list[int]) -> None:
    tune_planner()
    # Row locks serialise linking with a user's link / unlink on the same thread, so an unlink made
    # while linking runs is never overwritten (services lock the thread the same way). Only the columns
    # linking reads: model instances (with their owner joined) were most of this task's Python time
    # after an initial sync's batch (issue 18).
    rows = (
        EmailThread.objects.filter(pk__in=thread_ids)
        .order_by("pk")
        .select_for_update(of=("self",))
        .values_list("pk", "owner_id", "last_message_at")
    )
    by_owner: dict[int, dict[int, datetime | None]] = defaultdict(dict)
    for pk, owner_id, last_message_at in rows:
        by_owner[owner_id][pk] = last_message_at
    owners = User.objects.in_bulk(list(by_owner))
    for owner_id, last_message_at in by_owner.items():
        _link_owner_threads(owners[owner_id], last_message_at)


def _link_owner_threads(owner: User, last_message_at: dict[int, datetime | None]) -> None:
    """Link one owner's threads, given as thread id -> date of its latest message."""
    data = _load(owner, list(last_message_at))
    data.last_message_at = last_message_at
    to_create: list[ThreadLink] = []
    to_update: list[ThreadLink] = []
    to_delete: list[int] = []
    now = timezone.now()
    for thread_id in last_message_at:
        existing = data.existing.get(thread_id, {})
        wanted = _wanted_links(data, thread_id, existing)
        for key, link in existing.items():
            if link.state == ThreadLink.State.UNLINKED or link.rule == MANUAL:
                continue
            target = wanted.get(key)
            if target is None and link.rule == USER_SUGGESTION:
                continue  # the owner has not answered the colleague's suggestion yet
            if target is None:
                to_delete.append(link.pk)
            elif (link.state, link.rule, link.reason) != (target.state, target.rule, target.reason):
                link.state, link.rule, link.reason = target.state, target.rule, target.reason
                link.updated_at = now  # bulk_update does not fill auto_now fields
                to_update.append(link)
        for (name, target_id), target in wanted.items():
            if (name, target_id) not in existing:
                to_create.append(
                    ThreadLink(
                        thread_id=thread_id,
                        state=target.state,
                        rule=target.rule,
                        reason=target.reason,
                        **{f"{name}_id": target_id},
                    )
                )
    if to_delete:
        ThreadLink.objects.filter(pk__in=to_delete).delete()
    if to_update:
        ThreadLink.objects.bulk_update(to_update, ["state", "rule", "reason", "updated_at"])
    if to_create:
        # A concurrent run may have created the same link: the unique constraints make that a no-op.
        ThreadLink.objects.bulk_create(to_create, ignore_conflicts=True)


def _thread_participants(thread_ids: list[int]) -> Iterable[tuple[int, str]]:
    """The distinct (thread id, address) of the stored, not deleted messages of these threads."""
    if connection.vendor == "postgresql":
        # Each message's participants by its index, whatever the planner thinks of the tables' sizes: it
        # preferred a hash join over every participant of the database (a sequential scan growing with
        # the mailbox: 5-25 ms a batch at 50,000 messages) to a few index lookups per message.
        # OFFSET 0 keeps the subquery a per-message lookup.
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                SELECT DISTINCT m.thread_id, p.address
                FROM {EmailMessage._meta.db_table} m
                CROSS JOIN LATERAL (
                    SELECT address FROM {MessageParticipant._meta.db_table} WHERE message_id = m.id OFFSET 0
                ) p
                WHERE m.thread_id = ANY(%s) AND m.deleted_at IS NULL
                """,  # noqa: S608 (table names from the models; values are parameters)
                [list(thread_ids)],
            )
            return cursor.fetchall()
    return (
        MessageParticipant.objects.filter(message__thread_id__in=thread_ids, message__deleted_at__isnull=True)
        .values_list("message__thread_id", "address")
        .distinct()
    )


def _load(owner: User, thread_ids: list[int]) -> OwnerData:
    own = own_addresses(owner)
    mail_settings = MailSettings.objects.filter(user=owner).first()
    participants: dict[int, set[str]] = defaultdict(set)
    rows = _thread_participants(thread_ids)
    normalized: dict[str, str] = {}  # the same people write in many threads
    for thread_id, address in rows:
        clean = normalized.get(address)
        if clean is None:
            clean = normalized[address] = normalize_email(address)
        if clean and clean not in own:
            participants[thread_id].add(clean)

    existing: dict[int, dict[tuple[str, int], ThreadLink]] = defaultdict(dict)
    for link in ThreadLink.objects.filter(thread_id__in=thread_ids):
        existing[link.thread_id][target_key(link)] = link

    data = OwnerData(
        owner=owner,
        manual_mode=bool(mail_settings and mail_settings.linking_mode == MailSettings.LinkingMode.MANUAL),
        participants=participants,
        existing=existing,
    )
    all_addresses = set().union(*participants.values()) if participants else set()
    domains = {address.rsplit("@", 1)[1] for address in all_addresses}
    domains = {domain for domain in domains if not is_free_mail_domain(domain)}

    visible_people = Person.objects.visible_to(owner)
    visible_organizations = Organization.objects.visible_to(owner)
    if all_addresses:
        data.person_by_address = dict(
            PersonEmail.objects.filter(email__in=all_addresses, person__in=visible_people).values_list(
                "email", "person_id"
            )
        )
    if domains:
        data.organization_by_domain = dict(
            OrganizationDomain.objects.filter(domain__in=domains, organization__in=visible_organizations).values_list(
                "domain", "organization_id"
            )
        )

    # Records already linked, suggested or unlinked are loaded too: a kept link needs its record.
    existing_keys = [key for links in existing.values() for key in links]
    person_ids = set(data.person_by_address.values()) | {pk for name, pk in existing_keys if name == "person"}
    if person_ids:
        data.people = {
            person.pk: person for person in visible_people.filter(pk__in=person_ids).prefetch_related("emails")
        }
    organization_ids = set(data.organization_by_domain.values())
    organization_ids |= {person.organization_id for person in data.people.values() if person.organization_id}
    organization_ids |= {pk for name, pk in existing_keys if name == "organization"}
    if organization_ids:
        data.organizations = {org.pk: org for org in visible_organizations.filter(pk__in=organization_ids)}

    for kind, model in RECORD_MODELS.items():
        already = {pk for name, pk in existing_keys if name == kind}
        candidates = Q(status=OPEN_STATUS[kind]) & (
            Q(person_id__in=list(data.people)) | Q(organization_id__in=list(data.organizations))
        )
        if not data.people and not data.organizations and not already:
            data.records[kind] = {}
            continue
        data.records[kind] = {
            record.pk: record for record in model.objects.visible_to(owner).filter(candidates | Q(pk__in=already))
        }
    return data


def _wanted_links(
    data: OwnerData, thread_id: int, existing: dict[tuple[str, int], ThreadLink]
) -> dict[tuple[str, int], Wanted]:
    """The links this thread should have, before stickiness and manual links are applied."""
    linked = ThreadLink.State.LINKED
    addresses = data.participants.get(thread_id, set())
    unlinked = {key for key, link in existing.items() if link.state == ThreadLink.State.UNLINKED}
    manual = {key for key, link in existing.items() if link.rule == MANUAL and link.state == linked}
    wanted: dict[tuple[str, int], Wanted] = {}

    def offer(key: tuple[str, int], state: str, rule: str, reason: str) -> None:
        if key not in unlinked and key not in manual and key not in wanted:
            wanted[key] = Wanted(state, rule, reason[:300])

    for address in sorted(addresses):
        person = data.people.get(data.person_by_address.get(address, 0))
        if person is not None:
            offer(("person", person.pk), linked, PERSON_ADDRESS, f"{address} is {person.name}'s address")
    for address in sorted(addresses):
        domain = address.rsplit("@", 1)[1]
        organization = data.organizations.get(data.organization_by_domain.get(domain, 0))
        if organization is not None:
            offer(
                ("organization", organization.pk),
                linked,
                ORG_DOMAIN,
                f"{domain} is a domain of {organization.name}",
            )

    people = [
        data.people[pk]
        for name, pk in sorted({*wanted, *manual})
        if name == "person" and pk in data.people and (name, pk) not in unlinked
    ]
    for person in people:
        organization = data.organizations.get(person.organization_id or 0)
        if organization is not None:
            offer(
                ("organization", organization.pk),
                linked,
                PERSON_ORGANIZATION,
                f"{person.name} works at {organization.name}",
            )
    linked_person_ids = {person.pk for person in people}
    linked_organization_ids = {
        pk for name, pk in {*wanted, *manual} if name == "organization" and (name, pk) not in unlinked
    }

    mass_email = len(addresses) > MASS_EMAIL_PARTICIPANTS
    for kind in RECORD_KINDS:
        _wanted_records(
            data,
            kind,
            existing=existing,
            people=[data.people[pk] for pk in sorted(linked_person_ids)],
            organization_ids=linked_organization_ids,
            mass_email=mass_email,
            participant_count=len(addresses),
            last_message_at=data.last_message_at.get(thread_id),
            offer=offer,
        )
    return wanted


def _wanted_records(
    data: OwnerData,
    kind: str,
    *,
    existing: dict[tuple[str, int], ThreadLink],
    people: list[Person],
    organization_ids: set[int],
    mass_email: bool,
    participant_count: int,
    offer,
    last_message_at: datetime | None = None,
) -> None:
    linked = ThreadLink.State.LINKED
    suggested = ThreadLink.State.SUGGESTED
    records = data.records.get(kind, {})
    person_ids = {person.pk for person in people}
    open_status = OPEN_STATUS[kind]

    def belongs(record) -> bool:
        return record.person_id in person_ids or record.organization_id in organization_ids

    # Automatic links made earlier stay while the record still belongs to a linked person or
    # organization, even if it is closed now or has a sibling: history must not vanish from a deal.
    kept = {
        key
        for key, link in existing.items()
        if key[0] == kind
        and link.state == linked
        and link.rule != MANUAL
        and key[1] in records
        and belongs(records[key[1]])
    }
    for key in kept:
        link = existing[key]
        offer(key, linked, link.rule, link.reason)
    manual = {key for key, link in existing.items() if key[0] == kind and link.state == linked and link.rule == MANUAL}
    already_linked = kept | manual

    by_person: dict[int, list] = defaultdict(list)
    for record in records.values():
        if record.status == open_status and record.person_id in person_ids:
            by_person[record.person_id].append(record)
    person_candidates = sorted(
        {record.pk: record for group in by_person.values() for record in group}.values(), key=lambda r: r.pk
    )
    organization_candidates = [
        record
        for record in sorted(records.values(), key=lambda r: r.pk)
        if record.status == open_status
        and record.organization_id in organization_ids
        and record.pk not in {candidate.pk for candidate in person_candidates}
    ]
    owners = [person for person in people if by_person.get(person.pk)]
    owner_names = ", ".join(person.name for person in owners)

    def label(record) -> str:
        return f'{kind} "{record}"'

    if data.manual_mode or mass_email:
        rule = MANUAL_MODE if data.manual_mode else MASS_EMAIL
        for record in person_candidates + organization_candidates:
            if data.manual_mode:
                reason = f"Manual linking mode: open {label(record)} of {_record_party(data, record)}"
            else:
                reason = f"mass email with {participant_count} recipients: not linked to {PLURAL[kind]} automatically"
            offer((kind, record.pk), suggested, rule, reason)
        return

    if len(person_candidates) == 1:
        record = person_candidates[0]
        if not already_linked and _ended_before(last_message_at, record):
            # Old mail and a new deal: offered, not filed under it (issue 17, point 8).
            offer(
                (kind, record.pk),
                suggested,
                f"before_{kind}",
                f"the only open {kind} of {owner_names}, created {_day(record.created_at)}; this conversation "
                f"ended {_day(last_message_at)}, more than {OLD_MAIL_DAYS} days before: suggested, not linked",
            )
        elif not already_linked:
            offer((kind, record.pk), linked, f"single_open_{kind}", f"the only open {kind} of {owner_names}")
        elif (kind, record.pk) not in already_linked:
            others = ", ".join(str(records[pk]) for _, pk in sorted(already_linked) if pk in records)
            offer(
                (kind, record.pk),
                suggested,
                f"another_{kind}_linked",
                f"already linked to {others or 'another ' + kind}; {owner_names} also has open {label(record)}",
            )
    elif len(person_candidates) > 1:
        if len(owners) == 1:
            reason = f"{owner_names} has {len(person_candidates)} open {PLURAL[kind]}: choose one"
        else:
            reason = f"{len(person_candidates)} open {PLURAL[kind]} among {owner_names}: choose one"
        for record in person_candidates:
            offer((kind, record.pk), suggested, f"several_open_{PLURAL[kind]}", reason)
    for record in organization_candidates:
        offer(
            (kind, record.pk),
            suggested,
            f"organization_{kind}",
            f"open {label(record)} of {_record_party(data, record)}",
        )


def _ended_before(last_message_at: datetime | None, record) -> bool:
    """The conversation's latest message is more than OLD_MAIL_DAYS older than the record (dates unknown:
    not older)."""
    created_at = getattr(record, "created_at", None)
    if last_message_at is None or created_at is None:
        return False
    return created_at - last_message_at > timedelta(days=OLD_MAIL_DAYS)


def _day(moment: datetime) -> str:
    local = timezone.localtime(moment)
    return f"{local.day} {local:%b %Y}"


def _record_party(data: OwnerData, record) -> str:
    person = data.people.get(record.person_id or 0)
    if person is not None:
        return person.name
    organization = data.organizations.get(record.organization_id or 0)
    return organization.name if organization is not None else "a participant"
