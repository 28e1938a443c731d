"""One settings file, driven by environment variables (all documented in README.md)."""

import os
import secrets
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("CRM_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def _dev_secret_key() -> str:
    """A key that survives restarts of `make run` (credentials are encrypted with it)."""
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or _dev_secret_key()
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "crm.apps.CRMAdminConfig",  # django.contrib.admin with the CRM's site (crm/admin_site.py)
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django.contrib.postgres",
    "allauth",
    "allauth.account",
    "django_htmx",
    "django_celery_beat",
    "csp",
    "crm",
    "contacts",
    "deals",
    "leads",
    "projects",
    "mailsync",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
]

ROOT_URLCONF = "crm.urls"
WSGI_APPLICATION = "crm.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "crm.context_processors.navigation",
                "crm.context_processors.mail_attention",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
        conn_max_age=int(os.environ.get("DATABASE_CONN_MAX_AGE", "60")),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web, worker and beat share one SQLite file in `make run`: wait for locks instead of failing.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_USER_MODEL = "crm.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "home"
ACCOUNT_LOGOUT_REDIRECT_URL = "account_login"
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_EMAIL_VERIFICATION = "none"
ACCOUNT_ADAPTER = "crm.adapters.AccountAdapter"
ACCOUNT_LOGOUT_ON_GET = False
# Login throttling (allauth, counted in the cache; its other limits keep their defaults): at most 30
# logins a minute per IP, and after 10 failures a minute from one IP or 5 in 5 minutes for one address,
# further attempts are refused for a while. The Django admin logs in through the same page (crm/admin_site.py).
ACCOUNT_RATE_LIMITS = {"login": "30/m/ip", "login_failed": "10/m/ip,5/5m/key"}
CRM_ALLOW_SIGNUP = env_bool("CRM_ALLOW_SIGNUP", False)

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("CRM_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT", VAR_DIR / "staticfiles"))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
MEDIA_URL = "media/"
MEDIA_ROOT = Path(os.environ.get("DJANGO_MEDIA_ROOT", VAR_DIR / "media"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedStaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = True

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
X_FRAME_OPTIONS = "DENY"
# Behind a TLS-terminating proxy that sets X-Forwarded-Proto: requests count as https (secure cookies,
# https OAuth redirect URIs, the SSL redirect). Only with a proxy that overwrites that header.
if env_bool("DJANGO_SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", False)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # load balancers probe over plain http
SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_SECURE_HSTS_SECONDS", "0"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", False)
SECURE_REFERRER_POLICY = "same-origin"

# Content-Security-Policy on every page (django-csp). No inline script anywhere; inline styles are
# allowed (htmx adds its indicator style, templates use style attributes). Pages that show untrusted
# content set a stricter policy of their own (the thread view, attachment downloads), which the
# middleware leaves as it is.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "frame-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

# The cache holds rate-limit counters (logins, connection tests): shared by every web process in
# production (DJANGO_CACHE_URL=redis://...), in-process memory otherwise.
CACHE_URL = os.environ.get("DJANGO_CACHE_URL", "")
if CACHE_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

EMAIL_BACKEND = os.environ.get("DJANGO_EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = os.environ.get("DJANGO_DEFAULT_FROM_EMAIL", "crm@localhost")

# Celery: Redis (or any kombu URL) in production; with nothing configured an embedded filesystem
# broker under var/ so that `make run` needs no server.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL == "filesystem://":
    _broker_dir = VAR_DIR / "broker"
    for _sub in ("out", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "out"),
        "data_folder_out": str(_broker_dir / "out"),
        "data_folder_processed": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),  # kombu's default is ./control in the cwd
        "store_processed": False,
    }
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Queues (mailsync.sync.tasks): "sync" for new mail, "sync-bulk" for initial and past-email syncs, and
# Celery's default "celery" for the rest (linking, search index, outbox). Every queue needs a worker.
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_TASK_ROUTES = {"mailsync.tasks.sync_account": {"queue": "sync"}}
CELERY_TIMEZONE = TIME_ZONE

