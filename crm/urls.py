from django.contrib import admin
from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("favicon.ico", views.favicon, name="favicon"),
    path("accounts/", include("allauth.urls")),
    path("admin/", admin.site.urls),
    path("", include("contacts.urls")),
    path("deals/", include("deals.urls")),
    path("leads/", include("leads.urls")),
    path("projects/", include("projects.urls")),
    path("mail/", include("mailsync.urls")),
    path("", include("mailsync.sending.tracking_urls")),
]
