import os

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "crm.settings")

app = Celery("crm")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_ready.connect
def _warn_about_development_key(**kwargs) -> None:
    # Workers run no system checks (see mailsync/checks.py).
    from mailsync.checks import warn_at_start

    warn_at_start()
