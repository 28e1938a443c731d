"""The composer, drafts and mail on its way out: included by mailsync/urls.py under /mail/ (URL names live
in "mailsync")."""

from django.urls import path

from . import compose_views as views

urlpatterns = [
    path("compose/", views.compose_new, name="compose_new"),
    path("compose/<int:pk>/", views.compose, name="compose"),
    path("compose/<int:pk>/save/", views.compose_save, name="compose_save"),
    path("compose/<int:pk>/send/", views.compose_send, name="compose_send"),
    path("compose/<int:pk>/discard/", views.compose_discard, name="compose_discard"),
    path("compose/<int:pk>/signature/", views.compose_signature, name="compose_signature"),
    path("compose/<int:pk>/preview/", views.compose_preview, name="compose_preview"),
    path("compose/<int:pk>/files/", views.compose_upload, name="compose_upload"),
    path("compose/files/<int:pk>/", views.compose_file, name="compose_file"),
    path("compose/files/<int:pk>/remove/", views.compose_file_remove, name="compose_file_remove"),
    path("compose/check/", views.compose_check, name="compose_check"),
    path("compose/suggest/", views.compose_suggest, name="compose_suggest"),
    path("messages/<int:pk>/reply/", views.compose_reply, name="compose_reply"),
    path("outgoing/<int:pk>/", views.outgoing_detail, name="outgoing_detail"),
    path("outgoing/<int:pk>/undo/", views.outgoing_undo, name="outgoing_undo"),
    path("outgoing/<int:pk>/retry/", views.outgoing_retry, name="outgoing_retry"),
    path("outgoing/<int:pk>/edit/", views.outgoing_edit, name="outgoing_edit"),
    path("drafts/", views.drafts, name="drafts"),
]
