"""Conversation pages: included by mailsync/urls.py under /mail/ (URL names live in "mailsync")."""

from django.urls import path

from . import conversation_views as views

urlpatterns = [
    path("threads/<int:pk>/", views.thread_detail, name="thread_detail"),
    path("threads/<int:pk>/preview/", views.thread_preview, name="thread_preview"),
    path("threads/<int:pk>/link/", views.thread_link, name="thread_link"),
    path("threads/<int:pk>/unlink/", views.thread_unlink, name="thread_unlink"),
    path(
        "threads/<int:pk>/suggestions/<int:link_pk>/accept/",
        views.thread_accept_suggestion,
        name="thread_accept_suggestion",
    ),
    path("threads/<int:pk>/create-person/", views.thread_create_person, name="thread_create_person"),
    path("threads/<int:pk>/visibility/", views.thread_visibility, name="thread_visibility"),
    path("timeline/<str:kind>/<int:pk>/", views.record_timeline, name="record_timeline"),
    path("attachments/<int:pk>/", views.attachment_download, name="attachment_download"),
    path("blocked/", views.blocked_list, name="blocked_list"),
    path("blocked/<int:pk>/remove/", views.blocked_remove, name="blocked_remove"),
    path("cleanup/", views.cleanup, name="cleanup"),
]
