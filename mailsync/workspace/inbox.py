"""Reads for the mail workspace: the Inbox, Bulk, Sent, Archive and Trash lists, their counts, filters and search.

The lists show the user's OWN conversations (threads they own); colleagues' shared mail appears on CRM
record timelines, not in a personal inbox. They read MailboxEntry (mailsync.mailbox), which holds only
threads with visible messages by the same rules as mailsync.access (deleted and blocked mail never
count), so a page is one indexed query plus a constant number of prefetches, whatever the mailbox size.
tests/test_inbox.py checks that these lists agree with access.visible_threads.

Search: PostgreSQL full-text (MailboxSearchDocument: one document per list row, `simple` configuration,
every word as a prefix) over subjects, bodies and participants' names and addresses, plus exact
address match for a whole address. Other databases (SQLite in `make run`) fall back to substring
matching on subject, snippet and participants: slower, but it works.

Counts: the unread and linked filters are counted exactly (cheap). A search and the account, folder
and contact filters are not counted: an exact count of a common word reads every matching message
(~0.3 s on 200,000). Their page says "1-50 of 50+" until the last page, where the count is exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from math import ceil

from django.contrib.postgres.search import SearchQuery
from django.db import connection
from django.db.models import Count, Exists, F, Min, OuterRef, Q, QuerySet
from django.utils import timezone

from crm.addresses import normalize_email
from crm.models import User
from crm.records import search_terms
from mailsync.linking.access import visible_target_condition
from mailsync.mailboxes import words
from mailsync.models import (
    EmailAccount,
    EmailMessage,
    EmailThread,
    Mailbox,
    MailboxEntry,
    MailFolder,
    MessageParticipant,
    ThreadLink,
)
from mailsync.sending.selectors import delivery_failures_of, tracking_of

from .conversation_services import from_existing_contact

PAGE_SIZE = 50
MAILBOXES = {
    Mailbox.INBOX: "Inbox",
    Mailbox.BULK: "Bulk",
    Mailbox.SENT: "Sent",
    Mailbox.REPORTS: "Delivery reports",
    Mailbox.ARCHIVE: "Archive",
    Mailbox.TRASH: "Trash",
}
LINKED, UNLINKED = "linked", "unlinked"
CORRESPONDENTS_SHOWN = 3
# Runs of Chinese / Japanese / Korean characters (words.CJK_RUN_RE), kept as separators by split().
CJK_RUN_RE = re.compile(f"({words.CJK_RUN_RE.pattern})")
MAX_SEARCH_WORDS = 12
MAX_TSQUERY_TERMS = 32
ADDRESS_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True)
class InboxFilters:
    """What narrows a list. Every active one is shown to the user as a chip (F2)."""

    unread: bool = False
    account: EmailAccount | None = None
    folder: MailFolder | None = None
    linked: str = ""  # LINKED, UNLINKED or ""
    from_contact: bool = False
    query: str = ""

    @property
    def active(self) -> bool:
        return bool(self.unread or self.account or self.folder or self.linked or self.from_contact or self.query)

    @property
    def costly_to_count(self) -> bool:
        """Filters whose exact count reads every matching message (see the module docstring)."""
        return bool(self.query or self.account or self.folder or self.from_contact)


@dataclass(frozen=True)
class MailboxCount:
    total: int = 0
    unread: int = 0


@dataclass
class ThreadRow:
    """One line of a list: a conversation as it stands in this mailbox."""

    entry: MailboxEntry
    correspondents: list[str]
    links: list = field(default_factory=list)
    # Sent: what delivery reports say about the latest message (DeliveryFailure rows), and its tracking.
    delivery_failures: list = field(default_factory=list)
    tracking: object = None

    @property
    def thread(self) -> EmailThread:
        return self.entry.thread

    @property
    def latest(self) -> EmailMessage:
        return self.entry.latest_message

    @property
    def is_unread(self) -> bool:
        return self.entry.unread_count > 0

    @property
    def when(self) -> str:
        """ "14:05" today, "3 Jun" this year, "3 Jun 2023" before (Python: 50 template date filters per
        page cost ~10 ms)."""
        local = timezone.localtime(self.entry.latest_date)
        today = timezone.localdate()
        if local.date() == today:
            return f"{local:%H:%M}"
        if local.year == today.year:
            return f"{local.day} {local:%b}"
        return f"{local.day} {local:%b %Y}"

    @property
    def when_full(self) -> str:
        local = timezone.localtime(self.entry.latest_date)
        return f"{local.day} {local:%b %Y, %H:%M}"


@dataclass
class InboxPage:
    rows: list[ThreadRow]
    number: int
    per_page: int
    count: int  # conversations matching the filters (at least that many when `capped`)
    capped: bool = False  # not counted: more rows follow this page
    more: bool = False  # rows after this page (known without a count)

    @property
    def num_pages(self) -> int:
        return max(1, ceil(self.count / self.per_page), self.number)

    @property
    def has_previous(self) -> bool:
        return self.number > 1

    @property
    def has_next(self) -> bool:
        return self.more

    @property
    def previous_page_number(self) -> int:
        return self.number - 1

    @property
    def next_page_number(self) -> int:
        return self.number + 1

    @property
    def start_index(self) -> int:
        return (self.number - 1) * self.per_page + 1 if self.rows else 0

    @property
    def end_index(self) -> int:
        return self.start_index + len(self.rows) - 1 if self.rows else 0


def _can_use_product(user: User) -> bool:
    return bool(user and user.is_authenticated and user.is_active)


def own_entries(user: User) -> QuerySet[MailboxEntry]:
    """Every list row of the user's own conversations (all mailboxes)."""
    if not _can_use_product(user):
        return MailboxEntry.objects.none()
    return MailboxEntry.objects.filter(owner=user)


