from django.urls import include, path

app_name = "mailsync"

urlpatterns: list = [
    path("", include("mailsync.workspace.conversation_urls")),
    path("", include("mailsync.workspace.inbox_urls")),
    path("", include("mailsync.workspace.compose_urls")),
    path("", include("mailsync.inbound.urls")),
    path("", include("mailsync.sending.template_urls")),
    path("", include("mailsync.workspace.settings_urls")),
]
