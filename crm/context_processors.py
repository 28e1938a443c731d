from django.http import HttpRequest
from django.urls import reverse

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
    """`nav_items`: (url, label, active). The active item is the one whose URL is the longest prefix of
    this page's path, so a thread (/mail/threads/1/) lights up Inbox and /mail/settings/ Email sync."""
    entries = list(NAVIGATION)
    user = getattr(request, "user", None)
    if getattr(user, "is_company_admin", False):
        entries.append(("mailsync:status", "Mail status"))
    items = [(reverse(url_name), label) for url_name, label in entries]
    path = getattr(request, "path", "")
    matches = [url for url, _ in items if path == url or (url != "/" and path.startswith(url))]
    active = max(matches, key=len, default=None)
    return {"nav_items": [(url, label, url == active) for url, label in items]}


def mail_attention(request: HttpRequest) -> dict:
    """`mail_attention`: the user's mail accounts that need attention, for the banner on every page (O2).

    Lazy, so a partial that does not show the banner costs no query; none at all for anonymous users."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    from django.utils.functional import SimpleLazyObject

    from mailsync.accounts.health import accounts_needing_attention

    return {"mail_attention": SimpleLazyObject(lambda: accounts_needing_attention(user))}
