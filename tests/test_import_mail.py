"""import_mail: .eml files, mbox files, Maildirs and directories of them, through the ingestion pipeline."""

import mailbox
import shutil
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from mailsync.models import EmailAccount, EmailMessage, MessageLocation
from tests.test_ingest import build_message

CORPUS = Path("/work/shared/corpus")
KEPT_APART = "kept apart from a different message with the same Message-ID"


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture
def account(alice):
    return EmailAccount.objects.create(
        user=alice, email_address="alice@company.test", imap_host="localhost", username="alice@company.test"
    )


def run(*args) -> str:
    out = StringIO()
    call_command("import_mail", *[str(arg) for arg in args], stdout=out, stderr=StringIO())
    return out.getvalue()


def test_import_eml_files_and_rerun_imports_nothing(account, tmp_path):
    folder = tmp_path / "export" / "nested"
    folder.mkdir(parents=True)
    for number in range(1, 4):
        (folder / f"{number}.eml").write_bytes(build_message(number, subject=f"Mail {number}"))
    (tmp_path / "export" / "notes.md").write_text("# not mail\n")

    output = run(account.pk, tmp_path / "export")
    assert f"3 new (0 {KEPT_APART}), 0 copies of messages already stored, 0 failed to parse but kept raw" in output
    assert EmailMessage.objects.filter(account=account).count() == 3
    assert EmailMessage.objects.filter(is_read=True).count() == 3

    again = run("ALICE@company.test", tmp_path / "export" / "nested" / "1.eml", tmp_path / "export")
    assert f"0 new (0 {KEPT_APART}), 4 copies of messages already stored" in again
    assert EmailMessage.objects.count() == 3
    assert MessageLocation.objects.count() == 0


def test_import_mbox_with_flags(account, tmp_path):
    path = tmp_path / "archive.mbox"
    box = mailbox.mbox(path)
    for number in range(1, 6):
        message = mailbox.mboxMessage(build_message(number, body=f"From the start, line {number}\r\nbye"))
        if number == 1:
            message.set_flags("RF")
        box.add(message)
    box.flush()
    box.close()

    output = run(account.email_address, path)
    assert "5 new" in output
    first = EmailMessage.objects.get(message_id="msg-1@customer.example")
    assert first.is_read and first.is_flagged
    assert not EmailMessage.objects.get(message_id="msg-2@customer.example").is_read
    # mbox escapes body lines starting with "From "; the message still parses whole.
    assert "line 3" in EmailMessage.objects.get(message_id="msg-3@customer.example").body_text
    assert "0 new (0 kept apart" in (again := run(account.pk, path))
    assert "5 copies of messages already stored" in again


def test_import_maildir_with_subfolders(account, tmp_path):
    root = tmp_path / "Maildir"
    maildir = mailbox.Maildir(root)
    seen = mailbox.MaildirMessage(build_message(1))
    seen.set_subdir("cur")
    seen.set_flags("SF")
    maildir.add(seen)
    maildir.add(mailbox.MaildirMessage(build_message(2)))  # new/, unseen
    sent = maildir.add_folder("Sent")
    sent.add(mailbox.MaildirMessage(build_message(3, sender="alice@company.test", to="bob@customer.example")))

    output = run(account.pk, root)
    assert "Importing 3 message(s)" in output
    assert "3 new" in output
    first = EmailMessage.objects.get(message_id="msg-1@customer.example")
    assert first.is_read and first.is_flagged
    assert not EmailMessage.objects.get(message_id="msg-2@customer.example").is_read
    assert EmailMessage.objects.get(message_id="msg-3@customer.example").direction == "sent"
    assert "0 new (0 kept apart" in (again := run(account.pk, root))
    assert "3 copies of messages already stored" in again


def test_import_the_corpus_keeps_every_message(account, tmp_path):
    if not CORPUS.exists():
        pytest.skip("corpus not present")
    copy = tmp_path / "corpus"
    shutil.copytree(CORPUS, copy)

    output = run(account.pk, copy, "--batch-size", "50")

    files = [
        p
        for p in copy.rglob("*")
        if p.is_file() and not p.name.startswith(("LICENSE", "SOURCES", ".")) and p.suffix != ".md"
    ]
    created = EmailMessage.objects.count()
    summary = output.strip().splitlines()[-1]
    # Every file was read; copies (same Message-ID and content but for line endings and trace headers)
    # are stored once, different messages sharing a Message-ID each.
    assert f"Done: {len(files)} message(s) read - {created} new" in summary
    assert created > 200
    kept_raw = EmailMessage.objects.exclude(parse_error="")
    assert kept_raw.exists()
    assert all(message.raw for message in kept_raw)
    assert f"{kept_raw.count()} failed to parse but kept raw" in summary

    again = run(account.pk, copy, "--batch-size", "100")
    assert f"Done: {len(files)} message(s) read - 0 new (0 {KEPT_APART}), {len(files)} copies" in again
    assert EmailMessage.objects.count() == created


def test_import_with_worker_processes(account, tmp_path):
    for number in range(1, 8):
        (tmp_path / f"{number}.eml").write_bytes(build_message(number))
    output = run(account.pk, tmp_path, "--workers", "2", "--batch-size", "3")
    assert "7 new" in output
    assert EmailMessage.objects.count() == 7


def test_bad_arguments_give_clear_errors(account, tmp_path):
    with pytest.raises(CommandError, match="No such file or directory"):
        run(account.pk, tmp_path / "missing.mbox")
    with pytest.raises(CommandError, match=r'No email account with id or address "nobody@example\.com"'):
        run("nobody@example.com", tmp_path)
    with pytest.raises(CommandError, match="No email account"):
        run(999999, tmp_path)
    (tmp_path / "readme.md").write_text("not mail")
    with pytest.raises(CommandError, match="No messages found"):
        run(account.pk, tmp_path)
    assert EmailMessage.objects.count() == 0


def test_import_keeps_different_messages_that_share_a_message_id_and_counts_copies(account, tmp_path):
    reused = "<reused@broken-mailer.example>"
    (tmp_path / "a.eml").write_bytes(build_message(1, message_id=reused, subject="Quote", body="100 EUR"))
    (tmp_path / "b.eml").write_bytes(build_message(2, message_id=reused, subject="Other", sender="c@else.example"))
    copy = b"Received: from mx by mail\r\n" + build_message(1, message_id=reused, subject="Quote", body="100 EUR")
    (tmp_path / "c.eml").write_bytes(copy.replace(b"\r\n", b"\n"))

    summary = run(account.pk, tmp_path).strip().splitlines()[-1]

    assert f"3 message(s) read - 2 new (1 {KEPT_APART}), 1 copies of messages already stored" in summary
    assert sorted(EmailMessage.objects.values_list("subject", flat=True)) == ["Other", "Quote"]
