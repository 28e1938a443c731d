"""Who may see which conversation (SPEC P1-P3): the one place every mail surface asks.

Pages, timelines, search, attachment downloads and counts all start from these selectors, so they
agree. The rule:
- the owner of a thread sees it;
- anyone else sees it only when it is shared ("shared with the company") AND linked (state linked)
  to at least one person, organization, deal, lead or project they may see;
- a private thread is seen by its owner only. Admins get no bypass: "private" means nobody else in
  the product, admins included (P1).
So the links of a shared thread are its audience, and only the owner changes them (`can_change_links`).
Deleted (L6) and blocked (F1) messages are invisible to everyone, and a thread without any other
message is left out of every list, for its owner too.
"""

from django.db.models import Count, Exists, F, IntegerField, OuterRef, Prefetch, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.shortcuts import get_object_or_404

from contacts.models import Organization, Person
from crm.models import User
from deals.models import Deal
from leads.models import Lead
from mailsync.models import Attachment, EmailMessage, EmailThread, ThreadLink
from projects.models import Project

TIMELINE_LIMIT = 50


class TimelinePage(list):
    """One page of a record's timeline (a list of threads) that knows whether older ones follow, and
    whose record it is (`kind`, `record`: the template links to the next page and back to the record)."""

    def __init__(self, threads, *, record, kind: str, offset: int, has_more: bool):
        super().__init__(threads)
        self.record = record
        self.kind = kind
        self.offset = offset
        self.has_more = has_more
        self.next_offset = offset + len(self)


def _can_use_product(user: User) -> bool:
    return bool(user and user.is_authenticated and user.is_active)


def visible_target_condition(user: User, prefix: str = "") -> Q:
    """A Q on ThreadLink: its record is one the user may see."""
    return (
        Q(**{f"{prefix}person__in": Person.objects.visible_to(user)})
        | Q(**{f"{prefix}organization__in": Organization.objects.visible_to(user)})
        | Q(**{f"{prefix}deal__in": Deal.objects.visible_to(user)})
        | Q(**{f"{prefix}lead__in": Lead.objects.visible_to(user)})
        | Q(**{f"{prefix}project__in": Project.objects.visible_to(user)})
    )


def _live_messages() -> QuerySet[EmailMessage]:
    return EmailMessage.objects.filter(deleted_at__isnull=True, is_blocked=False)


def visible_threads(user: User) -> QuerySet[EmailThread]:
    """Threads the user may see that still have at least one visible message."""
    if not _can_use_product(user):
        return EmailThread.objects.none()
    shared_with_user = Q(visibility=EmailThread.Visibility.SHARED) & Q(
        Exists(
            ThreadLink.objects.filter(thread=OuterRef("pk"), state=ThreadLink.State.LINKED).filter(
                visible_target_condition(user)
            )
        )
    )
    return EmailThread.objects.filter(Exists(_live_messages().filter(thread=OuterRef("pk")))).filter(
        Q(owner=user) | shared_with_user
    )


def get_thread_for_user(user: User, pk: int) -> EmailThread:
    return get_object_or_404(visible_threads(user).select_related("owner"), pk=pk)


def can_change_visibility(user: User, thread: EmailThread) -> bool:
    """Only the owner decides who else sees their mail (P3)."""
    return _can_use_product(user) and thread.owner_id == user.pk


def can_change_links(user: User, thread: EmailThread) -> bool:
    """Links decide who else sees a shared thread (see the module docstring), so only its owner links and
    unlinks; others may suggest (conversation_services.suggest_link)."""
    return _can_use_product(user) and thread.owner_id == user.pk


def visible_messages(user: User) -> QuerySet[EmailMessage]:
    """Messages the user may see: of visible threads, neither deleted nor blocked."""
    if not _can_use_product(user):
        return EmailMessage.objects.none()
    return _live_messages().filter(thread__in=visible_threads(user))


