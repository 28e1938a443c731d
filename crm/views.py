from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.views.decorators.http import require_GET

from contacts.models import Organization, Person
from deals.models import Deal
from deals.selectors import deal_list
from leads.models import Lead
from mailsync.sending.selectors import recent_tracking_activity
from projects.models import Project


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    user = request.user
    # Through the deals selector, so a linked person or organization the user may not see stays hidden.
    my_open_deals = deal_list(user, status=Deal.Status.OPEN).filter(owner=user)[:10]
    counts = {
        "people": Person.objects.visible_to(user).count(),
        "organizations": Organization.objects.visible_to(user).count(),
        "open_deals": Deal.objects.visible_to(user).filter(status=Deal.Status.OPEN).count(),
        "open_leads": Lead.objects.visible_to(user).filter(status=Lead.Status.OPEN).count(),
        "open_projects": Project.objects.visible_to(user).filter(status=Project.Status.OPEN).count(),
    }
    activity = recent_tracking_activity(user)
    return render(request, "crm/home.html", {"my_open_deals": my_open_deals, "counts": counts, "activity": activity})


@login_not_required
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})


@login_not_required
@require_GET
def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers ask for /favicon.ico on pages without an icon link (the Django admin, a file download)."""
    return redirect(static("favicon.svg"), permanent=True)
