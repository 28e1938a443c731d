"""Certificate authorities a company admin trusts for the company's self-hosted mail servers (SPEC A4).

A company CA applies only to the server names it lists, and to an account only once its owner has
entered the password with that CA in effect (`accounts`): an admin adding a CA later can never make an
existing account's password travel to a server that CA vouches for (see mailsync.accounts.certificates).
"""

from django.conf import settings
from django.db import models

from .accounts import EmailAccount


class TrustedCertificate(models.Model):
    name = models.CharField(max_length=200)
    pem = models.TextField("certificate (PEM)")
    # Space-separated server names: "mail.acme.test" or "*.acme.test" (one level of subdomain).
    hosts = models.CharField("server names", max_length=2000)
    fingerprint = models.CharField("SHA-256 fingerprint", max_length=64, unique=True)
    subject = models.CharField(max_length=500, blank=True)
    not_after = models.DateTimeField("valid until")
    added_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # The accounts whose owner connected (or re-authenticated) with this CA in effect.
    accounts = models.ManyToManyField(EmailAccount, blank=True, related_name="accepted_certificates")

    class Meta:
        ordering = ["name", "pk"]
        verbose_name = "trusted certificate authority"
        verbose_name_plural = "trusted certificate authorities"

    def __str__(self) -> str:
        return self.name

    @property
    def host_list(self) -> list[str]:
        return self.hosts.split()
