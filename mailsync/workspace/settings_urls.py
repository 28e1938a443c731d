"""Settings > Email sync, the status page and the OAuth2 sign-in: included by mailsync/urls.py under /mail/
(URL names live in "mailsync")."""

from django.urls import path

from . import settings_views as views

urlpatterns = [
    # Settings > Email sync: mail accounts
    path("settings/", views.settings_page, name="settings"),
    path("settings/accounts/status/", views.account_list_status, name="account_list_status"),
    path("settings/accounts/add/", views.account_add, name="account_add"),
    path("settings/accounts/provider-hint/", views.provider_hint, name="provider_hint"),
    path("settings/accounts/<int:pk>/test/", views.account_test, name="account_test"),
    path("settings/accounts/<int:pk>/reauth/", views.account_reauth, name="account_reauth"),
    path("settings/accounts/<int:pk>/pause/", views.account_pause, name="account_pause"),
    path("settings/accounts/<int:pk>/resume/", views.account_resume, name="account_resume"),
    path("settings/accounts/<int:pk>/remove/", views.account_remove, name="account_remove"),
    path("settings/accounts/<int:pk>/sync-now/", views.account_sync_now, name="account_sync_now"),
    path("settings/accounts/<int:pk>/folders/", views.account_folders, name="account_folders"),
    path("settings/accounts/<int:pk>/past-sync/", views.past_sync_start, name="past_sync"),
    path("settings/accounts/<int:pk>/past-sync/progress/", views.past_sync_progress_view, name="past_sync_progress"),
    path("settings/certificates/", views.trusted_certificates, name="trusted_certificates"),
    path("settings/certificates/<int:pk>/remove/", views.trusted_certificate_remove, name="trusted_certificate_remove"),
    path("settings/preferences/", views.mail_preferences, name="preferences"),
    path("status/", views.status_page, name="status"),
    path("oauth/<str:provider>/start/", views.oauth_start, name="oauth_start"),
    path("oauth/callback/", views.oauth_callback, name="oauth_callback"),
]
