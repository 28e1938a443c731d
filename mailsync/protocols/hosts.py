"""Which network addresses a mail connection may go to, and opening the connection to exactly those.

A user types a server name (or support staff do in the admin); without a check, "Add account" and the
sync would be a way to probe the company's internal network from the CRM's servers (SSRF). So, for every
connection made for a mail account (connection tests, syncs, the IDLE watcher, SMTP):
- the name is resolved ONCE; every address it resolves to must be public (not private, loopback,
  link-local, shared, multicast, reserved or unspecified; IPv4 inside IPv6 is checked as IPv4), unless
  the operator allows private addresses (settings.MAILSYNC_ALLOW_PRIVATE_HOSTS, for a mail server on
  the company network or on this machine);
- the socket is then opened to one of THOSE addresses, never by resolving the name again, so a DNS
  answer that changes between the check and the connection (DNS rebinding) cannot lead elsewhere. TLS
  still verifies the certificate against the server NAME.

No Django and no ORM here: the protocol modules (imap.py, smtp.py) call `open_connection`, the account
services build the resolver with `checked_resolver(allow_private=...)`.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence

from . import errors

Resolver = Callable[[str, int], tuple[str, ...]]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def is_public_address(value: str) -> bool:
    """True for an address on the public internet (what a mail provider's server has)."""
    try:
        address = ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            address = embedded
    return address.is_global and not (
        address.is_multicast
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_reserved
        or address.is_unspecified
    )


def resolve(host: str, port: int) -> tuple[str, ...]:
    """Every address `host` resolves to for a TCP connection, in the resolver's order (no duplicates).
    Raises socket.gaierror like socket.create_connection would."""
    infos = socket.getaddrinfo(host.strip().strip("[]"), port, type=socket.SOCK_STREAM)
    return tuple(dict.fromkeys(info[4][0] for info in infos))


def checked_resolver(*, allow_private: bool) -> Resolver:
    """The resolver for mail accounts: `resolve`, refusing non-public answers unless `allow_private`."""

    def resolve_checked(host: str, port: int) -> tuple[str, ...]:
        addresses = resolve(host, port)
        if not allow_private:
            refused = [address for address in addresses if not is_public_address(address)]
            if refused:
                # Which address is not said: the answer must not tell what the internal network holds.
                raise errors.PrivateHostRefused(detail=f"{host}:{port}")
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, "no address")
        return addresses

    return resolve_checked


def open_connection(addresses: Sequence[str], port: int, timeout: float | None) -> socket.socket:
    """A TCP connection to the first of `addresses` that answers (already checked: never resolved again)."""
    last_error: OSError | None = None
    for address in addresses:
        try:
            return socket.create_connection((address, port), timeout=timeout)
        except OSError as error:
            last_error = error
    raise last_error or OSError("no address to connect to")