def thread_messages(thread: EmailThread) -> QuerySet[EmailMessage]:
    """The visible messages of a thread the caller already got through `get_thread_for_user`."""
    return (
        _live_messages()
        .filter(thread=thread)
        .order_by(F("date").asc(nulls_first=True), "pk")
        .prefetch_related("participants", "attachments")
    )


def get_attachment_for_user(user: User, pk: int) -> Attachment:
    return get_object_or_404(
        Attachment.objects.filter(message__in=visible_messages(user)).select_related("message"), pk=pk
    )


def thread_links_for_user(user: User, thread: EmailThread) -> list[ThreadLink]:
    """The thread's links (linked, suggested, unlinked) whose record the user may see."""
    if not _can_use_product(user):
        return []
    links = (
        ThreadLink.objects.filter(thread=thread)
        .filter(visible_target_condition(user))
        .select_related("person", "organization", "deal", "lead", "project")
        .prefetch_related(Prefetch("person__emails"))
        .order_by("state", "created_at", "pk")
    )
    return list(links)


def _timeline_record(**records) -> tuple[str, object]:
    """("deal", deal) for the one record a timeline is asked for."""
    given = [(kind, record) for kind, record in records.items() if record is not None]
    if len(given) != 1:
        raise TypeError("timeline_for needs exactly one of person, organization, deal, lead, project")
    return given[0]


def _timeline_link_condition(kind: str, record) -> Q:
    if kind == "organization":
        # An organization's timeline also gathers the conversations of its people.
        return Q(organization=record) | Q(person__organization=record)
    return Q(**{kind: record})


def _message_count(**filters) -> Subquery:
    """The number of the thread's (OuterRef) visible messages, as a correlated subquery."""
    counted = (
        _live_messages()
        .filter(thread=OuterRef("pk"), **filters)
        .order_by()
        .values("thread")
        .annotate(total=Count("pk"))
        .values("total")
    )
    return Subquery(counted, output_field=IntegerField())


def timeline_for(
    user: User,
    *,
    person: Person | None = None,
    organization: Organization | None = None,
    deal: Deal | None = None,
    lead: Lead | None = None,
    project: Project | None = None,
    limit: int = TIMELINE_LIMIT,
    offset: int = 0,
) -> TimelinePage:
    """Conversations linked to one record that the user may see, newest first, in ONE query: `limit`
    of them from `offset` on (the page knows whether older ones follow).

    Each thread carries `owner` and the annotations a template needs: `latest_snippet`,
    `latest_from_name`, `latest_from_address`, `latest_direction`, `latest_date` (of its latest
    visible message), `visible_message_count` and `sent_count` (`snippet` is the same as
    `latest_snippet`).
    """
    kind, record = _timeline_record(person=person, organization=organization, deal=deal, lead=lead, project=project)
    condition = _timeline_link_condition(kind, record)
    linked = ThreadLink.objects.filter(thread=OuterRef("pk"), state=ThreadLink.State.LINKED).filter(condition)
    latest = _live_messages().filter(thread=OuterRef("pk")).order_by(F("date").desc(nulls_last=True), "-pk")
    threads = (
        visible_threads(user)
        .filter(Exists(linked))
        .select_related("owner")
        .annotate(
            latest_snippet=Subquery(latest.values("snippet")[:1]),
            latest_from_name=Subquery(latest.values("from_name")[:1]),
            latest_from_address=Subquery(latest.values("from_address")[:1]),
            latest_direction=Subquery(latest.values("direction")[:1]),
            latest_date=Subquery(latest.values("date")[:1]),
            visible_message_count=_message_count(),
            sent_count=Coalesce(_message_count(direction=EmailMessage.Direction.SENT), 0),
        )
        .order_by(F("last_message_at").desc(nulls_last=True), "-pk")
    )
    offset = max(0, offset)
    entries = list(threads[offset : offset + limit + 1])
    for thread in entries:
        thread.snippet = thread.latest_snippet  # the name the shared timeline template reads
        thread.received_count = (thread.visible_message_count or 0) - thread.sent_count
    return TimelinePage(entries[:limit], record=record, kind=kind, offset=offset, has_more=len(entries) > limit)
