from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class CrmConfig(AppConfig):
    name = "crm"
    default = True
    verbose_name = "CRM"

    def ready(self) -> None:
        from . import lookups

        lookups.install()


class CRMAdminConfig(admin_apps.AdminConfig):
    """django.contrib.admin with the CRM's admin site: counts-only delete pages, login through allauth."""

    default = False
    default_site = "crm.admin_site.CRMAdminSite"
