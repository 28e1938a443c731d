"""Email address and domain normalisation shared by the CRM and mail sync."""

import re
from email.utils import parseaddr

# Domains of public mailbox providers: a person at gmail.com says nothing about their organization.
FREE_MAIL_DOMAINS = frozenset(
    [
        "gmail.com",
        "googlemail.com",
        "yahoo.com",
        "yahoo.co.uk",
        "yahoo.fr",
        "ymail.com",
        "rocketmail.com",
        "hotmail.com",
        "hotmail.co.uk",
        "hotmail.fr",
        "outlook.com",
        "live.com",
        "msn.com",
        "icloud.com",
        "me.com",
        "mac.com",
        "aol.com",
        "gmx.com",
        "gmx.de",
        "gmx.net",
        "web.de",
        "mail.ru",
        "bk.ru",
        "inbox.ru",
        "list.ru",
        "yandex.ru",
        "yandex.com",
        "ya.ru",
        "protonmail.com",
        "proton.me",
        "pm.me",
        "fastmail.com",
        "fastmail.fm",
        "zoho.com",
        "mail.com",
        "qq.com",
        "126.com",
        "163.com",
        "yeah.net",
        "139.com",
        "sina.com",
        "aliyun.com",
        "foxmail.com",
        "naver.com",
        "daum.net",
        "hanmail.net",
        "libero.it",
        "virgilio.it",
        "tiscali.it",
        "orange.fr",
        "wanadoo.fr",
        "free.fr",
        "laposte.net",
        "t-online.de",
        "seznam.cz",
        "wp.pl",
        "o2.pl",
        "interia.pl",
        "onet.pl",
        "tutanota.com",
        "tuta.io",
        "hey.com",
    ]
)


def normalize_email(value: str) -> str:
    """Lower-cased, trimmed bare address ("Ann <Ann@X.com>" -> "ann@x.com"); "" when not an address."""
    if not value:
        return ""
    value = value.strip()
    if "<" in value:
        value = parseaddr(value)[1]
    value = value.strip().strip("<>").strip().lower()
    if value.count("@") != 1:
        return ""
    local, domain = value.split("@")
    if not local or not domain:
        return ""
    return f"{local}@{normalize_domain(domain)}"


def normalize_domain(value: str) -> str:
    value = (value or "").strip().lower().lstrip("@").rstrip(".")
    try:
        return value.encode("idna").decode("ascii") if value and not value.isascii() else value
    except UnicodeError:
        return value


def domain_of(address: str) -> str:
    address = normalize_email(address)
    return address.rsplit("@", 1)[1] if address else ""


def is_free_mail_domain(domain: str) -> bool:
    return normalize_domain(domain) in FREE_MAIL_DOMAINS


# One entry of a plain address header: "Display Name <local@domain>" or "local@domain", with no quotes,
# comments, groups, escapes, domain literals or spaces inside the address. Most headers are only such
# entries separated by commas; for them the stdlib's getaddresses (a character-by-character parser,
# ~40 us an address) returns exactly the name (its words joined by one space, which the caller does
# too) and the address this finds (tests/test_parsing.py checks both on every header of the test
# corpus; tests/test_bounces.py checks the first address against parseaddr).
_PLAIN = r"[^\s<>@,;:\"()\\\[\]]+"
_LWS = r"[ \t\r\n]*"  # the stdlib's whitespace between words (not other Unicode spaces: they stay in the name)
_SIMPLE_ENTRY = re.compile(rf"{_LWS}(?:([^<>@,;:\"()\\\[\]]*?){_LWS}<({_PLAIN}@{_PLAIN})>|({_PLAIN}@{_PLAIN})){_LWS}")
_NOT_SIMPLE = re.compile(r'["()\\\[\];:]')
_WORD_GAP = re.compile(r"[ \t\r\n]+")


def plain_addresses(text: str) -> list[tuple[str, str]] | None:
    """email.utils.getaddresses([text]) for a header made of plain entries only (_SIMPLE_ENTRY); None
    for any other (the caller asks the stdlib). Its first pair is parseaddr(text)'s."""
    if _NOT_SIMPLE.search(text):
        return None
    pairs = []
    entries = text.split(",")
    for position, entry in enumerate(entries, start=1):
        if not entry.strip(" \t\r\n"):
            if position < len(entries):
                return None  # an empty entry inside: the stdlib's answer depends on what follows it
            continue
        match = _SIMPLE_ENTRY.fullmatch(entry)
        if match is None:
            return None
        name, bracketed, bare = match.groups()
        pairs.append((" ".join(filter(None, _WORD_GAP.split(name))), bracketed) if bracketed else ("", bare))
    return pairs
