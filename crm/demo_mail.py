"""Sample conversations for the demo company of `make run` (seed_demo).

They go through the real ingestion pipeline (parsing, threading, linking), exactly like synced mail,
into a paused "sample mailbox" account that points at no server.
"""

from datetime import timedelta
from email.message import EmailMessage
from email.utils import format_datetime

from django.utils import timezone

DEMO_DOMAIN = "demo.example"


def _message(
    *,
    sender: str,
    to: str,
    subject: str,
    text: str,
    hours_ago: float,
    message_id: str,
    reply_to_id: str = "",
    references: tuple[str, ...] = (),
    html: str = "",
    attachment: tuple[str, str, bytes] | None = None,
    extra_headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = format_datetime(timezone.now() - timedelta(hours=hours_ago))
    message["Message-ID"] = message_id
    if reply_to_id:
        message["In-Reply-To"] = reply_to_id
        message["References"] = " ".join((*references, reply_to_id))
    for name, value in extra_headers:
        message[name] = value
    message.set_content(text)
    if html:
        message.add_alternative(html, subtype="html")
    if attachment:
        filename, content_type, payload = attachment
        maintype, subtype = content_type.split("/")
        message.add_attachment(payload, maintype=maintype, subtype=subtype, filename=filename)
    return bytes(message)


def sample_messages(owner: str) -> list[bytes]:
    """A week of a sales rep's mail with the demo customers (addresses match seed_demo's people)."""
    me = f"Dana Demo <{owner}>"
    # Stable ids: seed_demo runs on every `make run`, and ingestion dedups by Message-ID.
    local = owner.replace("@", ".")
    ids = [f"<sample-{number}.{local}@{DEMO_DOMAIN}>" for number in range(12)]
    proposal_pdf = b"%PDF-1.4\n% sample proposal\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n"
    return [
        _message(
            sender="Wile E. Coyote <wile@acme.example>",
            to=me,
            subject="Anvils for 2027",
            text="Hi Dana,\n\nWe need 400 anvils next year, delivered to the canyon. Can you send a proposal?\n\nWile",
            hours_ago=120,
            message_id=ids[0],
        ),
        _message(
            sender=me,
            to="Wile E. Coyote <wile@acme.example>",
            subject="Re: Anvils for 2027",
            text="Hello Wile,\n\nPlease find our proposal attached: 400 anvils, 30 EUR each.\n\nBest,\nDana",
            hours_ago=100,
            message_id=ids[1],
            reply_to_id=ids[0],
            attachment=("anvils-proposal-2027.pdf", "application/pdf", proposal_pdf),
        ),
        _message(
            sender="Wile E. Coyote <wile@acme.example>",
            to=me,
            subject="Re: Anvils for 2027",
            text="Thanks! Road Runner (rr@acme.example) will review the delivery terms.\n\nWile",
            hours_ago=30,
            message_id=ids[2],
            reply_to_id=ids[1],
            references=(ids[0],),
        ),
        _message(
            sender="Hank Scorpio <hank@globex.example>",
            to=me,
            subject="Volcano lair fit-out: next steps",
            text="Dana, the board approved phase one. Let's talk about the hammock district on Thursday.",
            html=(
                "<p>Dana, the board <b>approved phase one</b>.</p>"
                "<p>Let's talk about the hammock district on Thursday.</p>"
                '<p><img src="https://globex.example/newsletter/track.gif" alt="Globex"></p>'
            ),
            hours_ago=50,
            message_id=ids[3],
        ),
        _message(
            sender=me,
            to="Hank Scorpio <hank@globex.example>",
            subject="Re: Volcano lair fit-out: next steps",
            text="Thursday 10:00 works. I'll bring the revised quote.",
            hours_ago=48,
            message_id=ids[4],
            reply_to_id=ids[3],
        ),
        _message(
            sender="Peter Gibbons <peter@initech.example>",
            to=me,
            subject="TPS reports licence",
            text="Hi, did you get the memo about the TPS reports? We'd like 12 more seats.",
            hours_ago=26,
            message_id=ids[5],
        ),
        _message(
            sender="Bill Lumbergh <bill@initech.example>",
            to=me,
            subject="Printer fleet",
            text="Yeaaah, if you could send me a quote for the printer fleet, that'd be great.",
            hours_ago=20,
            message_id=ids[6],
        ),
        _message(
            sender="Alice Abernathy <alice@umbrella.example>",
            to=me,
            subject="שאלה על ההזמנה",  # Hebrew on purpose: the right-to-left demo
            text="שלום דנה,\nהאם אפשר להקדים את המשלוח לשבוע הבא?\nתודה, אליס",  # noqa: RUF001
            hours_ago=8,
            message_id=ids[7],
        ),
        _message(
            sender="Vendor News <news@newsletters.example>",
            to=me,
            subject="This week in anvil logistics",
            text="Our weekly roundup of the anvil market.",
            hours_ago=4,
            message_id=ids[8],
            # A newsletter: listed in Bulk, not the Inbox.
            extra_headers=(("List-Unsubscribe", "<https://newsletters.example/unsubscribe>"),),
        ),
    ]
