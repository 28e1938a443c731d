from django.http import HttpRequest

NAVIGATION = [
    ("home", "Dashboard"),
    ("contacts:person_list", "People"),
    ("contacts:organization_list", "Organizations"),
    ("deals:deal_list", "Deals"),
    ("leads:lead_list", "Leads"),
    ("projects:project_list", "Projects"),
    ("mailsync:inbox", "Inbox"),
    ("mailsync:settings", "Email sync"),
]


def navigation(request: HttpRequest) -> dict:
    return {"nav_items": NAVIGATION}


def mail_attention(request: HttpRequest) -> dict:
    """`mail_attention`: the user's mail accounts that need attention, for the banner on every page (O2).

    Lazy, so a partial that does not show the banner costs no query; none at all for anonymous users."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    from django.utils.functional import SimpleLazyObject

    from mailsync.accounts.health import accounts_needing_attention

    return {"mail_attention": SimpleLazyObject(lambda: accounts_needing_attention(user))}
