"""`manage.py bench_inbox [--messages N] [--keep]`: server time and queries of the mail lists (prints figures).

1. Seeds one user with N messages (default 200,000) in ~N/2.9 threads over the last year, the way
   ingestion stores them: three accounts with Inbox / Sent / Archive / Trash / a project folder,
   participants from a few hundred correspondents (some of them CRM contacts), realistic subjects and
   bodies in several languages, 8% unread, threads linked to deals (one big deal with 300 threads).
   Rows go in with COPY; then mailsync.mailboxes.placement.rebuild_all places every message and builds the list
   rows and search documents (timed: that is the same code ingestion runs per batch). When the user
   already has the messages (an earlier run with --keep), seeding is skipped.
2. Measures with Django's test client (force_login, the whole request: middleware, queries, template)
   the inbox page 1 and page 5, with the unread filter, with a search, the archive, and the deal page
   with its timeline: median and 90th percentile over --requests requests each, and the number of
   queries of each (they must not depend on the mailbox size or the page).

Target (issue): median < 150 ms server time with 200,000 messages in PostgreSQL (`make bench-inbox`).
"""

from __future__ import annotations

import itertools
import random
import statistics
import time
from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from contacts.models import Organization, Person, PersonEmail
from crm.models import User
from deals.models import Deal, Pipeline, Stage
from mailsync.mailboxes import placement
from mailsync.models import (
    Attachment,
    EmailAccount,
    EmailMessage,
    EmailThread,
    MailboxEntry,
    MailboxSearchDocument,
    MailFolder,
    MessageLocation,
    MessageParticipant,
    ThreadLink,
    ThreadReference,
)
from mailsync.sync.threads import insert_rows, normalize_subject

BENCH_EMAIL = "bench-inbox@example.invalid"
TARGET_MS = 150
SEED = 20240601
THREADS_PER_CHUNK = 5_000
SEARCH_NAME = "Dvořák"  # a correspondent's name (non-ASCII), in ~5% of the threads
SEARCH_WORD = "faktura"  # a body word of middle frequency
BIG_DEAL_THREADS = 300

FIRST_NAMES = [
    "Anna", "Bruno", "Chen", "Dana", "Emma", "Farid", "Giulia", "Hyun-woo", "Ivan", "Julia", "Kenji", "Laura",
    "Marek", "Nadia", "Oskar", "Paula", "Quentin", "Rosa", "Sven", "Tomasz", "Ulla", "Vera", "Wojciech", "Xenia",
    "Yusuf", "Zofia", "Łukasz", "Zoë", "Jürgen", "Søren", "Ana María", "José", "Ørjan", "François",
]  # fmt: skip
LAST_NAMES = [
    "Kowalska", "Rossi", "Wei", "Levi", "Schmidt", "Haddad", "Bianchi", "Park", "Petrov", "Nowak", "Sato",
    "Martin", "Dvořák", "Jensen", "Müller", "García", "Öztürk", "Brzęczyszczykiewicz", "O'Brien", "Smith",
]  # fmt: skip
COMPANIES = [
    "acme-logistics.pl", "vetreria.it", "shenzhen-parts.cn", "levi-design.co.il", "beispiel.de", "haddad-trading.ae",
    "seoul-tech.kr", "tokyo-works.jp", "example.fr", "nordic-freight.no", "iberia-foods.es", "alpen-holz.at",
    "gmail.com", "outlook.com", "yahoo.com", "baltic-steel.lt", "praha-glass.cz", "lisboa-wines.pt",
]  # fmt: skip
WORDS = """proposal contract invoice shipment delivery meeting schedule quote discount pricing order warehouse
logistics project update review draft final signature payment terms support question answer thanks follow
call agenda minutes budget forecast renewal license upgrade onboarding training workshop demo trial feedback
issue ticket bug release roadmap priority deadline estimate scope requirement approval purchase supplier
customer partner pallet container customs freight carrier tracking warranty return replacement sample
catalogue brochure price list volume tier annual quarterly monthly weekly report dashboard analytics
integration api export import migration backup security audit compliance gdpr policy procedure manual
Zürich Łódź Kraków München Göteborg São Paulo Grüße Dziękuję merci grazie obrigado 안녕하세요 감사합니다
谢谢 会议 ありがとう 見積もり préstamo réunion facture Rechnung Lieferung zamówienie faktura dostawa""".split()  # noqa: SIM905


