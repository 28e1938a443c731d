"""The tracking endpoints, mounted at the site's root (crm/urls.py) so that tracked URLs stay short."""

from django.urls import path

from . import tracking_views as views

urlpatterns = [
    path("t/o/<int:pk>/<str:token>.gif", views.tracking_open, name="tracking_open"),
    path("t/c/<int:pk>/<int:index>/<str:token>", views.tracking_click, name="tracking_click"),
]
