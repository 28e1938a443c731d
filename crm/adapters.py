from allauth.account.adapter import DefaultAccountAdapter
from django.conf import settings


class AccountAdapter(DefaultAccountAdapter):
    """Users are created by an admin unless the deployment opens sign-up (CRM_ALLOW_SIGNUP)."""

    def is_open_for_signup(self, request) -> bool:
        return settings.CRM_ALLOW_SIGNUP