class Command(BaseCommand):
    help = "Seed a big mailbox for one user and time the inbox and a deal timeline (median server time, queries)."

    def add_arguments(self, parser):
        parser.add_argument("--messages", type=int, default=200_000)
        parser.add_argument("--requests", type=int, default=30, help="Requests per measured page")
        parser.add_argument("--keep", action="store_true", help="Keep the seeded data (a later run reuses it)")
        parser.add_argument("--seed-only", action="store_true", help="Seed (and keep) without measuring")

    def handle(self, *args, messages: int, requests: int, keep: bool, seed_only: bool, **options):
        if messages < 100:
            raise CommandError("--messages must be at least 100")
        if connection.vendor != "postgresql":
            self.stderr.write("Warning: not PostgreSQL; figures will not mean much. Use `make bench-inbox`.")
        user = self._seeded_user(messages)
        if user is None:
            user = self._seed(messages)
        if seed_only:
            return
        try:
            self._measure(user, max(1, requests))
        finally:
            if not keep:
                started = time.perf_counter()
                _delete_user_data(user)
                self._say(f"cleaned up in {time.perf_counter() - started:.1f}s (use --keep to reuse the data)")

    # --- seeding ---------------------------------------------------------------------------------

    def _seeded_user(self, messages: int) -> User | None:
        user = User.objects.filter(email=BENCH_EMAIL).first()
        if user is None:
            return None
        stored = EmailMessage.objects.filter(account__user=user).count()
        if stored == messages and MailboxEntry.objects.filter(owner=user).exists():
            self._say(f"reusing the {stored:,} seeded messages of {BENCH_EMAIL}")
            return user
        self._say(f"{BENCH_EMAIL} holds {stored:,} messages, or no list rows: seeding again")
        _delete_user_data(user)
        return None

    def _seed(self, messages: int) -> User:
        rng = random.Random(SEED)
        started = time.perf_counter()
        user = User.objects.create_user(email=BENCH_EMAIL, password=None, first_name="Bench", last_name="Inbox")
        accounts, folders = _accounts_and_folders(user)
        people = _correspondents(rng)
        deals, big_deal = _crm_records(user, people, rng)
        plan = _thread_plan(messages, rng)
        threads_made = 0
        links: list[tuple[int, int]] = []
        for start in range(0, len(plan), THREADS_PER_CHUNK):
            chunk = plan[start : start + THREADS_PER_CHUNK]
            with transaction.atomic():
                thread_ids = _insert_chunk(user, chunk, accounts, folders, people, rng)
            threads_made += len(thread_ids)
            for thread_id, size in zip(thread_ids, chunk, strict=True):
                if len(links) < BIG_DEAL_THREADS and rng.random() < 0.02:
                    links.append((thread_id, big_deal.pk))
                elif rng.random() < 0.05 and size:
                    links.append((thread_id, rng.choice(deals).pk))
        now = timezone.now()
        insert_rows(
            ThreadLink,
            ("thread_id", "deal_id", "state", "rule", "reason", "created_at", "updated_at"),
            [
                (thread_id, deal_id, ThreadLink.State.LINKED, "manual", "bench", now, now)
                for thread_id, deal_id in links
            ],
        )
        seeded = time.perf_counter() - started
        self._say(f"seeded {messages:,} messages in {threads_made:,} threads in {seeded:.1f}s")

        started = time.perf_counter()
        placement.rebuild_all(user=user)
        built = time.perf_counter() - started
        self._say(
            f"mailsync.mailboxes.placement.rebuild_all (placement, list rows, search documents): {built:.1f}s "
            f"= {messages / built:,.0f} msg/s"
        )
        if connection.vendor == "postgresql":
            # As autovacuum would soon: fresh statistics, and the rows rewritten by the placement reclaimed.
            with connection.cursor() as cursor:
                for model in (EmailThread, EmailMessage, MailboxEntry, MailboxSearchDocument, ThreadLink):
                    cursor.execute(f"VACUUM ANALYZE {connection.ops.quote_name(model._meta.db_table)}")
                for model in (MessageParticipant, MessageLocation):
                    cursor.execute(f"ANALYZE {connection.ops.quote_name(model._meta.db_table)}")
        return user

    # --- measuring -------------------------------------------------------------------------------

    def _measure(self, user: User, requests: int) -> None:
        big_deal = Deal.objects.filter(owner=user, title="Bench: the big deal").first()
        counts = dict(
            MailboxEntry.objects.filter(owner=user)
            .values_list("mailbox")
            .annotate(n=_count())
            .values_list("mailbox", "n")
        )
        messages = EmailMessage.objects.filter(account__user=user).count()
        self._say(
            f"{messages:,} messages; conversations per mailbox: "
            + ", ".join(f"{name} {counts.get(name, 0):,}" for name in ("inbox", "sent", "archive", "trash"))
        )
        inbox = reverse("mailsync:inbox")
        cases = [
            ("inbox, page 1", inbox),
            ("inbox, page 5", f"{inbox}?page=5"),
            ("inbox, unread only", f"{inbox}?unread=1"),
            (f"inbox, search “{SEARCH_NAME}”", f"{inbox}?q={SEARCH_NAME}"),
            (f"inbox, search “{SEARCH_WORD}”", f"{inbox}?q={SEARCH_WORD}"),
            ("inbox, htmx list partial", f"{inbox}?page=2"),
            ("archive, page 1", reverse("mailsync:archive")),
            ("sent, page 1", reverse("mailsync:sent")),
            ("deal page with its timeline", reverse("deals:deal_detail", args=[big_deal.pk])),
            (
                "deal timeline, older conversations (htmx)",
                f"{reverse('mailsync:record_timeline', args=['deal', big_deal.pk])}?offset=50",
            ),
            # The reading pane: a conversation of inbox page 5 with that list beside it, newer / older.
            ("thread opened from inbox page 5", _thread_in_list(user, "page=5")),
            (f"thread opened from a search “{SEARCH_WORD}”", _thread_in_list(user, f"q={SEARCH_WORD}")),
            # The open list's poll, with the newest 500 messages counting as arrived since the page.
            ("htmx new-mail poll", f"{reverse('mailsync:inbox_news')}?mailbox=inbox&since={_recent_cursor(500)}"),
            # What nearly every poll of an open list (every MAILSYNC_INBOX_POLL_SECONDS) answers: nothing new.
            (
                "htmx new-mail poll, nothing new",
                f"{reverse('mailsync:inbox_news')}?mailbox=inbox&since={_recent_cursor(1)}",
            ),
        ]
        client = Client()
        client.force_login(user)
        rows = []
        for label, url in cases:
            headers = {"HTTP_HX_REQUEST": "true"} if "htmx" in label else {}
            for _ in range(3):  # warm-up: connection, template loading, caches
                response = client.get(url, **headers)
                if response.status_code not in (200, 204):
                    raise CommandError(f"{url} answered {response.status_code}")
            with CaptureQueriesContext(connection) as captured:
                client.get(url, **headers)
            queries = len(captured.captured_queries)  # now: the next request resets the log
            samples = []
            for _ in range(requests):
                started = time.perf_counter()
                client.get(url, **headers)
                samples.append((time.perf_counter() - started) * 1000)
            samples.sort()
            median = statistics.median(samples)
            p90 = samples[min(len(samples) - 1, int(len(samples) * 0.9))]
            rows.append((label, median, p90, queries))

        self._say("")
        self._say(f"{'page':<34} {'median ms':>10} {'p90 ms':>8} {'queries':>8}   target < {TARGET_MS} ms")
        for label, median, p90, queries in rows:
            verdict = "OK" if median < TARGET_MS else "ABOVE TARGET"
            self._say(f"{label:<34} {median:>10.1f} {p90:>8.1f} {queries:>8}   {verdict}")
        self._say(f"(DEBUG={settings.DEBUG}; {requests} requests each; database: {connection.vendor})")

    def _say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()


