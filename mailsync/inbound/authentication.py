"""SPF and DKIM verdicts for the From domain of a Smart BCC message.

A BCC copy claims to come from the user; SPF and DKIM say whether the claim holds. Each result is reduced
to one of three values *for the domain of the From address* (relaxed alignment, as DMARC does: the
checked domain is the From domain, or one is a subdomain of the other):

- PASS: the check passed for an aligned domain;
- FAIL: the check was made and did not pass for an aligned domain (fail, softfail, neutral, none, a pass
  for some other domain: an attacker's server passes SPF for the attacker's own domain);
- UNKNOWN: the inbound path did not report it, or the check could not be made (DNS temporary error).

A message is refused only when both are FAIL (`AuthResults.both_failed`); UNKNOWN never refuses, so a
provider that reports nothing files what the sender rules allow.

The webhooks read what each provider reports (`webhooks.py`); the built-in SMTP receiver checks itself
with pyspf (the connecting IP against the envelope sender's SPF record) and dkimpy (every DKIM-Signature),
both through a DNS lookup that tests replace (`Resolver`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from crm.addresses import normalize_domain

logger = logging.getLogger(__name__)

PASS = "pass"
FAIL = "fail"
UNKNOWN = ""

# Results that mean "could not check now", not "checked and failed".
_NOT_CHECKED = {"", "temperror", "processing_failed", "processing-failed", "unknown", "error"}
_DKIM_SIGNATURE_DOMAIN = re.compile(r"(?:^|;)\s*d\s*=\s*([^;\s]+)", re.I)


@dataclass(frozen=True)
class AuthResults:
    spf: str = UNKNOWN
    dkim: str = UNKNOWN

    @property
    def both_failed(self) -> bool:
        return self.spf == FAIL and self.dkim == FAIL


def aligned(domain: str | None, from_domain: str) -> bool:
    """Relaxed alignment without a public-suffix list: equal, or one a subdomain of the other."""
    domain, from_domain = normalize_domain(domain or ""), normalize_domain(from_domain or "")
    if not domain or not from_domain:
        return False
    return domain == from_domain or domain.endswith("." + from_domain) or from_domain.endswith("." + domain)


def domain_of(address: str | None) -> str:
    address = (address or "").strip().strip("<>")
    return normalize_domain(address.rpartition("@")[2]) if "@" in address else ""


def spf_verdict(result: str | None, checked_domain: str | None, from_domain: str) -> str:
    """`result` as the provider words it ("Pass", "softfail", "PASS (...)"); `checked_domain` is the
    envelope sender's domain (None when the provider does not say: a pass then counts as is)."""
    word = _first_word(result)
    if word in _NOT_CHECKED:
        return UNKNOWN
    if word != PASS:
        return FAIL
    if checked_domain is None or aligned(checked_domain, from_domain):
        return PASS
    return FAIL


def dkim_verdict(results: Iterable[tuple[str | None, str]] | None, from_domain: str) -> str:
    """`results`: (signing domain, result) per signature; None when the provider reports nothing, an
    empty list when the message carries no signature (a definite "none")."""
    if results is None:
        return UNKNOWN
    words = [(domain, _first_word(result)) for domain, result in results]
    if any(word == PASS and aligned(domain, from_domain) for domain, word in words):
        return PASS
    if any(word in _NOT_CHECKED for _domain, word in words):
        return UNKNOWN
    return FAIL


def signature_domains(dkim_signature_headers: Iterable[str]) -> list[str]:
    """The d= tag of each DKIM-Signature header value."""
    domains = []
    for value in dkim_signature_headers:
        match = _DKIM_SIGNATURE_DOMAIN.search(" ".join(str(value).split()))
        if match:
            domains.append(normalize_domain(match.group(1)))
    return domains


def _first_word(result: str | None) -> str:
    text = (result or "").strip().lower()
    return re.split(r"[\s(;]", text, maxsplit=1)[0] if text else ""


# --- the SMTP receiver's own checks ----------------------------------------------------------------------

