"""The mail workspace: Inbox, Bulk, Sent, Archive and Trash of the user's own mail, with filters, search and
bulk actions.

Thin views: filters from the query string -> selectors (mailsync.inbox) -> render; bulk actions are
POST only -> mailsync.actions. A non-boosted htmx request (search box, filters, pages) gets only the
results fragment. Every active filter is shown as a chip that says how many conversations it hides
and how to remove it (F2); the mailbox tabs show the totals.
"""

from urllib.parse import urlencode, urlsplit

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.cache import patch_cache_control, patch_vary_headers
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from crm.params import parse_id
from crm.records import is_partial_request, live_filter_fields
from mailsync.models import EmailThread, Mailbox
from mailsync.sending import selectors as sending_selectors

from . import actions
from . import inbox as lists  # the view below is called `inbox`
from .inbox import LINKED, MAILBOXES, UNLINKED, InboxFilters

MAX_QUERY_LENGTH = 200
# The query-string names of a list's filters: a conversation opened from a list carries them (with
# `in` for the list and `page`), so the thread page shows the same list beside it and steps through it.
LIST_PARAMS = ("q", "unread", "account", "folder", "linked", "contact")
# Where a conversation opened from outside the lists is read: the first of these that holds it.
READING_ORDER = (Mailbox.INBOX, Mailbox.BULK, Mailbox.ARCHIVE, Mailbox.SENT, Mailbox.REPORTS, Mailbox.TRASH)
URL_NAMES = {
    Mailbox.INBOX: "mailsync:inbox",
    Mailbox.BULK: "mailsync:bulk",
    Mailbox.SENT: "mailsync:sent",
    Mailbox.REPORTS: "mailsync:delivery_reports",
    Mailbox.ARCHIVE: "mailsync:archive",
    Mailbox.TRASH: "mailsync:trash",
}


class InboxFilterForm(forms.Form):
    """The search box and filters above a list; each control refreshes only the results (htmx).

    Unknown or invalid values are ignored rather than reported: they come from URLs."""

    q = forms.CharField(
        required=False,
        max_length=MAX_QUERY_LENGTH,
        label="Search",
        widget=forms.SearchInput(attrs={"placeholder": "Search subject, text, people…", "autocomplete": "off"}),
    )
    unread = forms.BooleanField(required=False, label="Unread only")
    account = forms.TypedChoiceField(required=False, coerce=int, empty_value=None, label="Account")
    folder = forms.TypedChoiceField(required=False, coerce=int, empty_value=None, label="Folder")
    linked = forms.ChoiceField(
        required=False,
        label="Linked",
        choices=[("", "Linked or not"), (LINKED, "Linked to a record"), (UNLINKED, "Not linked to a record")],
    )
    contact = forms.BooleanField(required=False, label="From an existing contact")

    # Filters that make no sense in a list: in Sent, everything is read and written by the user.
    NOT_IN = {Mailbox.SENT: ("unread", "contact")}

    def __init__(self, data, *, results_url: str, accounts: list, folders: list, mailbox: str = ""):
        super().__init__(data)
        for name in self.NOT_IN.get(mailbox, ()):
            del self.fields[name]
        self.accounts = {account.pk: account for account in accounts}
        self.folders = {folder.pk: folder for folder in folders}
        self.fields["account"].choices = [("", "All accounts")] + [(a.pk, a.email_address) for a in accounts]
        several = len(accounts) > 1
        self.fields["folder"].choices = [("", "All folders")] + [
            (f.pk, f"{f.name} ({f.account.email_address})" if several else f.name) for f in folders
        ]
        self.show_accounts = several
        live_filter_fields(self, results_url)

    def filters(self) -> InboxFilters:
        self.is_valid()
        data = self.cleaned_data  # only the fields that were valid
        return InboxFilters(
            unread=bool(data.get("unread")),
            account=self.accounts.get(data.get("account")),
            folder=self.folders.get(data.get("folder")),
            linked=data.get("linked") or "",
            from_contact=bool(data.get("contact")),
            query=(data.get("q") or "").strip(),
        )


def _url_without(request: HttpRequest, *names: str) -> str:
    """This list's URL without the given parameters (and back on page 1)."""
    kept = [(key, value) for key, value in request.GET.items() if key not in names and key != "page" and value]
    return request.path + (f"?{urlencode(kept)}" if kept else "")


