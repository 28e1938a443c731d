"""The mail workspace lists, included by mailsync/urls.py under /mail/ (URL names live in "mailsync")."""

from django.urls import path

from . import inbox_views as views

urlpatterns = [
    path("", views.inbox, name="inbox"),
    path("bulk/", views.bulk, name="bulk"),
    path("sent/", views.sent, name="sent"),
    path("reports/", views.delivery_reports, name="delivery_reports"),
    path("archive/", views.archive, name="archive"),
    path("trash/", views.trash, name="trash"),
    path("actions/", views.bulk_action, name="inbox_action"),
    path("news/", views.inbox_news, name="inbox_news"),
]