def news_cursor() -> int:
    """Where "new" starts for a page rendered now: the newest stored message id (ids only grow)."""
    return EmailMessage.objects.order_by("-pk").values_list("pk", flat=True).first() or 0


def new_conversations(user: User, mailbox: str, since: int) -> int:
    """How many of the user's own conversations in `mailbox` got a visible message stored after `since`
    (a news_cursor()). Reads only the rows added since: cheap enough to ask every few seconds."""
    if not _can_use_product(user) or mailbox not in MAILBOXES:
        return 0
    return (
        EmailMessage.objects.filter(
            pk__gt=since, thread__owner=user, mailbox=mailbox, deleted_at__isnull=True, is_blocked=False
        )
        .values("thread_id")
        .distinct()
        .count()
    )


def mailbox_counts(user: User) -> dict[str, MailboxCount]:
    """Conversations and unread conversations per mailbox, in one query (shown next to the mailbox names,
    so that nobody takes a filter for missing mail)."""
    counts = {mailbox: MailboxCount() for mailbox in MAILBOXES}
    rows = (
        own_entries(user)
        .filter(mailbox__in=list(MAILBOXES))
        .order_by()
        .values("mailbox")
        .annotate(total=Count("pk"), unread=Count("pk", filter=Q(unread_count__gt=0)))
    )
    for row in rows:
        counts[row["mailbox"]] = MailboxCount(total=row["total"], unread=row["unread"])
    return counts


def _messages_in_entry() -> QuerySet[EmailMessage]:
    """Visible messages of the list row's thread (OuterRef) in the row's mailbox."""
    return EmailMessage.objects.filter(
        thread_id=OuterRef("thread_id"), mailbox=OuterRef("mailbox"), deleted_at__isnull=True, is_blocked=False
    )


def filtered_entries(user: User, mailbox: str, filters: InboxFilters) -> QuerySet[MailboxEntry]:
    """The rows of one mailbox that pass the filters, newest first."""
    entries = own_entries(user).filter(mailbox=mailbox)
    if filters.unread:
        entries = entries.filter(unread_count__gt=0)
    if filters.account is not None:
        entries = entries.filter(Exists(_messages_in_entry().filter(account=filters.account)))
    if filters.folder is not None:
        entries = entries.filter(Exists(_messages_in_entry().filter(locations__folder=filters.folder)))
    if filters.linked:
        linked = Exists(ThreadLink.objects.filter(thread_id=OuterRef("thread_id"), state=ThreadLink.State.LINKED))
        entries = entries.filter(linked) if filters.linked == LINKED else entries.exclude(linked)
    if filters.from_contact:
        entries = entries.filter(thread__in=from_existing_contact(EmailThread.objects.filter(owner=user), user))
    if filters.query:
        entries = search(entries, filters.query)
    return entries.order_by("-latest_date", "-thread_id")


def matching_thread_ids(user: User, mailbox: str, filters: InboxFilters) -> list[int]:
    """Every conversation of the filtered list, newest first ("select all N matching"): one query on the
    list rows, ids only."""
    return list(filtered_entries(user, mailbox, filters).values_list("thread_id", flat=True))


