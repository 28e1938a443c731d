"""Demo data for `make run`: idempotent, so running it on every start is safe."""

from decimal import Decimal
from email import message_from_bytes
from email.policy import default

from django.core.management.base import BaseCommand
from django.db import transaction

from contacts.models import Organization, OrganizationDomain, Person, PersonEmail
from crm.demo_mail import sample_messages
from crm.models import Team, User, Visibility
from deals.models import Deal, Pipeline, Stage
from leads.models import Lead
from mailsync.linking.rules import link_threads
from mailsync.models import EmailAccount, EmailTemplate, Signature
from mailsync.sync.ingest import ingest_raw
from projects.models import Project

DEMO_USER = ("demo@example.com", "demo-password-123")
ADMIN_USER = ("admin@example.com", "admin-password-123")

STAGES = [("Lead in", 10), ("Contact made", 25), ("Proposal sent", 50), ("Negotiation", 75)]
ORGANIZATIONS = [
    (
        "Acme Corporation",
        "acme.example",
        [("Wile", "Coyote", "wile@acme.example"), ("Road", "Runner", "rr@acme.example")],
    ),
    ("Globex", "globex.example", [("Hank", "Scorpio", "hank@globex.example")]),
    (
        "Initech",
        "initech.example",
        [("Peter", "Gibbons", "peter@initech.example"), ("Bill", "Lumbergh", "bill@initech.example")],
    ),
    ("Umbrella Ltd", "umbrella.example", [("Alice", "Abernathy", "alice@umbrella.example")]),
]
DEALS = [
    ("Acme anvils 2027", "Wile", "Proposal sent", Decimal("12000")),
    ("Globex volcano lair fit-out", "Hank", "Negotiation", Decimal("250000")),
    ("Initech TPS reports licence", "Peter", "Contact made", Decimal("4800")),
    ("Umbrella lab supplies", "Alice", "Lead in", Decimal("30500")),
]


class Command(BaseCommand):
    help = "Create a demo company (users, pipeline, people, organizations, deals, a lead and a project)."

    @transaction.atomic
    def handle(self, *args, **options):
        team, _ = Team.objects.get_or_create(name="Sales")
        demo = self._user(*DEMO_USER, first_name="Dana", last_name="Demo", team=team, role=User.Role.USER)
        self._user(*ADMIN_USER, first_name="Ada", last_name="Admin", team=team, role=User.Role.ADMIN, staff=True)

        pipeline, _ = Pipeline.objects.get_or_create(name="Sales pipeline")
        stages = {}
        for order, (name, probability) in enumerate(STAGES):
            stages[name], _ = Stage.objects.get_or_create(
                pipeline=pipeline, name=name, defaults={"order": order, "probability": probability}
            )

        people = {}
        for org_name, domain, contacts in ORGANIZATIONS:
            org, _ = Organization.objects.get_or_create(name=org_name, defaults={"owner": demo})
            OrganizationDomain.objects.get_or_create(domain=domain, defaults={"organization": org})
            for first, last, email in contacts:
                existing = PersonEmail.objects.filter(email=email).select_related("person").first()
                person = (
                    existing.person
                    if existing
                    else Person.objects.create(first_name=first, last_name=last, organization=org, owner=demo)
                )
                if not existing:
                    PersonEmail.objects.create(person=person, email=email, is_primary=True)
                people[first] = person

        for title, first, stage_name, value in DEALS:
            person = people[first]
            Deal.objects.get_or_create(
                title=title,
                defaults={
                    "pipeline": pipeline,
                    "stage": stages[stage_name],
                    "value": value,
                    "currency": "EUR",
                    "person": person,
                    "organization": person.organization,
                    "owner": demo,
                },
            )
        Lead.objects.get_or_create(
            title="Inbound: Initech printer fleet",
            defaults={"owner": demo, "person": people["Bill"], "source": "Website"},
        )
        Project.objects.get_or_create(
            title="Acme onboarding",
            defaults={"owner": demo, "person": people["Wile"], "organization": people["Wile"].organization},
        )
        self._sample_mailbox(demo)
        self._templates(demo)
        self.stdout.write(self.style.SUCCESS("Demo data ready."))

    def _sample_mailbox(self, user: User) -> None:
        """Sample conversations through the real ingestion and linking, in a paused account that points
        at no server (so the scheduler never tries it). Connect a real mailbox in Settings > Email sync."""
        account, created = EmailAccount.objects.get_or_create(
            user=user,
            email_address=user.email,
            defaults={
                "display_name": "Sample mailbox (demo data)",
                "username": user.email,
                "imap_host": "imap.demo.invalid",
                "smtp_host": "smtp.demo.invalid",
                "state": EmailAccount.State.PAUSED,
            },
        )
        if not created and account.messages.exists():
            # Already seeded. The samples are dated relative to now, so a second set would be other
            # messages with the same Message-IDs, which ingestion rightly keeps apart.
            return
        # What the owner sent is read, as in any mailbox; the rest arrives unread.
        raws = sample_messages(user.email)
        sent = [raw for raw in raws if user.email in str(message_from_bytes(raw, policy=default)["From"] or "")]
        received = [raw for raw in raws if raw not in sent]
        thread_ids = set(ingest_raw(account, sent, flags=("\\Seen",)).thread_ids)
        thread_ids |= set(ingest_raw(account, received).thread_ids)
        link_threads(sorted(thread_ids))

    def _templates(self, user: User) -> None:
        """Two email templates with smart fields and a signature on the sample account (issue 13)."""
        EmailTemplate.objects.get_or_create(
            owner=user,
            name="Follow-up after a call",
            defaults={
                "visibility": Visibility.COMPANY,
                "subject": "Next steps for {{deal.title}}",
                "body_html": (
                    '<p dir="auto">Hi {{person.first_name|there}},</p>'
                    '<p dir="auto">Thanks for your time today. As promised, here is a summary of what we discussed '
                    "about <b>{{deal.title}}</b> ({{deal.value}}).</p>"
                    '<p dir="auto">Could {{organization.name|your team}} get back to me by Friday?</p>'
                ),
            },
        )
        EmailTemplate.objects.get_or_create(
            owner=user,
            name="Proposal sent",
            defaults={
                "visibility": Visibility.OWNER,
                "subject": "Our proposal for {{organization.name}}",
                "body_html": (
                    '<p dir="auto">Dear {{person.full_name}},</p><p dir="auto">Please find our proposal attached.</p>'
                ),
            },
        )
        account = EmailAccount.objects.filter(user=user, email_address=user.email).first()
        if account is not None:
            Signature.objects.get_or_create(
                account=account,
                name="Full",
                defaults={
                    "body_html": (
                        '<p dir="auto">{{sender.full_name}}<br>Account executive, Example Corp<br>{{sender.email}}</p>'
                    ),
                    "is_default_for_new": True,
                    "is_default_for_replies": True,
                },
            )

    def _user(self, email, password, *, first_name, last_name, team, role, staff=False) -> User:
        user = User.objects.filter(email=email).first()
        if user is None:
            user = User.objects.create_user(
                email=email,
                password=password,
                first_name=first_name,
                last_name=last_name,
                team=team,
                role=role,
                is_staff=staff,
                is_superuser=staff,
            )
        return user