# Mail sync
# Fernet keys for credentials at rest, comma-separated; the first encrypts, all decrypt (rotation).
MAILSYNC_ENCRYPTION_KEYS = env_list("MAILSYNC_ENCRYPTION_KEYS")
MAILSYNC_SYNC_INTERVAL = int(os.environ.get("MAILSYNC_SYNC_INTERVAL", "60"))
# How often an open mail list asks whether new conversations arrived (a small notice offers to show them).
# New mail on screen within 5 s of arriving: the watcher stores it in ~0.7 s, an open list asks every 3 s
# (a 204 answer, one indexed query; see docs/operations.md for the measurements and why not server-sent events).
MAILSYNC_INBOX_POLL_SECONDS = max(1, int(os.environ.get("MAILSYNC_INBOX_POLL_SECONDS", "3")))
# Sending (mailsync.sending): the seconds during which "Undo" can stop a message that was sent (0 = off),
# and how often beat looks for mail that is due or was left half-sent by a killed worker.
MAILSYNC_UNDO_SEND_SECONDS = max(0, int(os.environ.get("MAILSYNC_UNDO_SEND_SECONDS", "10")))
MAILSYNC_SEND_SWEEP_INTERVAL = max(5, int(os.environ.get("MAILSYNC_SEND_SWEEP_INTERVAL", "30")))
# Open and click tracking (mailsync.sending.tracking): the address recipients reach the CRM at (the pixel and
# the links of tracked mail point there, so it must be public); at most this many tracking hits per address
# (IP) per window are recorded; a click this soon after delivery is a security scanner's.
CRM_PUBLIC_URL = os.environ.get("CRM_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")
MAILSYNC_TRACKING_RATE_LIMIT = max(1, int(os.environ.get("MAILSYNC_TRACKING_RATE_LIMIT", "60")))
MAILSYNC_TRACKING_RATE_WINDOW = max(1, int(os.environ.get("MAILSYNC_TRACKING_RATE_WINDOW", "60")))
MAILSYNC_TRACKING_SCANNER_SECONDS = max(0, int(os.environ.get("MAILSYNC_TRACKING_SCANNER_SECONDS", "20")))
# Beat (DatabaseScheduler) copies this into the database at start; editable under "Periodic tasks".
CELERY_BEAT_SCHEDULE = {
    "mailsync-enqueue-due-syncs": {
        "task": "mailsync.tasks.enqueue_due_syncs",
        "schedule": float(MAILSYNC_SYNC_INTERVAL),
        "options": {"expires": float(MAILSYNC_SYNC_INTERVAL)},
    },
    # Sends what is due (send later, a task lost with its broker) and recovers mail a killed worker left.
    "mailsync-send-due-mail": {
        "task": "mailsync.tasks.send_due_mail",
        "schedule": float(MAILSYNC_SEND_SWEEP_INTERVAL),
        "options": {"expires": float(MAILSYNC_SEND_SWEEP_INTERVAL)},
    },
}
# IDLE watchers (manage.py sync_mail): a watcher that stops renewing its lease for this long (killed,
# frozen, cut off) loses its accounts to the others; takeover within this + a third of it.
MAILSYNC_WATCHER_LEASE_SECONDS = float(os.environ.get("MAILSYNC_WATCHER_LEASE_SECONDS", "30"))
# Simultaneous IMAP connections to one mailbox (watchers and workers together) on a server without a
# provider preset; the presets carry their provider's cap (Gmail 15, Microsoft 16). Dovecot's default is 10.
MAILSYNC_MAX_CONNECTIONS_PER_MAILBOX = int(os.environ.get("MAILSYNC_MAX_CONNECTIONS_PER_MAILBOX", "10"))
MAILSYNC_CONNECT_TIMEOUT = float(os.environ.get("MAILSYNC_CONNECT_TIMEOUT", "15"))
# Mail servers on private, loopback, link-local or reserved addresses are refused (the add-account form
# must not probe the internal network) unless this is on: `make run` and the test suite set it (local
# test servers); a company whose mail server is on its own network sets it too.
MAILSYNC_ALLOW_PRIVATE_HOSTS = env_bool("MAILSYNC_ALLOW_PRIVATE_HOSTS", False)
# Connection tests (add account, test, re-authenticate) per user within the window, in seconds.
MAILSYNC_CONNECTION_TEST_LIMIT = int(os.environ.get("MAILSYNC_CONNECTION_TEST_LIMIT", "10"))
MAILSYNC_CONNECTION_TEST_WINDOW = int(os.environ.get("MAILSYNC_CONNECTION_TEST_WINDOW", "600"))
# PEM file of a certificate authority trusted for every mail account, in addition to the system CAs (A4:
# a company's self-hosted mail server). Per account, staff can paste one in the admin instead.
MAILSYNC_TRUSTED_CA_FILE = os.environ.get("MAILSYNC_TRUSTED_CA_FILE", "")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}

