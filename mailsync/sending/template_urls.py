"""Settings > Email templates and Signatures, and the composer's template picker: included under /mail/
by mailsync/urls.py (URL names in "mailsync")."""

from django.urls import path

from . import template_views as views

urlpatterns = [
    path("settings/templates/", views.template_list, name="email_templates"),
    path("settings/templates/new/", views.template_create, name="email_template_create"),
    path("settings/templates/<int:pk>/edit/", views.template_edit, name="email_template_edit"),
    path("settings/templates/<int:pk>/duplicate/", views.template_duplicate, name="email_template_duplicate"),
    path("settings/templates/<int:pk>/delete/", views.template_delete, name="email_template_delete"),
    path("settings/templates/sender/", views.sender_details, name="sender_details"),
    path("settings/signatures/", views.signature_list, name="signatures"),
    path("settings/signatures/new/<int:account_pk>/", views.signature_create, name="signature_create"),
    path("settings/signatures/<int:pk>/edit/", views.signature_edit, name="signature_edit"),
    path("settings/signatures/<int:pk>/delete/", views.signature_delete, name="signature_delete"),
    path("settings/signatures/<int:pk>/images/", views.signature_image_upload, name="signature_image_upload"),
    path("signature-images/<int:pk>/", views.signature_image, name="signature_image"),
    path("compose/templates/", views.template_picker, name="template_picker"),
    path("compose/templates/<int:pk>/fill/", views.template_fill, name="template_fill"),
]
