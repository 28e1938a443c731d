"""Open and click tracking of mail sent from the CRM (W5), and telling people from machines.

At queue time (services.queue_message, where the MIME bytes are fixed) a message with tracking on gets:
- each http(s) link of what the user wrote (not the quoted original) rewritten to
  `CRM_PUBLIC_URL/t/c/<message>/<index>/<token>`; the destination is stored in TrackedLink, never in the URL;
- a 1x1 pixel `CRM_PUBLIC_URL/t/o/<message>/<token>.gif` at the end of the HTML body.
`token` = HMAC-SHA256 (Django's salted_hmac, keyed by the secret key) over the kind, the message and the link
index, 128 bits, compared in constant time: a tampered or unknown URL gets a plain 404 and never a redirect.

Every hit is classified, with its reason (`classify`, pure):
- the sender: signed in to the CRM as the sender (or as a colleague reading the sent copy of a shared
  conversation), or from the address (IP) they sent the message from;
- Apple Mail Privacy Protection: Apple's network (17.0.0.0/8) or the bare "Mozilla/5.0" user agent of
  Apple's relay: every Apple Mail recipient "opens" at delivery;
- Google's image proxy ("GoogleImageProxy"): the recipient opened it in Gmail (Gmail caches the image, so
  later opens are not seen);
- a security scanner: a known scanner or HTTP library user agent, a mail-security network (Microsoft
  Defender / Safe Links, Mimecast, Proofpoint, Barracuda), or a click within
  MAILSYNC_TRACKING_SCANNER_SECONDS of delivery (gateways follow every link at once);
- otherwise likely a person.
"""

from __future__ import annotations

import base64
import html as html_lib
import ipaddress
import re
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.urls import reverse
from django.utils.crypto import constant_time_compare, salted_hmac

from mailsync.models import OutgoingMessage, TrackedLink, TrackingEvent

from . import mime

SALT = "mailsync.sending.tracking"
Verdict = TrackingEvent.Verdict
MAX_LINKS = 500

_LINK = re.compile(r'(<a\b[^>]*?\bhref=")(https?://[^"]+)("[^>]*>)(.*?)(</a>)', re.I | re.S)
_TAGS = re.compile(r"<[^>]+>")

APPLE_NETWORKS = tuple(ipaddress.ip_network(n) for n in ("17.0.0.0/8",))
# Mail-security services that fetch links and images of incoming mail (published sending / scanning ranges).
SCANNER_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "40.92.0.0/15",  # Exchange Online Protection / Defender for Office 365 (Safe Links)
        "40.107.0.0/16",
        "52.100.0.0/14",
        "104.47.0.0/17",
        "205.139.110.0/24",  # Mimecast
        "207.211.30.0/24",
        "148.163.128.0/19",  # Proofpoint
        "67.231.144.0/20",
        "209.222.80.0/21",  # Barracuda
        "64.235.144.0/20",
    )
)
SCANNER_AGENTS = re.compile(
    r"bot\b|crawler|spider|scanner|python-requests|python-urllib|aiohttp|curl/|wget/|go-http-client|java/|"
    r"libwww|okhttp|headlesschrome|phantomjs|barracuda|proofpoint|mimecast|symantec|trend ?micro|fireeye|zscaler|"
    r"forcepoint|sophos|cisco|ironport|safelinks|microsoft office/|ms-office|appengine-google|preview",
    re.I,
)


@dataclass(frozen=True)
class Hit:
    """What a tracking request tells about who made it."""

    kind: str
    ip: str
    user_agent: str
    at: datetime
    signed_in_as_sender: bool = False
    # Signed in to the CRM as someone else: a colleague reading the sent copy in a shared conversation.
    signed_in_as_colleague: bool = False


@dataclass(frozen=True)
class MessageFacts:
    delivered_at: datetime | None
    sender_ip: str | None


# --- tokens and URLs ----------------------------------------------------------------------------------


def token(kind: str, outgoing_pk: int, index: int = 0) -> str:
    digest = salted_hmac(SALT, f"{kind}:{outgoing_pk}:{index}", algorithm="sha256").digest()
    return base64.urlsafe_b64encode(digest[:16]).decode().rstrip("=")


def token_is_valid(kind: str, outgoing_pk: int, index: int, given: str) -> bool:
    return constant_time_compare(token(kind, outgoing_pk, index), given)


def open_url(outgoing_pk: int) -> str:
    path = reverse("tracking_open", args=[outgoing_pk, token(TrackingEvent.Kind.OPEN, outgoing_pk)])
    return settings.CRM_PUBLIC_URL + path


def click_url(outgoing_pk: int, index: int) -> str:
    path = reverse("tracking_click", args=[outgoing_pk, index, token(TrackingEvent.Kind.CLICK, outgoing_pk, index)])
    return settings.CRM_PUBLIC_URL + path


# --- queue time ----------------------------------------------------------------------------------------


def rewrite_links(body: str, url_for_index) -> tuple[str, list[tuple[str, str]]]:
    """Pure: the body with every http(s) link replaced by url_for_index(i); returns the (destination, text)
    of each, in order."""
    found: list[tuple[str, str]] = []

    def replace(match: re.Match) -> str:
        if len(found) >= MAX_LINKS:
            return match.group(0)
        destination = html_lib.unescape(match.group(2))
        text = " ".join(html_lib.unescape(_TAGS.sub(" ", match.group(4))).split())
        found.append((destination, text))
        tracked = html_lib.escape(url_for_index(len(found) - 1), quote=True)
        return f"{match.group(1)}{tracked}{match.group(3)}{match.group(4)}{match.group(5)}"

    return _LINK.sub(replace, body), found