def _thread_in_list(user: User, query: str) -> str:
    """The thread page URL of the 10th conversation of that list, as the list links it (?in=inbox&...)."""
    from urllib.parse import parse_qs

    from mailsync.workspace.inbox import InboxFilters, inbox_page

    params = parse_qs(query)
    filters = InboxFilters(query=params.get("q", [""])[0])
    page = inbox_page(user, "inbox", filters, page=int(params.get("page", ["1"])[0]))
    thread_id = page.rows[min(9, len(page.rows) - 1)].entry.thread_id
    return f"{reverse('mailsync:thread_detail', args=[thread_id])}?in=inbox&{query}"


def _recent_cursor(back: int) -> int:
    ids = EmailMessage.objects.order_by("-pk").values_list("pk", flat=True)[:back]
    return min(ids, default=0)


def _count():
    from django.db.models import Count

    return Count("pk")


# --- data ------------------------------------------------------------------------------------------


def _accounts_and_folders(user: User):
    accounts, folders = [], {}
    for number, address in enumerate(["bench-inbox@example.invalid", "sales@example.invalid", "old@example.invalid"]):
        account = EmailAccount.objects.create(
            user=user,
            email_address=address,
            username=address,
            imap_host="imap.example.invalid",
            state=EmailAccount.State.SYNCING,
        )
        accounts.append(account)
        for name, role in [
            ("INBOX", "inbox"),
            ("Sent", "sent"),
            ("Archive", "archive"),
            ("Trash", "trash"),
            ("Projects/ACME", ""),
        ]:
            folders[(account.pk, role)] = MailFolder.objects.create(
                account=account, name=name, role=role, uidvalidity=1000 + number, uidnext=1
            )
    return accounts, folders


