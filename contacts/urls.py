from django.urls import path

from . import views

app_name = "contacts"

urlpatterns = [
    path("people/", views.person_list, name="person_list"),
    path("people/new/", views.person_create, name="person_create"),
    path("people/<int:pk>/", views.person_detail, name="person_detail"),
    path("people/<int:pk>/edit/", views.person_edit, name="person_edit"),
    path("people/<int:pk>/delete/", views.person_delete, name="person_delete"),
    path("people/<int:pk>/emails/<int:email_pk>/fine/", views.person_email_fine, name="person_email_fine"),
    path("people/<int:pk>/emails/<int:email_pk>/delete/", views.person_email_remove, name="person_email_remove"),
    path("organizations/", views.organization_list, name="organization_list"),
    path("organizations/new/", views.organization_create, name="organization_create"),
    path("organizations/<int:pk>/", views.organization_detail, name="organization_detail"),
    path("organizations/<int:pk>/edit/", views.organization_edit, name="organization_edit"),
    path("organizations/<int:pk>/delete/", views.organization_delete, name="organization_delete"),
]