# Smart BCC (mailsync.inbound). Personal addresses are u-xxxxxxxxxx@MAILSYNC_SMART_BCC_DOMAIN; empty = off.
MAILSYNC_SMART_BCC_DOMAIN = os.environ.get("MAILSYNC_SMART_BCC_DOMAIN", "").strip().lower()
# How long the link that confirms an alternate sender address stays valid.
MAILSYNC_SMART_BCC_CONFIRM_HOURS = int(os.environ.get("MAILSYNC_SMART_BCC_CONFIRM_HOURS", "72"))
# The built-in receiver (`manage.py smart_bcc_server`): listen address, certificate for STARTTLS, size limit.
MAILSYNC_SMART_BCC_SMTP_HOST = os.environ.get("MAILSYNC_SMART_BCC_SMTP_HOST", "0.0.0.0")  # noqa: S104 (an MX)
MAILSYNC_SMART_BCC_SMTP_PORT = int(os.environ.get("MAILSYNC_SMART_BCC_SMTP_PORT", "25"))
MAILSYNC_SMART_BCC_SMTP_HOSTNAME = os.environ.get("MAILSYNC_SMART_BCC_SMTP_HOSTNAME", "")
MAILSYNC_SMART_BCC_TLS_CERT = os.environ.get("MAILSYNC_SMART_BCC_TLS_CERT", "")
MAILSYNC_SMART_BCC_TLS_KEY = os.environ.get("MAILSYNC_SMART_BCC_TLS_KEY", "")
MAILSYNC_SMART_BCC_REQUIRE_TLS = env_bool("MAILSYNC_SMART_BCC_REQUIRE_TLS", False)
MAILSYNC_SMART_BCC_MAX_BYTES = int(os.environ.get("MAILSYNC_SMART_BCC_MAX_BYTES", str(40 * 1024 * 1024)))
# The receiver checks SPF and DKIM itself (DNS lookups); off only where the server has no DNS.
MAILSYNC_SMART_BCC_CHECK_AUTH = env_bool("MAILSYNC_SMART_BCC_CHECK_AUTH", True)

# django-anymail's inbound webhooks (Smart BCC). Each provider's proof of origin; a provider whose proof is
# not configured is refused (403). ANYMAIL_WEBHOOK_SECRET: "user:password" for HTTP basic auth (Postmark,
# Amazon SES; SendGrid without a verification key), comma-separated to rotate.
ANYMAIL = {
    key: value
    for key, value in {
        "WEBHOOK_SECRET": env_list("ANYMAIL_WEBHOOK_SECRET"),
        "MAILGUN_WEBHOOK_SIGNING_KEY": os.environ.get("ANYMAIL_MAILGUN_WEBHOOK_SIGNING_KEY", ""),
        "SENDGRID_INBOUND_WEBHOOK_VERIFICATION_KEY": os.environ.get(
            "ANYMAIL_SENDGRID_INBOUND_WEBHOOK_VERIFICATION_KEY", ""
        ),
        "AMAZON_SES_AUTO_CONFIRM_SNS_SUBSCRIPTIONS": env_bool("ANYMAIL_AMAZON_SES_AUTO_CONFIRM_SNS", True),
    }.items()
    if value not in ("", [])
}