def _chips(request: HttpRequest, filters: InboxFilters) -> list[dict]:
    """One chip per active filter, with the URL that removes it."""
    chips = []
    if filters.query:
        chips.append({"label": f"Search: “{filters.query}”", "remove_url": _url_without(request, "q")})
    if filters.unread:
        chips.append({"label": "Only unread", "remove_url": _url_without(request, "unread")})
    if filters.account is not None:
        chips.append(
            {"label": f"Account: {filters.account.email_address}", "remove_url": _url_without(request, "account")}
        )
    if filters.folder is not None:
        chips.append({"label": f"Folder: {filters.folder.name}", "remove_url": _url_without(request, "folder")})
    if filters.linked:
        label = "Linked to a record" if filters.linked == LINKED else "Not linked to a record"
        chips.append({"label": label, "remove_url": _url_without(request, "linked")})
    if filters.from_contact:
        chips.append({"label": "From an existing contact", "remove_url": _url_without(request, "contact")})
    return chips


def _page_number(request: HttpRequest) -> int:
    number = parse_id(request.GET.get("page", "1"))
    return number if number is not None and 0 < number < 10**6 else 1


def _list_params(query: QueryDict, page_number: int) -> list[tuple[str, str]]:
    params = [(name, query[name]) for name in LIST_PARAMS if query.get(name)]
    if page_number > 1:
        params.append(("page", str(page_number)))
    return params


def reading_query(query: QueryDict, mailbox: str, page_number: int = 1) -> str:
    """The query string of a conversation opened from a list: `in`, the list's filters and page."""
    return urlencode([("in", mailbox), *_list_params(query, page_number)])


def _mailbox_page(request: HttpRequest, mailbox: str) -> HttpResponse:
    user = request.user
    partial = is_partial_request(request)
    accounts = lists.account_choices(user)
    # The filter controls are outside the fragment: a partial needs only what the filters refer to.
    folders = lists.folder_choices(user)
    form = InboxFilterForm(request.GET, results_url=request.path, accounts=accounts, folders=folders, mailbox=mailbox)
    filters = form.filters()
    counts = lists.mailbox_counts(user)
    total = counts[mailbox].total
    page = lists.inbox_page(user, mailbox, filters, page=_page_number(request), count=None if filters.active else total)
    context = {
        "mailbox": mailbox,
        "mailbox_label": MAILBOXES[mailbox],
        "mailbox_url": reverse(URL_NAMES[mailbox]),
        "tabs": [
            {"mailbox": key, "label": label, "url": reverse(URL_NAMES[key]), "count": counts[key]}
            for key, label in MAILBOXES.items()
        ],
        "counts": counts,
        "total": total,
        "hidden": None if page.capped else max(0, total - page.count),
        "page": page,
        "filters": filters,
        "chips": _chips(request, filters),
        "clear_url": request.path,
        "filter_form": form,
        "actions": [(action, actions.LABELS[action]) for action in actions.allowed_actions(mailbox)],
        "next_url": request.get_full_path(),
        "has_accounts": bool(accounts),
        "thread_query": reading_query(request.GET, mailbox, page.number),
        # "Select all N matching": the list's filters go with the bulk form (see bulk_action).
        "list_params": _list_params(request.GET, 1),
    }
    if not partial:
        context["drafts_count"] = sending_selectors.drafts_for(user).count()
        if mailbox == Mailbox.SENT:
            # Mail on its way out or that failed, above what was sent (with Undo / Retry on its page).
            context["outbox"] = sending_selectors.outbox_for(user).order_by("-updated_at")[:20]
        news_query = urlencode({"mailbox": mailbox, "since": lists.news_cursor()})
        context["news_url"] = f"{reverse('mailsync:inbox_news')}?{news_query}"
        context["poll_seconds"] = settings.MAILSYNC_INBOX_POLL_SECONDS
    template = "mailsync/inbox/_results.html" if partial else "mailsync/inbox/mailbox.html"
    response = render(request, template, context)
    # The same URL answers with a page or a fragment: caches must keep them apart.
    patch_vary_headers(response, ["HX-Request"])
    return response


