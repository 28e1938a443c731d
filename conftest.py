"""Test set-up shared by the whole suite: database choice and the personas.

Personas (DESIGN.md): alice owns records, bob is her teammate (team Sales), charlie is an outsider
(team Support), and admin is a company admin.
"""

import os

import pytest

# Real Dovecot / aiosmtpd / misbehaving servers as fixtures (see tests/mailservers.py).
pytest_plugins = ["tests.mailservers", "tests.smart_bcc_support"]


def pytest_configure(config):
    # Tests run against PostgreSQL; `make test` sets DATABASE_URL. Celery runs tasks inline (the
    # settings are already loaded by pytest-django here, so the Celery app is told directly).
    os.environ.setdefault("CELERY_TASK_ALWAYS_EAGER", "1")
    from crm.celery import app

    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's test databases, and at the end no session of this run left on them: a thread's
    or a child process's connection still open made dropping the database fail ("being accessed by
    other users"). Such a session is named in a warning, then ended."""
    yield
    with django_db_blocker.unblock():
        _end_leftover_sessions()


def _end_leftover_sessions() -> None:
    import time
    import warnings

    from django.db import connection

    if connection.vendor != "postgresql":
        return
    query = (
        "SELECT pid, application_name, backend_start, state, left(query, 120) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    with connection.cursor() as cursor:
        for _attempt in range(20):  # a child process may be exiting: up to 2 s
            cursor.execute(query)
            leftover = cursor.fetchall()
            if not leftover:
                return
            time.sleep(0.1)
        for row in leftover:
            warnings.warn(f"test database session left open at the end of the run, ended: {row}", stacklevel=1)
        cursor.execute(f"SELECT pg_terminate_backend(pid) FROM ({query}) AS leftover")  # noqa: S608 (constant)


@pytest.fixture(autouse=True)
def allow_private_mail_hosts(settings):
    # The suite's mail servers (Dovecot, aiosmtpd, misbehaving servers) listen on 127.0.0.1, which the
    # product refuses by default (mailsync/hosts.py). Tests of that refusal turn it off again.
    settings.MAILSYNC_ALLOW_PRIVATE_HOSTS = True


@pytest.fixture(autouse=True)
def empty_cache():
    # Rate-limit counters (logins, connection tests) live in the cache: one test's attempts must not
    # throttle the next.
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    # PBKDF2 dominates the run time of persona-heavy tests; its strength is not what they test.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def sales_team(db):
    from tests.factories import TeamFactory

    return TeamFactory(name="Sales")


@pytest.fixture
def alice(sales_team):
    from tests.factories import UserFactory

    return UserFactory(email="alice@company.test", first_name="Alice", last_name="Owner", team=sales_team)


@pytest.fixture
def bob(sales_team):
    from tests.factories import UserFactory

    return UserFactory(email="bob@company.test", first_name="Bob", last_name="Teammate", team=sales_team)


@pytest.fixture
def charlie(db):
    from tests.factories import TeamFactory, UserFactory

    return UserFactory(
        email="charlie@company.test", first_name="Charlie", last_name="Outsider", team=TeamFactory(name="Support")
    )


@pytest.fixture
def admin_user(db):
    from crm.models import User
    from tests.factories import UserFactory

    return UserFactory(
        email="admin@company.test", first_name="Ada", last_name="Admin", role=User.Role.ADMIN, is_staff=True
    )


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


def client_for(user):
    from django.test import Client

    c = Client()
    c.force_login(user)
    return c


# --- Browser tests: Playwright (Python) driving Debian's /usr/bin/chromium, never a downloaded browser.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"]


@pytest.fixture(scope="session")
def chromium():
    from tests.support import require

    require(os.path.exists(CHROMIUM), f"{CHROMIUM} is not installed (apt-get install chromium)")
    # Playwright's sync API runs an event loop in this thread; Django's ORM must still be usable here.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium, live_server):
    context = chromium.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    page = context.new_page()
    yield page
    context.close()


def browser_login(page, user, password=None):
    """Log in through the real allauth form."""
    from tests.factories import PASSWORD

    page.goto("/accounts/login/")
    page.fill("input[name=login]", user.email)
    page.fill("input[name=password]", password or PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/accounts/login" not in url)