def _correspondents(rng: random.Random) -> list[tuple[str, str]]:
    people = set()
    while len(people) < 400:
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        local = f"{first}.{last}".lower().replace(" ", "").replace("'", "")
        local = local.encode("ascii", "ignore").decode() or "contact"
        people.add((f"{first} {last}", f"{local}{rng.randint(1, 99)}@{rng.choice(COMPANIES)}"))
    return sorted(people)


def _crm_records(user: User, people: list[tuple[str, str]], rng: random.Random):
    pipeline = Pipeline.objects.create(name="Bench pipeline")
    stage = Stage.objects.create(pipeline=pipeline, name="Qualified", order=1)
    organization = Organization.objects.create(owner=user, name="Bench Customer Ltd")
    persons = []
    for name, address in people[:120]:
        first, _, last = name.partition(" ")
        person = Person.objects.create(owner=user, first_name=first, last_name=last, organization=organization)
        PersonEmail.objects.create(person=person, email=address, is_primary=True)
        persons.append(person)
    deals = [
        Deal.objects.create(
            owner=user, title=f"Bench deal {n}", pipeline=pipeline, stage=stage, person=rng.choice(persons)
        )
        for n in range(100)
    ]
    big = Deal.objects.create(
        owner=user,
        title="Bench: the big deal",
        pipeline=pipeline,
        stage=stage,
        person=persons[0],
        organization=organization,
    )
    return deals, big


def _thread_plan(messages: int, rng: random.Random) -> list[int]:
    """Thread sizes (mean ~2.9, a long tail) that add up to `messages`."""
    sizes, total = [], 0
    population, weights = [1, 2, 3, 4, 5, 6, 8, 12, 20], [40, 20, 12, 8, 6, 5, 5, 3, 1]
    while total < messages:
        size = min(rng.choices(population, weights)[0], messages - total)
        sizes.append(size)
        total += size
    return sizes


# Zipf-distributed words: the real ones above first, then ~8,000 made-up ones (a realistic vocabulary size).
_SYLLABLES = "ba ko ri mu sa te lo vi na de gu pe zo fa hi ju ke ly mo wu".split()  # noqa: SIM905
_VOCABULARY = WORDS + [a + b + c for a in _SYLLABLES for b in _SYLLABLES for c in _SYLLABLES]
_CUMULATIVE = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(_VOCABULARY))))


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choices(_VOCABULARY, cum_weights=_CUMULATIVE, k=words))