def reading_context(request: HttpRequest, thread: EmailThread) -> dict:
    """What the thread page needs to act as the reading pane of the list it was opened from (`?in=`):
    that list (same filters and page) to show beside it, the previous and next conversations, the
    list's actions for this thread and where each leads. Empty for a thread that is not the user's
    own or not in that list (a colleague's shared mail opened from a timeline)."""
    user = request.user
    if thread.owner_id != user.pk:
        return {}
    in_lists = set(lists.own_entries(user).filter(thread=thread).values_list("mailbox", flat=True))
    mailbox = request.GET.get("in", "")
    query = request.GET
    if mailbox not in in_lists:
        # Opened from elsewhere (a timeline, a bookmark) or no longer in that list: the list it is in.
        mailbox = next((key for key in READING_ORDER if key in in_lists), "")
        query = QueryDict()
    if not mailbox:
        return {}
    form = InboxFilterForm(
        query,
        results_url=reverse(URL_NAMES[mailbox]),
        accounts=lists.account_choices(user),
        folders=lists.folder_choices(user),
        mailbox=mailbox,
    )
    filters = form.filters()
    page_number = _page_number(request) if query else 1
    page = lists.inbox_page(user, mailbox, filters, page=page_number)
    newer, older = lists.neighbours(user, mailbox, filters, thread.pk)
    on_page = {row.entry.thread_id for row in page.rows}

    def thread_url(thread_id: int | None, step: int) -> str:
        """A neighbour's URL; one not on this page is on the next (step 1) or previous (-1) page."""
        if thread_id is None:
            return ""
        number = page.number if thread_id in on_page else max(1, page.number + step)
        return f"{reverse('mailsync:thread_detail', args=[thread_id])}?{reading_query(query, mailbox, number)}"

    list_params = _list_params(query, page.number)
    list_url = reverse(URL_NAMES[mailbox]) + (f"?{urlencode(list_params)}" if list_params else "")
    newer_url, older_url = thread_url(newer, -1), thread_url(older, 1)
    thread_actions = [
        {
            "action": action,
            "label": actions.LABELS[action],
            # Archiving or deleting moves on to the next conversation; "unread" goes back to the list
            # (opening the thread again would read it).
            "next": list_url if action == actions.UNREAD else (older_url or newer_url or list_url),
        }
        for action in (actions.ARCHIVE, actions.MOVE_TO_INBOX, actions.DELETE, actions.UNREAD)
        if action in actions.allowed_actions(mailbox)
    ]
    return {
        "reading_mailbox": mailbox,
        "reading_label": MAILBOXES[mailbox],
        "reading_page": page,
        "reading_query": reading_query(query, mailbox, page.number),
        "list_url": list_url,
        "newer_url": newer_url,
        "older_url": older_url,
        "thread_actions": thread_actions,
    }


@require_GET
def inbox(request: HttpRequest) -> HttpResponse:
    return _mailbox_page(request, Mailbox.INBOX)


@require_GET
def bulk(request: HttpRequest) -> HttpResponse:
    """Newsletters and list mail (List-Id, List-Unsubscribe, Precedence: bulk), out of the Inbox."""
    return _mailbox_page(request, Mailbox.BULK)


@require_GET
def sent(request: HttpRequest) -> HttpResponse:
    return _mailbox_page(request, Mailbox.SENT)


@require_GET
def delivery_reports(request: HttpRequest) -> HttpResponse:
    """Bounce reports (delivery failures, delays), out of the Inbox; what they say shows on the sent mail."""
    return _mailbox_page(request, Mailbox.REPORTS)


@require_GET
def archive(request: HttpRequest) -> HttpResponse:
    return _mailbox_page(request, Mailbox.ARCHIVE)


@require_GET
def trash(request: HttpRequest) -> HttpResponse:
    return _mailbox_page(request, Mailbox.TRASH)


