"""Reads for Smart BCC: a user's address and senders, the "Not filed" list, and recipient lookup."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.db.models import QuerySet

from crm.addresses import normalize_domain, normalize_email
from crm.models import User
from mailsync.models import AccountAddress, EmailAccount, SmartBccAddress, SmartBccDelivery, SmartBccSender

NOT_FILED_SHOWN = 50


def smart_bcc_domain() -> str:
    return normalize_domain(settings.MAILSYNC_SMART_BCC_DOMAIN)


def full_address(address: SmartBccAddress) -> str:
    domain = smart_bcc_domain()
    return f"{address.local_part}@{domain}" if domain else ""


def active_address(user: User) -> SmartBccAddress | None:
    return SmartBccAddress.objects.filter(user=user, retired_at__isnull=True).first()


def address_for_recipient(recipient: str) -> SmartBccAddress | None:
    """The Smart BCC address (active or retired) an envelope recipient names, or None.

    The domain must be MAILSYNC_SMART_BCC_DOMAIN; a "+tag" after the local part is ignored (clients and
    users add them to sort mail)."""
    address = normalize_email(recipient)
    domain = smart_bcc_domain()
    if not address or not domain:
        return None
    local_part, _, recipient_domain = address.rpartition("@")
    if recipient_domain != domain:
        return None
    local_part = local_part.split("+", 1)[0]
    return SmartBccAddress.objects.select_related("user").filter(local_part=local_part).first()


@dataclass(frozen=True)
class SenderAddresses:
    """Who may file mail through a user's Smart BCC address (B2)."""

    login: str
    accounts: frozenset[str]
    confirmed: frozenset[str]
    pending: frozenset[str]

    @property
    def accepted(self) -> frozenset[str]:
        return frozenset({self.login} | self.accounts | self.confirmed) - {""}


def sender_addresses(user: User) -> SenderAddresses:
    live_accounts = EmailAccount.objects.filter(user=user).exclude(state=EmailAccount.State.REMOVED)
    accounts = {normalize_email(address) for address in live_accounts.values_list("email_address", flat=True)}
    accounts |= {
        normalize_email(address)
        for address in AccountAddress.objects.filter(account__in=live_accounts).values_list("address", flat=True)
    }
    confirmed, pending = set(), set()
    for address, confirmed_at in SmartBccSender.objects.filter(user=user).values_list("address", "confirmed_at"):
        (confirmed if confirmed_at else pending).add(address)
    return SenderAddresses(
        login=normalize_email(user.email),
        accounts=frozenset(accounts - {""}),
        confirmed=frozenset(confirmed),
        pending=frozenset(pending),
    )


def alternate_senders(user: User) -> QuerySet[SmartBccSender]:
    return SmartBccSender.objects.filter(user=user).order_by("address")


def get_alternate_sender_for_user(user: User, pk: int) -> SmartBccSender:
    """The access check: 404 unless the alternate address is the user's own."""
    from django.shortcuts import get_object_or_404

    return get_object_or_404(SmartBccSender, user=user, pk=pk)


def not_filed(user: User, limit: int = NOT_FILED_SHOWN) -> list[SmartBccDelivery]:
    return list(
        SmartBccDelivery.objects.filter(user=user, status=SmartBccDelivery.Status.NOT_FILED).order_by(
            "-received_at", "-pk"
        )[:limit]
    )


def filed_count(user: User) -> int:
    return SmartBccDelivery.objects.filter(user=user, status=SmartBccDelivery.Status.FILED).count()
