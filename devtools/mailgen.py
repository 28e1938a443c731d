"""Realistic generated mail for benchmarks and load tests.

The mix follows what a sales mailbox looks like: mostly short plain or text+HTML mail, threads of
replies with References, some attachments (a few large ones), legacy charsets and right-to-left text.
Average size is ~22 KB, as in the mailbox measured in DESIGN.md (20k messages, 441 MB).
"""

import base64
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

WORDS = [
    "proposal",
    "pricing",
    "contract",
    "renewal",
    "meeting",
    "quarter",
    "forecast",
    "demo",
    "licence",
    "invoice",
    "support",
    "onboarding",
    "timeline",
    "budget",
    "approval",
    "stakeholder",
    "integration",
    "rollout",
    "feedback",
    "discount",
    "volume",
    "shipment",
    "order",
    "thanks",
    "regards",
    "please",
    "attached",
    "review",
    "schedule",
    "call",
    "tomorrow",
    "next",
    "week",
    "update",
    "status",
    "team",
]
RTL_LINES = ["שלום, מצורפת ההצעה המעודכנת.", "مرحبا، نرسل لكم العرض المحدث.", "سلام، پیشنهاد به روز شده پیوست است."]
LATIN1_LINES = ["Grüße aus München, die Bestätigung folgt.", "Réunion confirmée, à bientôt."]
COMPANIES = ["acme.example", "globex.example", "initech.example", "umbrella.example", "hooli.example"]


@dataclass
class GeneratedMessage:
    raw: bytes
    date: datetime
    message_id: str


def _paragraphs(rng: random.Random, n: int) -> str:
    out = []
    for _ in range(n):
        out.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(25, 90))).capitalize() + ".")
    return "\n\n".join(out)


def _b64_lines(data: bytes) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))


def generate(
    count: int, *, owner: str = "rep@company.test", seed: int = 7, days: int = 3, now: datetime | None = None
) -> Iterator[GeneratedMessage]:
    """Yield `count` messages dated over the last `days` days, oldest first (the order they arrive)."""
    rng = random.Random(seed)
    now = now or datetime.now(UTC)
    span = timedelta(days=days).total_seconds()
    recent_ids: list[tuple[str, str, str]] = []  # (message-id, subject, references)
    for index in range(count):
        date = now - timedelta(seconds=span * (1 - (index + 1) / (count + 1)))
        domain = rng.choice(COMPANIES)
        person = f"{rng.choice(['ann', 'bob', 'carla', 'dmitri', 'eve', 'farah', 'gil'])}{rng.randint(1, 40)}"
        other = f"{person}@{domain}"
        outgoing = rng.random() < 0.3
        sender, recipient = (owner, other) if outgoing else (other, owner)
        message_id = f"<gen{seed}.{index}.{rng.getrandbits(32):x}@{domain}>"
        headers = [
            f"From: {person.capitalize()} <{sender}>" if not outgoing else f"From: Sales Rep <{owner}>",
            f"To: <{recipient}>",
            f"Date: {format_datetime(date)}",
            f"Message-ID: {message_id}",
            "MIME-Version: 1.0",
        ]
        if rng.random() < 0.15:
            cc = ", ".join(f"cc{rng.randint(1, 500)}@{rng.choice(COMPANIES)}" for _ in range(rng.randint(1, 6)))
            headers.append(f"Cc: {cc}")
        if recent_ids and rng.random() < 0.35:
            parent_id, parent_subject, parent_refs = rng.choice(recent_ids[-200:])
            subject = parent_subject if parent_subject.startswith("Re: ") else f"Re: {parent_subject}"
            references = f"{parent_refs} {parent_id}".strip()
            headers += [f"In-Reply-To: {parent_id}", f"References: {references}"]
        else:
            subject = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))).capitalize()
            references = ""
        recent_ids.append((message_id, subject, references[-900:]))
        kind = rng.random()
        text = _paragraphs(rng, rng.randint(2, 12))
        if kind < 0.05:
            headers.append("Subject: =?utf-8?b?" + base64.b64encode(f"{subject} ✓".encode()).decode() + "?=")
            body = "\n".join(rng.choice(RTL_LINES) for _ in range(8)) + "\n\n" + text
            headers += ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: base64"]
            payload = _b64_lines(body.encode())
        elif kind < 0.10:
            headers.append(f"Subject: {subject}")
            body = "\n".join(rng.choice(LATIN1_LINES) for _ in range(6)) + "\n\n" + text
            headers += ["Content-Type: text/plain; charset=iso-8859-1", "Content-Transfer-Encoding: 8bit"]
            payload = body.encode("latin-1").decode("latin-1")
        elif kind < 0.45:
            headers.append(f"Subject: {subject}")
            headers += ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 7bit"]
            payload = text
        else:
            headers.append(f"Subject: {subject}")
            boundary = f"b{index:x}{rng.getrandbits(40):x}"
            html_paras = "".join(f"<p style='margin:0 0 8px'>{p}</p>" for p in text.split("\n\n"))
            html = (
                "<html><head><style>p{font-family:Arial}</style></head><body>"
                f"<table width='100%'><tr><td>{html_paras}</td></tr></table>"
                f"<img src='https://tracker.{domain}/open.gif?id={index}' width=1 height=1>"
                "</body></html>"
            )
            alternative = (
                f"--{boundary}a\nContent-Type: text/plain; charset=utf-8\n\n{text}\n"
                f"--{boundary}a\nContent-Type: text/html; charset=utf-8\n\n{html}\n--{boundary}a--\n"
            )
            if kind < 0.80:
                headers.append(f'Content-Type: multipart/alternative; boundary="{boundary}a"')
                payload = alternative
            else:
                size = rng.choice([8_000, 20_000, 60_000, 150_000]) if rng.random() < 0.97 else 900_000
                attachment = _b64_lines(rng.randbytes(size))
                name = rng.choice(["proposal.pdf", "pricing.xlsx", "contract.docx", "photo.jpg"])
                headers.append(f'Content-Type: multipart/mixed; boundary="{boundary}m"')
                payload = (
                    f'--{boundary}m\nContent-Type: multipart/alternative; boundary="{boundary}a"\n\n{alternative}'
                    f'--{boundary}m\nContent-Type: application/octet-stream; name="{name}"\n'
                    f'Content-Disposition: attachment; filename="{name}"\nContent-Transfer-Encoding: base64\n\n'
                    f"{attachment}\n--{boundary}m--\n"
                )
        raw = ("\r\n".join(headers) + "\r\n\r\n" + payload.replace("\n", "\r\n")).encode("utf-8", "surrogateescape")
        if "iso-8859-1" in headers[-2]:
            raw = ("\r\n".join(headers) + "\r\n\r\n" + payload.replace("\n", "\r\n")).encode("latin-1")
        yield GeneratedMessage(raw=raw, date=date, message_id=message_id[1:-1])
