"""Recipient lists as the user types them -> checked addresses (SPEC W4).

`parse_recipients("Ann <ann@x.com>, bob@y.org; ...")` returns the recipients, or raises
AddressError naming the first bad entry and what is wrong with it: a character that an address in the
CRM may not contain (FORBIDDEN_CHARACTERS), or an address that is malformed. Display names keep
their text, but control characters (CR / LF: header injection) become spaces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.core.validators import validate_email

# W4: refused in an address, with a message that names the character.
FORBIDDEN_CHARACTERS = '\\/":<>|*´`~^'  # noqa: RUF001 (the acute accent is one of them)
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")
_ANGLE = re.compile(r"^(?P<name>.*?)<(?P<address>[^<>]*)>\s*$", re.DOTALL)


class AddressError(ValueError):
    """A recipient that cannot be sent to; the message names it and the reason."""


@dataclass(frozen=True)
class Recipient:
    address: str
    name: str = ""

    def __str__(self) -> str:
        return f"{self.name} <{self.address}>" if self.name else self.address


def clean_header_text(value: str) -> str:
    """One line of header text: CR, LF and other control characters (header injection) become spaces."""
    return " ".join(_CONTROL.sub(" ", value or "").split())


def _split(text: str) -> list[str]:
    """Split on commas / semicolons / new lines outside double quotes (a quoted name may hold a comma)."""
    parts, current, quoted = [], [], False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char in ",;\n\r" and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


def check_address(address: str, *, shown: str | None = None) -> str:
    """The address, stripped, or AddressError naming the problem."""
    shown = shown if shown is not None else address
    address = address.strip()
    if not address:
        raise AddressError(f"“{shown}” has no address.")
    for char in address:
        if char in FORBIDDEN_CHARACTERS:
            raise AddressError(f"The address “{address}” contains “{char}”, which an email address cannot contain.")
    if _CONTROL.search(address) or " " in address:
        raise AddressError(f"The address “{address.strip()}” contains a space or a line break.")
    try:
        validate_email(address)
    except ValidationError:
        raise AddressError(f"“{address}” is not a valid email address (expected name@example.com).") from None
    return address


def parse_recipient(token: str) -> Recipient:
    match = _ANGLE.match(token)
    if match:
        name = clean_header_text(match.group("name")).strip().strip('"').strip()
        return Recipient(address=check_address(match.group("address"), shown=token), name=name)
    if "<" in token or ">" in token:
        bad = "<" if "<" in token else ">"
        raise AddressError(f"The address “{token}” contains “{bad}”, which an email address cannot contain.")
    return Recipient(address=check_address(token))


def parse_recipients(text: str) -> list[Recipient]:
    """Every recipient of a To / Cc / Bcc field, duplicates (same address, any case) dropped."""
    seen: set[str] = set()
    result = []
    for token in _split(text or ""):
        recipient = parse_recipient(token)
        if recipient.address.lower() not in seen:
            seen.add(recipient.address.lower())
            result.append(recipient)
    return result


def format_recipients(recipients: list[Recipient]) -> str:
    return ", ".join(str(recipient) for recipient in recipients)
