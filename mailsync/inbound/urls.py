"""Smart BCC URLs, included under /mail/ in the "mailsync" namespace."""

from django.urls import path

from . import views, webhooks

urlpatterns = [
    path("settings/smart-bcc/", views.smart_bcc_page, name="smart_bcc"),
    path("settings/smart-bcc/new-address/", views.new_address, name="smart_bcc_new_address"),
    path("settings/smart-bcc/senders/add/", views.add_sender, name="smart_bcc_add_sender"),
    path("settings/smart-bcc/senders/<int:pk>/resend/", views.resend_confirmation, name="smart_bcc_resend"),
    path("settings/smart-bcc/senders/<int:pk>/remove/", views.remove_sender, name="smart_bcc_remove_sender"),
    path("settings/smart-bcc/not-filed/clear/", views.clear_not_filed, name="smart_bcc_clear_not_filed"),
    path("smart-bcc/confirm/<str:token>/", views.confirm_sender, name="smart_bcc_confirm"),
    # Inbound webhooks (see webhooks.py). Mailgun posts raw MIME when the URL contains "mime".
    path("smart-bcc/inbound/mailgun/", webhooks.webhook_view("mailgun"), name="smart_bcc_mailgun"),
    path("smart-bcc/inbound/mailgun/mime/", webhooks.webhook_view("mailgun"), name="smart_bcc_mailgun_mime"),
    path("smart-bcc/inbound/postmark/", webhooks.webhook_view("postmark"), name="smart_bcc_postmark"),
    path("smart-bcc/inbound/sendgrid/", webhooks.webhook_view("sendgrid"), name="smart_bcc_sendgrid"),
    path("smart-bcc/inbound/amazon-ses/", webhooks.webhook_view("amazon_ses"), name="smart_bcc_amazon_ses"),
]