# Resolver(name, rdtype) -> answers: for "TXT" a list of strings (each record joined), for "A"/"AAAA"
# a list of addresses, for "MX" a list of (preference, exchange), for "PTR" a list of names. It raises
# DnsTemporaryError when the answer cannot be had now; a missing name is an empty list.
Resolver = Callable[[str, str], list]


DNS_LIFETIME = 5.0


class DnsTemporaryError(Exception):
    pass


def check_smtp_delivery(
    *, raw: bytes, peer_ip: str, helo: str, envelope_sender: str, from_domain: str, resolver: Resolver | None = None
) -> AuthResults:
    """SPF of the connecting IP for the envelope sender (or HELO name for bounces), and every DKIM
    signature of the message, reduced for the From domain."""
    resolver = resolver or system_resolver
    spf_domain = domain_of(envelope_sender) or normalize_domain(helo)
    spf = spf_verdict(_spf_result(peer_ip, envelope_sender, helo, resolver), spf_domain, from_domain)
    return AuthResults(spf=spf, dkim=dkim_verdict(_dkim_results(raw, resolver), from_domain))


def system_resolver(name: str, rdtype: str) -> list:
    """The machine's DNS (dnspython), in the shape `Resolver` describes."""
    import dns.exception
    import dns.resolver

    try:
        answer = dns.resolver.resolve(name, rdtype, lifetime=DNS_LIFETIME, raise_on_no_answer=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as error:
        raise DnsTemporaryError(str(error)) from error
    except dns.exception.DNSException:
        return []
    records = []
    for rdata in answer:
        if rdtype == "TXT":
            records.append(b"".join(rdata.strings).decode("utf-8", "replace"))
        elif rdtype in ("A", "AAAA"):
            records.append(rdata.address)
        elif rdtype == "MX":
            records.append((rdata.preference, rdata.exchange.to_text(omit_final_dot=True)))
        elif rdtype == "PTR":
            records.append(rdata.target.to_text(omit_final_dot=True))
    return records


def _spf_result(peer_ip: str, envelope_sender: str, helo: str, resolver: Resolver) -> str:
    import spf  # pyspf

    class Query(spf.query):
        def dns(self, name, qtype, cnames=None, ignore_void=False):
            try:
                answers = resolver(str(name).rstrip(".").lower(), qtype)
            except DnsTemporaryError as error:
                raise spf.TempError(f"DNS {error}") from error
            if qtype in ("TXT", "SPF"):
                return [(answer.encode(),) for answer in answers]
            return list(answers)

    try:
        query = Query(i=peer_ip, s=envelope_sender or f"postmaster@{helo}", h=helo or "unknown", strict=True)
        result, _code, _explanation = query.check()
    except Exception:  # pyspf raises on odd input (bad IP literal, broken records); never lose the mail
        logger.warning("SPF check of %s for %s failed", peer_ip, envelope_sender, exc_info=True)
        return "temperror"
    return result


def _dkim_results(raw: bytes, resolver: Resolver) -> list[tuple[str | None, str]]:
    import dkim  # dkimpy

    checker = dkim.DKIM(raw, minkey=1024)
    count = sum(1 for name, _value in checker.headers if name.lower() == b"dkim-signature")
    temporary: list[str] = []

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        try:
            answers = resolver(name.decode("ascii", "replace").rstrip(".").lower(), "TXT")
        except DnsTemporaryError as error:
            temporary.append(str(error))
            return None
        return answers[0].encode() if answers else None

    results: list[tuple[str | None, str]] = []
    for index in range(count):
        temporary.clear()
        try:
            passed = checker.verify(idx=index, dnsfunc=dnsfunc)
        except Exception:  # a malformed signature is that signature's failure, never the mail's loss
            logger.info("DKIM signature %s does not verify", index, exc_info=True)
            passed = False
        if temporary:
            results.append((_decode(checker.domain), "temperror"))
        else:
            results.append((_decode(checker.domain), PASS if passed else FAIL))
    return results


def _decode(value) -> str | None:
    if value is None:
        return None
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