def neighbours(user: User, mailbox: str, filters: InboxFilters, thread_id: int) -> tuple[int | None, int | None]:
    """The conversations just newer and just older than `thread_id` in the filtered list, in its order
    (two indexed queries). Measured from the thread's row in `mailbox`, so it works when the thread
    itself no longer passes the filters (an unread one the user just read); (None, None) without a row."""
    entry = own_entries(user).filter(mailbox=mailbox, thread_id=thread_id).values("latest_date").first()
    if entry is None:
        return None, None
    date = entry["latest_date"]
    entries = filtered_entries(user, mailbox, filters).exclude(thread_id=thread_id)
    newer = (
        entries.filter(Q(latest_date__gt=date) | Q(latest_date=date, thread_id__gt=thread_id))
        .order_by("latest_date", "thread_id")
        .values_list("thread_id", flat=True)
        .first()
    )
    older = (
        entries.filter(Q(latest_date__lt=date) | Q(latest_date=date, thread_id__lt=thread_id))
        .values_list("thread_id", flat=True)
        .first()
    )
    return newer, older


def _tsquery_terms(query_words: list[str]) -> list[str]:
    """tsquery terms for the words: each a prefix; a run of CJK characters as its two-character pieces
    (the documents hold every such piece), so "会議" finds "明日の会議について"."""
    terms: list[str] = []
    for word in query_words:
        for part in CJK_RUN_RE.split(word):
            if not part:
                continue
            if CJK_RUN_RE.fullmatch(part) and len(part) > 1:
                terms.extend(f"'{part[i : i + 2]}'" for i in range(len(part) - 1))
            else:
                terms.append(f"'{part}':*")
    return terms[:MAX_TSQUERY_TERMS]


def search(entries: QuerySet[MailboxEntry], query: str) -> QuerySet[MailboxEntry]:
    """Rows with a visible message in the row's mailbox that matches every word of the query."""
    query_words: list[str] = []
    for term in search_terms(query):
        if ADDRESS_RE.match(term):
            address = normalize_email(term)
            entries = entries.filter(Exists(_messages_in_entry().filter(participants__address=address)))
        else:
            query_words.extend(words.search_words(term))
    query_words = query_words[:MAX_SEARCH_WORDS]
    if not query_words:
        return entries
    if connection.vendor == "postgresql":
        # Each word is a prefix ('acme':*), so results come while typing; the words are split and
        # lower-cased as the documents' words were (words.search_words) and hold no tsquery operators.
        tsquery = " & ".join(_tsquery_terms(query_words))
        return entries.filter(search_document__document=SearchQuery(tsquery, search_type="raw", config="simple"))
    for word in query_words:
        matching = _messages_in_entry().filter(
            Q(subject__icontains=word)
            | Q(snippet__icontains=word)
            | Q(from_name__icontains=word)
            | Q(from_address__icontains=word)
            | Q(Exists(MessageParticipant.objects.filter(message=OuterRef("pk"), address__icontains=word)))
            | Q(Exists(MessageParticipant.objects.filter(message=OuterRef("pk"), name__icontains=word)))
        )
        entries = entries.filter(Exists(matching))
    return entries


def inbox_page(
    user: User,
    mailbox: str,
    filters: InboxFilters,
    *,
    page: int = 1,
    per_page: int | None = None,
    count: int | None = None,
) -> InboxPage:
    """One page of a list with what each row shows. `count`: the number of matching rows when the caller
    already knows it (the unfiltered list: the mailbox count), which saves a query.

    Queries: the count (unless given, or costly: see the module docstring), the page, its correspondents,
    its links (and the recipients of the latest messages in Sent): constant, whatever the page size or
    the mailbox size."""
    per_page = per_page or PAGE_SIZE
    entries = filtered_entries(user, mailbox, filters)
    if count is None and filters.costly_to_count:
        number = max(1, page)
        page_entries = _page_entries(entries, number, per_page)
        if not page_entries and number > 1:  # past the end: the first page
            number = 1
            page_entries = _page_entries(entries, number, per_page)
        more = len(page_entries) > per_page
        count = (number - 1) * per_page + min(len(page_entries), per_page)
    else:
        if count is None:
            count = entries.count()
        number = min(max(1, page), max(1, ceil(count / per_page)))  # past the end: the last page
        page_entries = _page_entries(entries, number, per_page)
        more = len(page_entries) > per_page
    page_entries = page_entries[:per_page]
    thread_ids = [entry.thread_id for entry in page_entries]
    if mailbox == Mailbox.SENT:
        correspondents = _recipients([entry.latest_message_id for entry in page_entries], page_entries)
    else:
        correspondents = _senders(thread_ids)
    links = _links(user, thread_ids)
    latest_ids = [entry.latest_message_id for entry in page_entries]
    failures = delivery_failures_of(latest_ids) if mailbox == Mailbox.SENT else {}
    tracked = tracking_of(latest_ids) if mailbox == Mailbox.SENT else {}
    rows = [
        ThreadRow(
            entry=entry,
            correspondents=correspondents.get(entry.thread_id, []),
            links=links.get(entry.thread_id, []),
            delivery_failures=failures.get(entry.latest_message_id, []),
            tracking=tracked.get(entry.latest_message_id),
        )
        for entry in page_entries
    ]
    capped = more and filters.costly_to_count
    return InboxPage(rows=rows, number=number, per_page=per_page, count=count, capped=capped, more=more)


def _page_entries(entries: QuerySet[MailboxEntry], number: int, per_page: int) -> list[MailboxEntry]:
    """The rows of page `number`, and the first row of the next page if there is one (so no count is
    needed to know that more follow)."""
    offset = (number - 1) * per_page
    return list(
        entries.select_related("thread", "latest_message").only(
            "thread_id",
            "mailbox",
            "latest_date",
            "latest_message_id",
            "message_count",
            "unread_count",
            "thread_message_count",
            "has_attachments",
            "thread__subject",
            "thread__visibility",
            "latest_message__subject",
            "latest_message__snippet",
            "latest_message__from_name",
            "latest_message__from_address",
            "latest_message__direction",
            "latest_message__date",
        )[offset : offset + per_page + 1]
    )


def _display_name(name: str, address: str) -> str:
    return name or address.split("@", 1)[0] or "(unknown)"


def _senders(thread_ids: list[int]) -> dict[int, list[str]]:
    """Who wrote in each thread, in order of their first message ("me" for the user), in one query."""
    if not thread_ids:
        return {}
    rows = (
        EmailMessage.objects.filter(thread_id__in=thread_ids, deleted_at__isnull=True, is_blocked=False)
        .values("thread_id", "from_address", "from_name", "direction")
        .annotate(first=Min("date"))
        .order_by("thread_id", F("first").asc(nulls_first=True))
    )
    result: dict[int, list[str]] = {}
    for row in rows:
        label = (
            "me"
            if row["direction"] == EmailMessage.Direction.SENT
            else _display_name(row["from_name"], row["from_address"])
        )
        names = result.setdefault(row["thread_id"], [])
        if label not in names:
            names.append(label)
    return {thread_id: _shorten(names) for thread_id, names in result.items()}


def _recipients(message_ids: list[int], entries: list[MailboxEntry]) -> dict[int, list[str]]:
    """Sent list: whom the latest message of each thread went to, in one query."""
    if not message_ids:
        return {}
    by_message: dict[int, list[str]] = {}
    for message_id, name, address in (
        MessageParticipant.objects.filter(
            message_id__in=message_ids,
            role__in=[MessageParticipant.Role.TO, MessageParticipant.Role.CC, MessageParticipant.Role.BCC],
        )
        .values_list("message_id", "name", "address")
        .order_by("message_id", "pk")
    ):
        names = by_message.setdefault(message_id, [])
        label = _display_name(name, address)
        if label not in names:
            names.append(label)
    return {
        entry.thread_id: ["To: " + ", ".join(_shorten(by_message.get(entry.latest_message_id, [])))]
        for entry in entries
    }


def _shorten(names: list[str]) -> list[str]:
    if len(names) <= CORRESPONDENTS_SHOWN:
        return names
    return [*names[: CORRESPONDENTS_SHOWN - 1], "…", names[-1]]


def _links(user: User, thread_ids: list[int]) -> dict[int, list]:
    """The linked records of each thread that the user may see (badges), in one query."""
    if not thread_ids:
        return {}
    result: dict[int, list] = {}
    links = (
        ThreadLink.objects.filter(thread_id__in=thread_ids, state=ThreadLink.State.LINKED)
        .filter(visible_target_condition(user))
        .select_related("person", "organization", "deal", "lead", "project")
        .order_by("thread_id", "pk")
    )
    for link in links:
        record = link.person or link.organization or link.deal or link.lead or link.project
        result.setdefault(link.thread_id, []).append(record)
    return result


# --- choices for the filter controls --------------------------------------------------------------


def account_choices(user: User) -> list[EmailAccount]:
    return list(
        EmailAccount.objects.filter(user=user).exclude(state=EmailAccount.State.REMOVED).order_by("email_address")
    )


def folder_choices(user: User) -> list[MailFolder]:
    return list(
        MailFolder.objects.filter(account__user=user, exists_on_server=True, noselect=False)
        .select_related("account")
        .order_by("account__email_address", "name")
    )
