"""mailsync/protocols/smtp.py against real aiosmtpd servers (STARTTLS + AUTH, implicit TLS) from
tests/mailservers.py."""

import logging
import time

import pytest

from mailsync.protocols import errors, smtp
from mailsync.protocols.smtp import SmtpConfig

pytestmark = pytest.mark.smtp


def config_for(server, user, **overrides) -> SmtpConfig:
    values = {
        "host": server.host,
        "port": server.port,
        "security": "ssl" if server.implicit_tls else "starttls",
        "username": user.username,
        "secret": user.password,
        "trusted_ca_pem": server.ca.ca_pem,
        "timeout": 5,
    }
    values.update(overrides)
    return SmtpConfig(**values)


def test_starttls_auth_login_and_send(smtp_server, smtp_user):
    client = smtp.connect(config_for(smtp_server, smtp_user))
    try:
        client.sendmail(smtp_user.address, ["bob@example.org"], b"Subject: hi\r\n\r\nHello\r\n")
    finally:
        client.quit()
    received = [m for m in smtp_server.messages if m.login == smtp_user.username]
    assert len(received) == 1
    assert received[0].rcpt_tos == ["bob@example.org"]
    assert b"Hello" in received[0].data


def test_implicit_tls_login(smtps_server, smtp_user):
    smtp.verify_login(config_for(smtps_server, smtp_user))


def test_xoauth2_login(smtp_server, smtp_user):
    smtp.verify_login(config_for(smtp_server, smtp_user, auth_kind="oauth2", secret=smtp_user.access_token))


def test_wrong_password_is_smtp_auth_refused(smtp_server, smtp_user, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(errors.SmtpAuthRefused) as caught:
        smtp.verify_login(config_for(smtp_server, smtp_user, secret="not-the-password-42"))
    error = caught.value
    assert error.code == "smtp_auth_refused" and error.needs_reauth
    assert error.detail.startswith("535")
    assert "not-the-password-42" not in str(error) + error.detail
    assert "not-the-password-42" not in caplog.text


def test_bad_oauth_token_is_oauth_failed(smtp_server, smtp_user):
    with pytest.raises(errors.OAuthFailed):
        smtp.verify_login(config_for(smtp_server, smtp_user, auth_kind="oauth2", secret="expired-token"))


def test_untrusted_certificate_is_refused(smtp_server, smtps_server, smtp_user):
    for server in (smtp_server, smtps_server):
        with pytest.raises(errors.TlsCertificateError) as caught:
            smtp.verify_login(config_for(server, smtp_user, trusted_ca_pem=""))
        assert caught.value.code == "tls_untrusted"
        assert caught.value.protocol == "smtp"


def test_auth_is_not_offered_without_tls(smtp_server, smtp_user):
    # The server requires STARTTLS before AUTH: over plain text there is nothing to log in with.
    with pytest.raises(errors.SmtpAuthUnavailable):
        smtp.verify_login(config_for(smtp_server, smtp_user, security="none"))


def test_implicit_tls_against_a_starttls_port_says_so(smtp_server, smtp_user):
    with pytest.raises(errors.TlsError) as caught:
        smtp.verify_login(config_for(smtp_server, smtp_user, security="ssl"))
    assert "does not speak TLS" in caught.value.message


def test_closed_port_and_silent_server(closed_port, silent_server, smtp_user):
    with pytest.raises(errors.Unreachable):
        smtp.verify_login(SmtpConfig(host="127.0.0.1", port=closed_port, security="starttls", username="x"))
    started = time.monotonic()
    with pytest.raises(errors.ConnectionTimeout):
        smtp.verify_login(
            SmtpConfig(host="127.0.0.1", port=silent_server.port, security="starttls", username="x", timeout=0.5)
        )
    assert time.monotonic() - started < 3


def test_pop3_port_is_not_smtp(pop3_server):
    with pytest.raises(errors.MailError) as caught:
        smtp.verify_login(SmtpConfig(host="127.0.0.1", port=pop3_server.port, security="starttls", username="x"))
    assert caught.value.protocol == "smtp"
    assert "SMTP" in caught.value.message