def _insert_chunk(user, sizes, accounts, folders, people, rng: random.Random) -> list[int]:
    now = timezone.now()
    thread_rows, thread_messages = [], []
    for size in sizes:
        subject = _text(rng, rng.randint(3, 7)).capitalize()
        started = now - timedelta(days=rng.uniform(0, 365))
        account = rng.choices(accounts, [80, 15, 5])[0]
        where = rng.choices(["inbox", "archive", "", "trash"], [35, 50, 5, 10])[0]
        partners = rng.sample(people, rng.choice([1, 1, 1, 2, 3]))
        dates = sorted(min(now, started + timedelta(hours=rng.uniform(0, 24 * 10))) for _ in range(size))
        thread_rows.append(
            (user.pk, subject, normalize_subject(subject), "private", dates[0], dates[-1], size, "", now)
        )
        thread_messages.append((subject, account, where, partners, dates))
    thread_ids = insert_rows(
        EmailThread,
        (
            "owner_id",
            "subject",
            "normalized_subject",
            "visibility",
            "first_message_at",
            "last_message_at",
            "message_count",
            "provider_thread_id",
            "created_at",
        ),
        thread_rows,
        return_ids=True,
    )
    message_rows, extras = [], []
    for thread_id, (subject, account, where, partners, dates) in zip(thread_ids, thread_messages, strict=True):
        for index, date in enumerate(dates):
            sent = index % 2 == 1 and rng.random() < 0.6
            partner = rng.choice(partners)
            body = _text(rng, rng.randint(40, 250))
            recent = now - date < timedelta(days=14)
            read = sent or rng.random() < (0.6 if recent else 0.97)
            key = f"{thread_id}-{index}-{rng.getrandbits(48):x}"
            message_rows.append(
                (
                    account.pk,
                    thread_id,
                    key,
                    f"<{key}@bench.invalid>",
                    subject if index == 0 else f"Re: {subject}",
                    "Bench Inbox" if sent else partner[0],
                    account.email_address if sent else partner[1],
                    date,
                    date,
                    body[:200],
                    body,
                    "sent" if sent else "received",
                    len(body) + 1500,
                    len(partners),
                    read,
                    rng.random() < 0.1,
                    now,
                )
            )
            folder = folders[(account.pk, "sent" if sent else where)]
            recipients = [(account.email_address, "Bench Inbox")] if not sent else [(p[1], p[0]) for p in partners]
            extras.append((folder, sent, partner, recipients, read))
    message_ids = insert_rows(
        EmailMessage,
        (
            "account_id",
            "thread_id",
            "message_key",
            "message_id",
            "subject",
            "from_name",
            "from_address",
            "date",
            "internal_date",
            "snippet",
            "body_text",
            "direction",
            "size",
            "recipient_count",
            "is_read",
            "has_attachments",
            "created_at",
        ),
        message_rows,
        return_ids=True,
    )
    participants, locations = [], []
    for message_id, row, (folder, _sent, _partner, recipients, read) in zip(
        message_ids, message_rows, extras, strict=True
    ):
        participants.append((message_id, "from", row[6], row[5]))
        participants.extend((message_id, "to", address, name) for address, name in recipients)
        folder.uidnext += 1
        locations.append((message_id, folder.pk, folder.uidvalidity, folder.uidnext, "\\Seen" if read else ""))
    insert_rows(MessageParticipant, ("message_id", "role", "address", "name"), participants)
    insert_rows(MessageLocation, ("message_id", "folder_id", "uidvalidity", "uid", "flags"), locations)
    return thread_ids


def _delete_user_data(user: User) -> None:
    """Raw deletes in dependency order: the ORM's cascade would load 200,000 objects first."""
    accounts = list(EmailAccount.objects.filter(user=user).values_list("pk", flat=True))
    threads = EmailThread.objects.filter(owner=user).values("pk")
    messages = EmailMessage.objects.filter(account_id__in=accounts).values("pk")
    with transaction.atomic():
        documents = MailboxSearchDocument.objects.filter(entry__owner=user)
        for queryset in (
            *([documents] if connection.vendor == "postgresql" else []),
            MailboxEntry.objects.filter(owner=user),
            MessageParticipant.objects.filter(message__in=messages),
            MessageLocation.objects.filter(message__in=messages),
            Attachment.objects.filter(message__in=messages),
            ThreadLink.objects.filter(thread__in=threads),
            ThreadReference.objects.filter(owner=user),
            EmailMessage.objects.filter(account_id__in=accounts),
            EmailThread.objects.filter(owner=user),
        ):
            queryset._raw_delete(queryset.db)
        Deal.objects.filter(owner=user).delete()
        Person.objects.filter(owner=user).delete()
        Organization.objects.filter(owner=user).delete()
        Pipeline.objects.filter(name="Bench pipeline").exclude(deals__isnull=False).delete()
        EmailAccount.objects.filter(user=user).delete()
        user.delete()
