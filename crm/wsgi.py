import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "crm.settings")
application = get_wsgi_application()

# gunicorn runs no system checks: say it in the log when mail credentials use the development key.
from mailsync.checks import warn_at_start  # noqa: E402

warn_at_start()
