"""Pytest fixtures for the real mail servers of devtools/mailservers.py (its docstring lists them).

Loaded as a pytest plugin from the root conftest (``pytest_plugins = ["tests.mailservers"]``), so every
test module can use these fixtures. Missing Dovecot skips locally and fails in CI (tests.support.require).
"""

from __future__ import annotations

import os
import secrets

import pytest

from devtools.mailservers import (  # noqa: F401  (re-exported for tests)
    DOVEADM,
    DOVECOT,
    MAIL_DOMAIN,
    DovecotServer,
    LineServer,
    MailUser,
    SmtpServer,
    TestCA,
    UserRegistry,
    _free_ports,
    make_message,
)
from tests.support import require


def pytest_configure(config):
    # The implicit-TLS SMTP server requires AUTH with auth_require_tls=False (its connections are TLS from
    # the first byte, which aiosmtpd does not notice); its warning about that is noise here.
    config.addinivalue_line("filterwarnings", "ignore:Requiring AUTH while not requiring TLS:UserWarning")


@pytest.fixture(scope="session")
def mail_user_registry() -> UserRegistry:
    return UserRegistry()


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("test-ca"))


@pytest.fixture(scope="session")
def dovecot(test_ca, mail_user_registry):
    require(os.path.exists(DOVECOT) and os.path.exists(DOVEADM), f"{DOVECOT} is not installed (dovecot-imapd)")
    require(os.geteuid() == 0, "the test Dovecot runs in root mode (mail files owned by 'imaplab')")
    server = DovecotServer(test_ca, mail_user_registry)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def smtp_server(test_ca, mail_user_registry):
    server = SmtpServer(test_ca, mail_user_registry, implicit_tls=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def smtps_server(test_ca, mail_user_registry):
    server = SmtpServer(test_ca, mail_user_registry, implicit_tls=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mail_user(dovecot) -> MailUser:
    """A fresh mailbox; the same login works on Dovecot and on both SMTP servers."""
    return dovecot.add_user()


@pytest.fixture
def closed_port() -> int:
    return _free_ports(1)[0]


@pytest.fixture
def pop3_server():
    server = LineServer(b"+OK POP3 server ready <1896.697170952@mail.test>\r\n")
    yield server
    server.close()


@pytest.fixture
def silent_server():
    server = LineServer(None)
    yield server
    server.close()


@pytest.fixture
def smtp_user(mail_user_registry) -> MailUser:
    """A fresh login for the SMTP servers only (no Dovecot needed)."""
    user = MailUser(name="s" + secrets.token_hex(5), password=secrets.token_urlsafe(12))
    mail_user_registry.add(user)
    return user


@pytest.fixture
def celery_eager():
    """Run Celery tasks inline for this test. (conftest sets CELERY_TASK_ALWAYS_EAGER in the environment,
    but pytest-django has imported the settings by then, so the Celery app would still use the broker.)"""
    from crm.celery import app

    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous
