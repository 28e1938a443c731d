"""mailsync/protocols/imap.py against a real Dovecot (tests/mailservers.py): TLS, login, classified errors,
primitives."""

import datetime as dt
import imaplib
import io
import logging
import random
import threading
import time

import pytest
from imapclient import IMAPClient
from imapclient import exceptions as imap_exc

from mailsync.protocols import errors
from mailsync.protocols import imap as imap_module
from mailsync.protocols.imap import Folder, ImapConfig, assign_roles, connect, parse_uid_set
from tests.mailservers import LineServer, make_message

pytestmark = pytest.mark.dovecot


def config_for(dovecot, user, **overrides) -> ImapConfig:
    values = {
        "host": dovecot.host,
        "port": dovecot.imaps_port,
        "security": "ssl",
        "username": user.username,
        "secret": user.password,
        "trusted_ca_pem": dovecot.ca_pem,
        "timeout": 5,
    }
    values.update(overrides)
    return ImapConfig(**values)


# -- connecting and logging in


@pytest.mark.parametrize(
    ("security", "port_attr"),
    [("ssl", "imaps_port"), ("starttls", "imap_port"), ("none", "imap_port")],
)
def test_login_works_over_implicit_tls_starttls_and_plain(dovecot, mail_user, security, port_attr):
    config = config_for(dovecot, mail_user, security=security, port=getattr(dovecot, port_attr))
    with connect(config) as session:
        assert {"IDLE", "MOVE", "SPECIAL-USE", "CONDSTORE", "QRESYNC"} <= session.capabilities
        assert session.qresync_enabled and session.condstore_enabled
        assert [f.name for f in session.list_folders() if f.role == "inbox"] == ["INBOX"]


def test_local_part_login_and_xoauth2_token_login(dovecot, mail_user):
    with connect(config_for(dovecot, mail_user, username=mail_user.name)) as session:
        session.noop()
    oauth = config_for(dovecot, mail_user, auth_kind="oauth2", secret=mail_user.access_token)
    with connect(oauth) as session:
        assert session.select("INBOX").exists == 0


def test_revoked_oauth_token_is_classified_as_oauth_failure(dovecot, mail_user):
    config = config_for(dovecot, mail_user, auth_kind="oauth2", secret="revoked-token-xyz")
    with pytest.raises(errors.OAuthFailed) as caught:
        connect(config)
    assert caught.value.code == "oauth_failed"
    assert caught.value.needs_reauth
    assert "revoked-token-xyz" not in str(caught.value) + caught.value.detail


@pytest.mark.parametrize(("security", "port_attr"), [("ssl", "imaps_port"), ("starttls", "imap_port")])
def test_certificate_from_an_unknown_ca_is_refused_by_default(dovecot, mail_user, security, port_attr):
    config = config_for(dovecot, mail_user, security=security, port=getattr(dovecot, port_attr), trusted_ca_pem="")
    with pytest.raises(errors.TlsCertificateError) as caught:
        connect(config)
    error = caught.value
    assert error.code == "tls_untrusted"
    assert "administrator can trust" in error.fix
    assert not error.needs_reauth


def test_self_signed_certificate_is_refused_even_with_a_trusted_ca(dovecot, mail_user):
    config = config_for(dovecot, mail_user, host=dovecot.selfsigned_host)
    with pytest.raises(errors.TlsCertificateError) as caught:
        connect(config)
    assert caught.value.code == "tls_self_signed"
    assert "self-signed" in caught.value.message


def test_expired_certificate_is_refused(dovecot, mail_user):
    with pytest.raises(errors.TlsCertificateError) as caught:
        connect(config_for(dovecot, mail_user, host=dovecot.expired_host))
    assert caught.value.code == "tls_expired"


def test_certificate_for_another_name_is_a_hostname_mismatch(dovecot, mail_user):
    with pytest.raises(errors.TlsCertificateError) as caught:
        connect(config_for(dovecot, mail_user, host=dovecot.mismatch_host))
    assert caught.value.code == "tls_hostname_mismatch"
    assert "different name" in caught.value.message


def test_invalid_trusted_ca_pem_is_a_clear_tls_error(dovecot, mail_user):
    with pytest.raises(errors.TlsError) as caught:
        connect(config_for(dovecot, mail_user, trusted_ca_pem="-----BEGIN CERTIFICATE-----\nnope\n"))
    assert "not a valid PEM" in caught.value.message


def test_wrong_password_is_auth_failed_with_a_fix_and_no_secret(dovecot, mail_user, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "Wrong-Secret-4711"
    with pytest.raises(errors.AuthFailed) as caught:
        connect(config_for(dovecot, mail_user, secret=wrong))
    error = caught.value
    assert type(error) is errors.AuthFailed
    assert error.code == "auth_failed" and error.needs_reauth
    assert "app password" in error.fix
    assert wrong not in str(error) + error.detail + error.message + error.fix
    assert wrong not in caplog.text
    assert mail_user.password not in caplog.text


@pytest.mark.parametrize(
    ("server_says", "expected"),
    [
        (
            "[ALERT] Application-specific password required: https://support.google.com/accounts/answer/185833",
            errors.AppPasswordRequired,
        ),
        (
            "[ALERT] Please log in via your web browser: https://support.google.com/mail/accounts",
            errors.AppPasswordRequired,
        ),
        (
            "[ALERT] Your account is not enabled for IMAP use. Please visit your Gmail settings page.",
            errors.ImapDisabled,
        ),
    ],
)
def test_provider_refusals_are_classified(dovecot, server_says, expected):
    user = dovecot.add_user(refuse_login=server_says)  # a correct password, answered NO with that text
    with pytest.raises(expected) as caught:
        connect(config_for(dovecot, user))
    assert type(caught.value) is expected
    assert server_says.split(":")[0] in caught.value.detail  # the server's words are kept for support
    assert caught.value.fix


def test_successful_login_logs_no_password(dovecot, mail_user, caplog):
    caplog.set_level(logging.DEBUG)
    with connect(config_for(dovecot, mail_user, security="none", port=dovecot.imap_port)) as session:
        session.select("INBOX")
    assert "LOGIN" in caplog.text  # imapclient did log the command, redacted
    assert mail_user.password not in caplog.text


def test_closed_port_is_unreachable_wrong_port(closed_port):
    config = ImapConfig(host="127.0.0.1", port=closed_port, username="x", secret="y", timeout=5)
    started = time.monotonic()
    with pytest.raises(errors.Unreachable) as caught:
        connect(config)
    assert time.monotonic() - started < 2
    assert "wrong port" in caught.value.message
    assert caught.value.transient


def test_unknown_host_name_is_unreachable():
    with pytest.raises(errors.Unreachable) as caught:
        connect(ImapConfig(host="imap.does-not-exist.invalid", port=993, username="x", secret="y", timeout=5))
    assert "could not be found" in caught.value.message


def test_pop3_greeting_says_pop3_is_not_supported(pop3_server):
    config = ImapConfig(host=pop3_server.host, port=pop3_server.port, security="none", username="x", secret="y")
    with pytest.raises(errors.Pop3Only) as caught:
        connect(config)
    assert caught.value.code == "pop3_only"
    assert isinstance(caught.value, errors.ImapDisabled)
    assert "POP3 is not supported" in caught.value.message


def test_silent_server_times_out_quickly(silent_server):
    config = ImapConfig(host=silent_server.host, port=silent_server.port, username="x", secret="y", timeout=0.5)
    started = time.monotonic()
    with pytest.raises(errors.ConnectionTimeout) as caught:
        connect(config)
    assert time.monotonic() - started < 3
    assert caught.value.code == "timeout"


def test_starttls_required_but_not_offered():
    server = LineServer(b"* OK no STARTTLS here\r\n", imap_capabilities="IMAP4rev1 AUTH=PLAIN")
    try:
        config = ImapConfig(host=server.host, port=server.port, security="starttls", username="x", secret="y")
        with pytest.raises(errors.StartTlsUnavailable) as caught:
            connect(config)
    finally:
        server.close()
    assert "would not be encrypted" in caught.value.message


def test_tls_against_a_plain_port_says_so(dovecot, mail_user):
    config = config_for(dovecot, mail_user, security="ssl", port=dovecot.imap_port)
    with pytest.raises(errors.TlsError) as caught:
        connect(config)
    assert "does not speak TLS" in caught.value.message


# -- folders


def test_list_folders_roles_names_and_noselect(dovecot, mail_user):
    dovecot.create_folder(mail_user, "Projekte/Überweisungen & Ärger")
    dovecot.create_folder(mail_user, "Clients")
    with connect(config_for(dovecot, mail_user)) as session:
        folders = {f.name: f for f in session.list_folders()}
    roles = {f.role: name for name, f in folders.items() if f.role}
    assert roles == {
        "inbox": "INBOX",
        "sent": "Sent",
        "trash": "Trash",
        "drafts": "Drafts",
        "archive": "Archive",
        "junk": "Junk",
    }
    assert "Projekte/Überweisungen & Ärger" in folders  # decoded from modified UTF-7
    assert folders["Projekte/Überweisungen & Ärger"].delimiter == "/"
    assert folders["Clients"].role == "" and not folders["Clients"].noselect


def test_roles_fall_back_to_localized_names_without_special_use():
    def folder(name, flags=(), delimiter="/"):
        return Folder(name=name, delimiter=delimiter, role="", flags=flags, noselect=False)

    folders = assign_roles(
        [
            folder("INBOX"),
            folder("Gesendet"),
            folder("Papierkorb"),
            folder("Entwürfe"),
            folder("Spam"),
            folder("Kunden"),
        ]
    )
    assert [f.role for f in folders] == ["inbox", "sent", "trash", "drafts", "junk", ""]
    outlook = assign_roles([folder("Sent Items"), folder("Deleted Items"), folder("Junk Email")])
    assert [f.role for f in outlook] == ["sent", "trash", "junk"]
    gmail = assign_roles([folder("[Gmail]/Sent Mail"), folder("[Gmail]/All Mail"), folder("[Gmail]/Trash")])
    assert [f.role for f in gmail] == ["sent", "all", "trash"]
    courier = assign_roles([folder("INBOX.Sent Messages", delimiter="."), folder("INBOX.Wysłane", delimiter=".")])
    assert [f.role for f in courier] == ["sent", ""]  # one folder per role
    others = assign_roles([folder("Envoyés"), folder("Posta inviata", flags=("\\Sent",))])
    assert [f.role for f in others] == ["", "sent"]  # a SPECIAL-USE flag wins over a name


def test_folder_status_matches_the_server(dovecot, mail_user):
    for subject in ("a", "b", "c"):
        dovecot.append(mail_user, make_message(subject))
    expected = dovecot.folder_status(mail_user)
    with connect(config_for(dovecot, mail_user)) as session:
        status = session.folder_status("INBOX")
    assert (status.messages, status.uidnext, status.uidvalidity, status.highestmodseq) == (
        3,
        expected["uidnext"],
        expected["uidvalidity"],
        expected["highestmodseq"],
    )


def test_folder_statuses_in_one_write_match_folder_status(dovecot, mail_user, monkeypatch):
    names = ["INBOX", "Sent", "Entwürfe", 'Say "hi" \\ there']
    for name in names[2:]:
        dovecot.create_folder(mail_user, name)
    for subject in ("a", "b", "c"):
        dovecot.append(mail_user, make_message(subject))
    dovecot.append(mail_user, make_message("sent"), folder="Sent")
    dovecot.append(mail_user, make_message("draft"), folder="Entwürfe")
    with connect(config_for(dovecot, mail_user)) as session:
        expected = {name: session.folder_status(name) for name in names}
        imap = session._client._imap
        writes = []
        real_send = imap.send
        monkeypatch.setattr(imap, "send", lambda data: (writes.append(bytes(data)), real_send(data))[1])
        seen_in_meanwhile = []
        statuses = session.folder_statuses(
            [*names, "No such folder", "INBOX"], meanwhile=lambda: seen_in_meanwhile.append(len(writes))
        )
        assert len(writes) == 1 and writes[0].count(b" STATUS ") == 5  # INBOX asked once
        assert seen_in_meanwhile == [1]  # after sending, once
        assert {name: statuses[name] for name in names} == expected
        assert (expected["INBOX"].messages, expected["Entwürfe"].messages) == (3, 1)
        assert isinstance(statuses["No such folder"], errors.FolderNotFound)
        assert session.select("INBOX", readonly=True).exists == 3  # every answer was read


def test_folder_statuses_in_several_writes_and_a_failing_meanwhile(dovecot, mail_user, monkeypatch):
    monkeypatch.setattr(imap_module, "STATUS_PIPELINE", 2)
    names = ["INBOX", "Sent", "Trash", "Drafts", "Junk"]
    with connect(config_for(dovecot, mail_user)) as session:
        expected = {name: session.folder_status(name) for name in names}

        def fail():
            raise ValueError("the database is down")

        with pytest.raises(ValueError, match="database is down"):
            session.folder_statuses(names, meanwhile=fail)
        assert session.folder_statuses(names) == expected
        assert session.folder_statuses([]) == {}
        session.noop()  # nothing left unread


class _Replay:
    """A server's answers as bytes, read as _read_statuses reads a connection."""

    abort = imaplib.IMAP4.abort

    def __init__(self, data: bytes):
        self._file = io.BytesIO(data)
        self.tagged_commands: dict = {}
        self.untagged_responses: dict = {}

    def readline(self) -> bytes:
        return self._file.readline()

    def read(self, size: int) -> bytes:
        return self._file.read(size)

    def _append_untagged(self, kind, data) -> None:
        self.untagged_responses.setdefault(kind, []).append(data)


def test_status_answers_in_other_forms_go_to_their_folder():
    tags = {b"A1": "INBOX", b"A2": 'Say "hi"', b"A3": "Sent", b"A4": "Drafts", b"A5": "Gone", b"A6": "Archive"}
    server = _Replay(
        b"* 4 EXISTS\r\n"
        b"* STATUS Sent (MESSAGES 5 UIDNEXT 6)\r\n"  # answered ahead of its turn: goes by its name
        b"* STATUS inbox (MESSAGES 3 UIDNEXT 9)\r\n"
        b"A1 OK done\r\n"
        b'* STATUS {8}\r\nSay "hi" (messages 1 uidnext 2)\r\n'
        b"A2 OK done\r\n"
        b"A3 OK done\r\n"
        b"* STATUS INBOX.Drafts (MESSAGES 7 UIDNEXT 8)\r\n"  # the server's own spelling: goes by order
        b"A4 OK done\r\n"
        b"A5 NO [NONEXISTENT] Mailbox doesn't exist: Gone\r\n"
        b"A6 OK no status given\r\n"
    )
    answers = imap_module._read_statuses(server, tags)
    assert answers["INBOX"] == ("OK", "done", {b"MESSAGES": 3, b"UIDNEXT": 9})
    assert answers['Say "hi"'] == ("OK", "done", {b"MESSAGES": 1, b"UIDNEXT": 2})
    assert answers["Sent"] == ("OK", "done", {b"MESSAGES": 5, b"UIDNEXT": 6})
    assert answers["Drafts"] == ("OK", "done", {b"MESSAGES": 7, b"UIDNEXT": 8})
    assert answers["Gone"] == ("NO", "[NONEXISTENT] Mailbox doesn't exist: Gone", None)
    assert answers["Archive"] == ("OK", "no status given", None)
    assert server.untagged_responses == {"EXISTS": [b"4"]}  # kept where imaplib keeps it


def test_the_fast_status_reader_reads_what_imapclient_reads():
    rng = random.Random(18)
    pieces = ["a", "Z", "7", " ", '"', "\\", "[", "]", "/", ".", "&APw-", "-", "_", "%", "*", "(", ")", "{", "}"]
    names = ["INBOX", "inbox", "NIL", "nil", "007", "[Gmail]/Sent Mail", 'Say "hi"', "back\\slash", "Entw&APw-rfe"]
    names += ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))) for _ in range(600)]
    items = ["MESSAGES", "UIDNEXT", "UIDVALIDITY", "HIGHESTMODSEQ", "UNSEEN", "RECENT", "X-GM-THING"]
    fast_read = 0
    for name in names:
        escaped = name.replace("\\", "\\\\").replace('"', '\\"')
        safe_atom = name and not any(c in name for c in ' "(){}%*\\') and name.upper() != "NIL"
        forms = [f'"{escaped}"'] + ([name] if safe_atom else [])
        for form in forms:
            chosen = rng.sample(items, rng.randint(0, len(items)))
            values = [str(rng.choice([0, 1, 42, 4294967295, 2**63 - 1])) for _ in chosen]
            usual = True
            if chosen and rng.random() < 0.1:
                values[0] = rng.choice(["NIL", "x1", '"5"'])
                usual = False
            case = str.lower if rng.random() < 0.3 else str.upper
            text = " ".join(f"{case(key)} {value}" for key, value in zip(chosen, values, strict=True))
            line = f"* STATUS {form} ({text})\r\n".encode()
            fast = imap_module._fast_status(line)
            try:
                slow = imap_module._parsed_status([line], [])
            except imap_exc.ProtocolError:  # an atom imapclient's lexer cannot read ("a[b"): fast or nothing
                continue
            assert fast is None or fast == slow, line
            assert (fast is not None) == usual, line  # the usual forms do not fall back
            fast_read += fast is not None
            if fast is not None:
                assert fast[0] == name.encode()  # as sent; mUTF-7 is decoded after
    assert fast_read > 500


def test_the_internaldate_reader_reads_what_imapclient_reads():
    from imapclient.datetime_util import parse_to_datetime

    rng = random.Random(18)
    months = ["Jan", "feb", "MAR", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec", "Foo"]
    fast_read = 0
    for _ in range(3000):
        day = rng.choice([f"{rng.randint(1, 31):2d}", f"{rng.randint(1, 31):02d}", str(rng.randint(1, 9)), "32", "00"])
        zone = rng.choice(["+0000", "-0000", "+0100", "-0530", "+1400", "-1200", "+0199", "+2400", "-9999"])
        clock = rng.choice([f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}", "24:00:00"])
        year = rng.choice([str(rng.randint(1970, 2100)), "0000", "2024"])
        value = f"{day}-{rng.choice(months)}-{year} {clock} {zone}"
        if rng.random() < 0.05:
            value = rng.choice(["Sat, 8 May 2010 16.03.09 +0200", "Tue, 1 Jul 2003 10:52:37 +0200", "garbage", ""])
        raw = value.encode()
        try:
            expected = parse_to_datetime(raw, normalise=False)
        except ValueError:
            with pytest.raises(ValueError):
                imap_module._internaldate(raw)
            continue
        got = imap_module._internaldate(raw)
        if abs(expected.tzinfo.utcoffset(None)) >= dt.timedelta(hours=24):  # imapclient's own, unusable anyway
            assert got.tzinfo.utcoffset(None) == expected.tzinfo.utcoffset(None), value
            continue
        assert got == expected and got.utcoffset() == expected.utcoffset(), value
        assert got.timetuple()[:6] == expected.timetuple()[:6], value
        fast_read += type(got.tzinfo) is dt.timezone
    assert fast_read > 250  # the usual form with a real date does not fall back (about 1 in 10 here)


def test_the_fast_list_reader_reads_what_imapclient_reads():
    client = IMAPClient.__new__(IMAPClient)  # only its response parsing is used
    client.folder_encode = True
    rng = random.Random(5)
    pieces = ["a", "Z", "7", " ", '"', "\\", "[", "]", "/", ".", "&APw-", "&-", "-", "%", "*", "(", ")", "{", "}"]
    names = ["INBOX", "007", "NIL", "[Gmail]/Sent Mail", 'Say "hi"', "back\\slash", "Entw&APw-rfe", "&ZeVnLIqe-"]
    names += ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))) for _ in range(600)]
    flags = ["\\HasNoChildren", "\\HasChildren", "\\Noselect", "\\Sent", "\\Trash", "\\Marked", "$Custom", "NIL", "12"]
    checked = fast_read = 0
    for name in names:
        escaped = name.replace("\\", "\\\\").replace('"', '\\"')
        safe_atom = name and not any(c in name for c in ' "(){}%*\\[') and name.upper() != "NIL"
        for form in [f'"{escaped}"'] + ([name] if safe_atom else []):
            chosen = rng.sample(flags, rng.randint(0, 3))
            delimiter = rng.choice(['"/"', '"."', '"\\\\"', "NIL"])
            line = f"({' '.join(chosen)}) {delimiter} {form}".encode()
            try:
                slow = client._proc_folder_list([line])
            except imap_exc.ProtocolError:
                continue
            fast = imap_module._fast_list_item(line)
            checked += 1
            assert fast is None or [fast] == slow, line
            usual = not ({"NIL", "12"} & set(chosen)) and not (form == name and name.isdigit())
            assert (fast is not None) == usual, line  # the usual forms do not fall back
            fast_read += fast is not None
    assert checked > 600 and fast_read > 400


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"* BYE shutting down\r\n", "shutting down"),
        (b"* STATUS INBOX (MESSAGES 1)\r\n", "EOF"),
        (b"B7 OK not ours\r\n", "unexpected tagged response"),
        (b"* STATUS INBOX\r\nA1 OK\r\n", "unexpected STATUS response"),
    ],
)
def test_status_reader_refuses_a_broken_conversation(data, message):
    with pytest.raises(imaplib.IMAP4.abort, match=message):
        imap_module._read_statuses(_Replay(data), {b"A1": "INBOX"})


def test_select_detects_a_changed_uidvalidity(dovecot, mail_user):
    dovecot.append(mail_user, make_message("before"))
    with connect(config_for(dovecot, mail_user)) as session:
        first = session.select("INBOX", readonly=True)
    new_uidvalidity = dovecot.reset_uidvalidity(mail_user)
    with connect(config_for(dovecot, mail_user)) as session:
        with pytest.raises(errors.UidValidityChanged) as caught:
            session.select("INBOX", readonly=True, expected_uidvalidity=first.uidvalidity)
        assert (caught.value.old, caught.value.new) == (first.uidvalidity, new_uidvalidity)
        assert session.selected.uidvalidity == new_uidvalidity  # still selected, ready to re-match
        assert session.search_all_uids() == [1]


def test_select_missing_folder_is_folder_not_found(dovecot, mail_user):
    with connect(config_for(dovecot, mail_user)) as session:
        with pytest.raises(errors.FolderNotFound):
            session.select("No such folder")
        session.noop()  # the connection is still usable


# -- searching and fetching


def test_search_since_uses_the_arrival_date(dovecot, mail_user):
    old = dt.datetime(2020, 3, 1, 12, 0, tzinfo=dt.UTC)
    recent = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    uids = dovecot.deliver_many(
        mail_user, [(make_message("old"), (), old), (make_message("new"), (), recent), (make_message("x"), (), old)]
    )
    with connect(config_for(dovecot, mail_user)) as session:
        session.select("INBOX", readonly=True)
        assert session.search_all_uids() == uids
        assert session.search_uids_since(dt.date.today() - dt.timedelta(days=3)) == [uids[1]]
        assert session.search_uids_since(dt.date(2020, 1, 1)) == uids


def test_fetch_messages_returns_exact_bytes_in_batches_without_marking_seen(dovecot, mail_user):
    date = dt.datetime(2023, 5, 4, 10, 30, tzinfo=dt.UTC)
    raws = [make_message(f"message {i}", body=f"Body {i}\r\n") for i in range(7)]
    uids = dovecot.deliver_many(
        mail_user, [(raw, ("\\Flagged",) if i == 2 else (), date) for i, raw in enumerate(raws)]
    )
    with connect(config_for(dovecot, mail_user)) as session:
        session.select("INBOX")
        fetched = list(session.fetch_messages(reversed(uids), batch_size=3))
        headers = list(session.fetch_headers(uids[:2]))
    # sorted within each batch of 3; the batches follow the given (here: newest first) order
    assert [m.uid for m in fetched] == sorted(uids[4:]) + sorted(uids[1:4]) + uids[:1]
    by_uid = {m.uid: m for m in fetched}
    for uid, raw in zip(uids, raws, strict=True):
        assert by_uid[uid].raw == raw
        assert by_uid[uid].size == len(raw)
        assert by_uid[uid].internaldate == date
    assert by_uid[uids[2]].flags == ("\\Flagged",)
    assert headers[0].raw.startswith(b"From: ") and b"Body 0" not in headers[0].raw
    assert all("\\Seen" not in dovecot.flags(mail_user, uid) for uid in uids)


def test_fetch_flags_sends_huge_uid_lists_in_chunks(dovecot, mail_user):
    uids = dovecot.deliver_many(mail_user, [(make_message(str(i)), ("\\Seen",), None) for i in range(3)])
    with connect(config_for(dovecot, mail_user)) as session:
        session.select("INBOX", readonly=True)
        flags = session.fetch_flags(range(1, 12_001))  # 3 commands of <= 5000 UIDs
    assert flags == dict.fromkeys(uids, ("\\Seen",))


def test_flags_are_changed_on_the_server(dovecot, mail_user):
    uid = dovecot.append(mail_user, make_message("flag me"))
    with connect(config_for(dovecot, mail_user)) as session:
        session.select("INBOX")
        session.add_flags([uid], ["\\Seen", "\\Flagged"])
        assert dovecot.flags(mail_user, uid) == {"\\Seen", "\\Flagged"}
        session.remove_flags([uid], ["\\Flagged"])
        assert dovecot.flags(mail_user, uid) == {"\\Seen"}
        session.set_flags([uid], ["\\Answered", "$Label1"])
        assert session.fetch_flags([uid]) == {uid: ("$Label1", "\\Answered")}
    assert dovecot.flags(mail_user, uid) == {"\\Answered", "$Label1"}


def test_changed_flags_and_vanished_uids_since_a_modseq(dovecot, mail_user):
    uids = [dovecot.append(mail_user, make_message(s)) for s in ("a", "b", "c", "d")]
    with connect(config_for(dovecot, mail_user)) as session:
        cursor = session.select("INBOX", readonly=True).highestmodseq
        assert session.fetch_changed_flags(cursor).changed == {}
    dovecot.add_flags(mail_user, [uids[1]], ("\\Seen",))
    dovecot.expunge(mail_user, [uids[3]])
    with connect(config_for(dovecot, mail_user)) as session:
        selected = session.select("INBOX", readonly=True)
        changes = session.fetch_changed_flags(cursor)
    assert changes.changed == {uids[1]: ("\\Seen",)}
    assert changes.vanished == [uids[3]]
    assert cursor < changes.highestmodseq <= selected.highestmodseq


def test_changed_flags_without_qresync_has_no_vanished(dovecot, mail_user):
    uids = [dovecot.append(mail_user, make_message(s)) for s in ("a", "b")]
    config = config_for(dovecot, mail_user, enable_qresync=False)
    with connect(config) as session:
        assert session.condstore_enabled and not session.qresync_enabled
        cursor = session.select("INBOX").highestmodseq
        session.add_flags([uids[0]], ["\\Flagged"])
        changes = session.fetch_changed_flags(cursor)
    assert changes.changed == {uids[0]: ("\\Flagged",)}
    assert changes.vanished == []


def test_idle_wait_reports_new_mail_and_times_out_otherwise(dovecot, mail_user):
    with connect(config_for(dovecot, mail_user)) as session:
        session.select("INBOX", readonly=True)
        started = time.monotonic()
        assert session.idle_wait(0.3) is False
        assert 0.25 < time.monotonic() - started < 2
        timer = threading.Timer(0.2, dovecot.append, args=(mail_user, make_message("new mail")))
        timer.start()
        try:
            assert session.idle_wait(5) is True
        finally:
            timer.join()
        assert len(session.search_all_uids()) == 1  # the connection is usable after IDLE


def test_poll_changes_reports_mail_delivered_before_idle_started(dovecot, mail_user):
    """IDLE mentions a delivery made before it began only when it ends (after up to 30 s); NOOP at once."""
    with connect(config_for(dovecot, mail_user)) as session:
        session.select("INBOX", readonly=True)
        assert session.poll_changes() is False
        dovecot.append(mail_user, make_message("delivered between two commands"))
        assert session.poll_changes() is True
        assert session.poll_changes() is False  # reported once


# -- moving, deleting, appending


def test_move_delete_and_append(dovecot, mail_user):
    uids = [dovecot.append(mail_user, make_message(s)) for s in ("keep", "move", "delete")]
    with connect(config_for(dovecot, mail_user)) as session:
        session.select("INBOX")
        mapping = session.move([uids[1]], "Archive")
        session.delete([uids[2]])
        appended = session.append("Sent", make_message("sent by me"), flags=["\\Seen"], internaldate=None)
        copied = session.copy([uids[0]], "Archive")
    assert dovecot.uids(mail_user) == [uids[0]]
    archive = dovecot.uids(mail_user, "Archive")
    assert len(archive) == 2
    assert mapping == {uids[1]: archive[0]} and copied == {uids[0]: archive[1]}
    assert appended == dovecot.uids(mail_user, "Sent")[0]
    assert dovecot.flags(mail_user, appended, "Sent") == {"\\Seen"}


def test_delete_expunges_only_the_given_uids(dovecot, mail_user):
    uids = [dovecot.append(mail_user, make_message(s)) for s in ("a", "b")]
    dovecot.add_flags(mail_user, [uids[0]], ("\\Deleted",))  # marked by another client, not ours to expunge
    with connect(config_for(dovecot, mail_user)) as session:
        session.select("INBOX")
        session.delete([uids[1]])
    assert dovecot.uids(mail_user) == [uids[0]]


def test_parse_uid_set():
    assert parse_uid_set("1:3,7,10:9") == [1, 2, 3, 7, 9, 10]
    assert parse_uid_set("") == []


@pytest.mark.dovecot
def test_search_uids_from_returns_only_new_uids(dovecot, mail_user):
    uids = [dovecot.append(mail_user, make_message(f"n{i}")) for i in range(3)]
    with connect(config_for(dovecot, mail_user)) as session:
        session.select("INBOX", readonly=True)
        assert session.search_uids_from(uids[1]) == uids[1:]
        # Above the highest UID: "n:*" still matches the last message; it must not be reported.
        assert session.search_uids_from(uids[-1] + 1) == []