def pixel_html(outgoing_pk: int) -> str:
    url = html_lib.escape(open_url(outgoing_pk), quote=True)
    return f'<img src="{url}" width="1" height="1" alt="" style="display:block;width:1px;height:1px;border:0">'


def apply_tracking(*, outgoing: OutgoingMessage, draft: mime.Draft) -> mime.Draft:
    """In queue_message's transaction: the links of what the user wrote go through the CRM and the pixel is
    added; the destinations are stored (TrackedLink, replaced if the message is queued again after Undo)."""
    TrackedLink.objects.filter(outgoing=outgoing).delete()
    body, links = rewrite_links(draft.html or "", lambda index: click_url(outgoing.pk, index))
    TrackedLink.objects.bulk_create(
        TrackedLink(outgoing=outgoing, index=index, url=url, label=text[:200])
        for index, (url, text) in enumerate(links)
    )
    draft.html = body + pixel_html(outgoing.pk)
    return draft


# --- classification ------------------------------------------------------------------------------------


def _ip(value: str):
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def network_of(value: str) -> str:
    """The /24 (IPv4) or /48 (IPv6) of an address: stored instead of the address itself."""
    address = _ip(value)
    if address is None:
        return ""
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def classify(hit: Hit, facts: MessageFacts) -> tuple[str, str]:
    """(verdict, reason) of one hit. Pure."""
    agent = hit.user_agent.strip()
    address = _ip(hit.ip)
    if hit.signed_in_as_sender:
        return Verdict.SENDER, "signed in to the CRM as the sender"
    if hit.signed_in_as_colleague:
        return Verdict.SENDER, "signed in to the CRM: a colleague reading the sent copy"
    if facts.sender_ip and hit.ip == facts.sender_ip:
        return Verdict.SENDER, "from the address the sender sent it from"
    if "googleimageproxy" in agent.lower():
        return Verdict.GOOGLE_PROXY, "through Gmail's image proxy (opened in Gmail; later opens are cached)"
    if address is not None and any(address in network for network in APPLE_NETWORKS):
        return Verdict.APPLE_PROXY, "from Apple's network: Mail Privacy Protection loads images at delivery"
    if agent == "Mozilla/5.0":
        return Verdict.APPLE_PROXY, "bare 'Mozilla/5.0' user agent of Apple Mail Privacy Protection"
    if address is not None and any(address in network for network in SCANNER_NETWORKS):
        return Verdict.SCANNER, "from a mail-security service's network"
    if not agent or SCANNER_AGENTS.search(agent):
        return Verdict.SCANNER, f"automated user agent: {agent[:60] or '(none)'}"
    if hit.kind == TrackingEvent.Kind.CLICK and facts.delivered_at is not None:
        seconds = (hit.at - facts.delivered_at).total_seconds()
        if seconds < settings.MAILSYNC_TRACKING_SCANNER_SECONDS:
            return Verdict.SCANNER, f"clicked {max(0, int(seconds))} s after delivery: link scanners click at once"
    return Verdict.PERSON, "a mail client or browser, not a known proxy or scanner"


def record_hit(*, outgoing_pk: int, facts: MessageFacts, hit: Hit, link_id: int | None = None) -> TrackingEvent:
    """One row: the hit, classified. (No transaction of its own: a single INSERT is atomic.)"""
    verdict, reason = classify(hit, facts)
    return TrackingEvent.objects.create(
        outgoing_id=outgoing_pk,
        kind=hit.kind,
        link_id=link_id,
        occurred_at=hit.at,
        verdict=verdict,
        reason=reason[:200],
        user_agent=hit.user_agent[:300],
        network=network_of(hit.ip),
    )


# --- what the pages show -------------------------------------------------------------------------------


@dataclass
class TrackingSummary:
    """ "Opened 3 times (1 likely by a person), clicked 'pricing'", with every event's reason for the hover."""

    opens: int = 0
    person_opens: int = 0
    clicks: int = 0
    person_clicks: int = 0
    clicked: list[str] = field(default_factory=list)  # labels of links a person likely clicked
    details: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        if not self.opens and not self.clicks:
            return "Not opened yet"
        parts = []
        if self.opens:
            parts.append(
                f"Opened {self.opens} time{'s' if self.opens != 1 else ''} ({self.person_opens} likely by a person)"
            )
        if self.clicked:
            parts.append("clicked " + ", ".join(f"'{label}'" for label in self.clicked))
        elif self.clicks:
            parts.append(f"{self.clicks} link click{'s' if self.clicks != 1 else ''}, none likely by a person")
        return ", ".join(parts)

    @property
    def hover(self) -> str:
        return "\n".join(self.details[-20:])


def summarize(events: list[TrackingEvent]) -> TrackingSummary:
    summary = TrackingSummary()
    for event in events:
        person = event.verdict == Verdict.PERSON
        if event.kind == TrackingEvent.Kind.OPEN:
            summary.opens += 1
            summary.person_opens += person
            what = "Opened"
        else:
            summary.clicks += 1
            summary.person_clicks += person
            label = (event.link.label or event.link.url[:60]) if event.link_id else "a link"
            if person and label not in summary.clicked:
                summary.clicked.append(label)
            what = f"Clicked '{label}'"
        when = event.occurred_at.strftime("%d %b %H:%M")
        summary.details.append(f"{when} {what}: {event.get_verdict_display()} ({event.reason})")
    return summary