@require_GET
def inbox_news(request: HttpRequest) -> HttpResponse:
    """The open list's question "anything new?" (htmx poll, every MAILSYNC_INBOX_POLL_SECONDS): a notice
    with a link that shows the new conversations, or 204 No Content (htmx swaps nothing). One indexed
    query on the messages stored since the page was rendered; counts only the user's own visible mail."""
    mailbox = request.GET.get("mailbox", "")
    since = parse_id(request.GET.get("since", ""))
    if mailbox not in MAILBOXES or since is None:
        return HttpResponse("Unknown list or position.", status=400, content_type="text/plain")
    if not is_partial_request(request):
        return redirect(URL_NAMES[mailbox])
    count = lists.new_conversations(request.user, mailbox, since)
    if not count:
        # The usual answer, every few seconds per open list: no body, nothing to render or swap.
        response = HttpResponse(status=204)
        patch_cache_control(response, private=True, no_store=True)
        return response
    show_url = reverse(URL_NAMES[mailbox])
    current = urlsplit(getattr(request.htmx, "current_url_abs_path", None) or "")
    if current.path == show_url:  # the list as the user sees it (same filters), from its first page
        query = QueryDict(current.query, mutable=True)
        query.pop("page", None)
        show_url = f"{show_url}?{query.urlencode()}" if query else show_url
    return render(
        request,
        "mailsync/inbox/_news.html",
        {"count": count, "show_url": show_url, "mailbox_label": MAILBOXES[mailbox]},
    )


def _next_url(request: HttpRequest, mailbox: str) -> str:
    candidate = request.POST.get("next", "")
    if candidate and url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return reverse(URL_NAMES.get(mailbox, "mailsync:inbox"))


def _refused_text(refused: int, mailbox: str) -> str:
    noun = "conversation was" if refused == 1 else "conversations were"
    return f"{refused} selected {noun} not changed: they are not yours, or no longer in {MAILBOXES[mailbox]}."


def _every_matching_thread(request: HttpRequest, mailbox: str) -> list[int]:
    """scope=all: every conversation of the list with the filters posted along (LIST_PARAMS)."""
    user = request.user
    form = InboxFilterForm(
        request.POST,
        results_url=reverse(URL_NAMES[mailbox]),
        accounts=lists.account_choices(user),
        folders=lists.folder_choices(user),
        mailbox=mailbox,
    )
    return lists.matching_thread_ids(user, mailbox, form.filters())


@require_POST
def bulk_action(request: HttpRequest) -> HttpResponse:
    """POST mailbox, action, thread (repeated), next; or scope=all with the list's filters (LIST_PARAMS):
    every conversation that matches, not only the page, in batches. Delete asks for confirmation first (S6)."""
    mailbox = request.POST.get("mailbox", "")
    action = request.POST.get("action", "")
    thread_ids = request.POST.getlist("thread")
    next_url = _next_url(request, mailbox)
    if mailbox not in MAILBOXES or action not in actions.allowed_actions(mailbox):
        messages.error(request, "This action is not available here.")
        return redirect(next_url)
    scope_all = request.POST.get("scope") == "all"
    if scope_all:
        thread_ids = _every_matching_thread(request, mailbox)
        if not thread_ids:
            messages.error(request, f"No conversation in {MAILBOXES[mailbox]} matches these filters any more.")
            return redirect(next_url)
    if not thread_ids:
        messages.error(request, "Select at least one conversation first.")
        return redirect(next_url)
    if action == actions.DELETE and request.POST.get("confirm") != "yes":
        selection = actions.preview(request.user, mailbox=mailbox, action=action, thread_ids=thread_ids)
        if not selection.thread_ids:
            messages.error(request, _refused_text(selection.refused, mailbox))
            return redirect(next_url)
        response = render(
            request,
            "mailsync/inbox/confirm_delete.html",
            {
                "selection": selection,
                "mailbox": mailbox,
                "mailbox_label": MAILBOXES[mailbox],
                "next_url": next_url,
                "warning": actions.DELETE_WARNING,
                "on_server": actions.applies_on_server(request.user),
                "scope_all": scope_all,
                "list_params": [(name, request.POST[name]) for name in LIST_PARAMS if request.POST.get(name)],
            },
        )
        # A boosted form would put /mail/actions/ in the address bar, where a reload is a GET (405).
        response["HX-Push-Url"] = "false"
        return response
    try:
        if scope_all:
            result = actions.apply_in_batches(user=request.user, mailbox=mailbox, action=action, thread_ids=thread_ids)
        else:
            result = actions.apply_bulk_action(user=request.user, mailbox=mailbox, action=action, thread_ids=thread_ids)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
        return redirect(next_url)
    if result.threads:
        messages.success(request, result.summary())
    if result.refused:
        messages.error(request, _refused_text(result.refused, mailbox))
    return redirect(next_url)
