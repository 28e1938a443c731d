"""import_mail ACCOUNT PATH...: store messages from .eml files, mbox files and Maildirs in an account.

The messages go through the same ingestion pipeline as a sync (mailsync.sync.ingest), so the identity rules
are the same: importing twice, or importing mail that a sync also fetches, stores each message once
(line endings, mbox quoting and trace headers such as Received do not count), while different messages
that reuse a Message-ID are each stored. The summary says how many were new, how many were copies of
messages already stored, and how many were kept apart despite a shared Message-ID.
Imported messages have no server location (no folder / UID).
"""

from __future__ import annotations

import mailbox
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from mailsync.models import EmailAccount
from mailsync.sync.ingest import FetchedMessage, IngestResult, ParsePool, ingest_batch, own_addresses_for

# A file is taken for a message when its first line is a header ("Name: value") or an mbox "From ".
_LOOKS_LIKE_MAIL = re.compile(rb"^(?:From |[!-9;-~]+:)")
_MBOX_SUFFIXES = {".mbox", ".mbx", ".mbs"}
_SKIPPED_NAMES = {".gitattributes", ".ds_store", "thumbs.db"}
# Maildir info flags (after ":2,") -> IMAP flags.
_MAILDIR_FLAGS = {"S": "\\Seen", "F": "\\Flagged", "D": "\\Draft", "R": "\\Answered"}


@dataclass
class Source:
    kind: str  # "eml", "mbox" or "maildir"
    path: Path


class Command(BaseCommand):
    help = "Import .eml files, mbox files and Maildir folders into an email account (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("account", help="Account id or email address")
        parser.add_argument("paths", nargs="+", help=".eml file, mbox file, Maildir, or a directory of them")
        parser.add_argument("--batch-size", type=int, default=200, help="Messages per transaction (default 200)")
        parser.add_argument(
            "--workers",
            type=int,
            default=0,
            help="Parse in this many worker processes while writing (default 0: parse in this process)",
        )

    def handle(self, *args, **options) -> None:
        account = self._account(options["account"])
        batch_size = max(1, options["batch_size"])
        sources = self._sources([Path(p) for p in options["paths"]])
        total = sum(self._count(source) for source in sources)
        self.stdout.write(f"Importing {total} message(s) from {len(sources)} source(s) into {account.email_address}")

        own = own_addresses_for(account)
        summary = IngestResult()
        unreadable: list[str] = []
        pool = ParsePool(workers=options["workers"]) if options["workers"] > 0 else None
        try:
            pending = None
            for batch in _batches(self._messages(sources, unreadable), batch_size):
                parse = pool.submit([item.raw for item in batch], own) if pool else None
                if pending is not None:
                    self._write(account, own, pending, summary, total)
                pending = (batch, parse)
            if pending is not None:
                self._write(account, own, pending, summary, total)
        finally:
            if pool is not None:
                pool.close()

        for problem in unreadable:
            self.stderr.write(f"Skipped: {problem}")
        self.stdout.write(
            self.style.SUCCESS(
                f"Done: {summary.created + summary.existing} message(s) read - {summary.created} new "
                f"({summary.kept_apart} kept apart from a different message with the same Message-ID), "
                f"{summary.existing} copies of messages already stored, "
                f"{summary.failed} failed to parse but kept raw"
                + (f", {len(unreadable)} unreadable" if unreadable else "")
                + "."
            )
        )

    # --- arguments --------------------------------------------------------------------------------

    def _account(self, value: str) -> EmailAccount:
        value = value.strip()
        accounts = (
            EmailAccount.objects.filter(pk=int(value))
            if value.isdigit()
            else EmailAccount.objects.filter(email_address__iexact=value)
        )
        found = list(accounts.select_related("user")[:2])
        if not found:
            raise CommandError(f'No email account with id or address "{value}".')
        if len(found) > 1:
            ids = ", ".join(str(pk) for pk in accounts.values_list("pk", flat=True))
            raise CommandError(f'Several accounts use "{value}" (ids {ids}); give the account id instead.')
        return found[0]

    def _sources(self, paths: list[Path]) -> list[Source]:
        missing = [str(path) for path in paths if not path.exists()]
        if missing:
            raise CommandError(f"No such file or directory: {', '.join(missing)}")
        sources: list[Source] = []
        for path in paths:
            if path.is_dir():
                sources.extend(_scan_directory(path))
            elif not os.access(path, os.R_OK):
                raise CommandError(f"Cannot read {path}: permission denied.")
            elif path.suffix.lower() in _MBOX_SUFFIXES or (path.suffix.lower() != ".eml" and _starts_with_from(path)):
                sources.append(Source("mbox", path))
            else:
                sources.append(Source("eml", path))
        if not sources:
            raise CommandError("No messages found in the given paths (.eml files, mbox files or Maildirs).")
        return sources

    def _count(self, source: Source) -> int:
        if source.kind == "mbox":
            try:
                return len(mailbox.mbox(source.path, create=False))
            except (OSError, mailbox.Error) as exc:
                raise CommandError(f"Cannot read mbox {source.path}: {exc}") from exc
        if source.kind == "maildir":
            return sum(1 for _ in _maildir_files(source.path))
        return 1

    # --- reading ----------------------------------------------------------------------------------

    def _messages(self, sources: list[Source], unreadable: list[str]) -> Iterator[FetchedMessage]:
        for source in sources:
            try:
                if source.kind == "eml":
                    yield FetchedMessage(uid=None, flags=("\\Seen",), raw=source.path.read_bytes())
                elif source.kind == "mbox":
                    yield from _mbox_messages(source.path, unreadable)
                else:
                    yield from _maildir_messages(source.path, unreadable)
            except OSError as exc:
                unreadable.append(f"{source.path}: {exc.strerror or exc}")

    def _write(self, account, own, pending, summary: IngestResult, total: int) -> None:
        batch, parse = pending
        result = ingest_batch(account, None, batch, parsed=parse.result() if parse else None, own_addresses=own)
        summary.add(result)
        done = summary.created + summary.existing
        self.stdout.write(
            f"  {done}/{total}: {summary.created} new ({summary.kept_apart} kept apart), "
            f"{summary.existing} copies, {summary.failed} kept raw"
        )


def _batches(items: Iterator[FetchedMessage], size: int) -> Iterator[list[FetchedMessage]]:
    batch: list[FetchedMessage] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _is_maildir(path: Path) -> bool:
    return all((path / sub).is_dir() for sub in ("cur", "new", "tmp"))


def _starts_with_from(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(5) == b"From "
    except OSError:
        return False


def _looks_like_mail(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            head = handle.read(1000).lstrip(b"\r\n\t ")
    except OSError:
        return False
    return bool(_LOOKS_LIKE_MAIL.match(head))


def _scan_directory(root: Path) -> list[Source]:
    """Maildirs (and Maildir++ sub-folders), mbox files and message files below `root`, sorted."""
    sources: list[Source] = []
    for directory, subdirectories, files in os.walk(root):
        here = Path(directory)
        subdirectories.sort()
        if _is_maildir(here):
            sources.append(Source("maildir", here))
            # cur/new/tmp hold the messages; Maildir++ sub-folders (".Sent") are walked on.
            subdirectories[:] = [d for d in subdirectories if d not in ("cur", "new", "tmp")]
            continue
        for name in sorted(files):
            path = here / name
            if name.lower() in _SKIPPED_NAMES or name.startswith(".") or not _looks_like_mail(path):
                continue
            is_mbox = path.suffix.lower() in _MBOX_SUFFIXES or (
                path.suffix.lower() != ".eml" and _starts_with_from(path)
            )
            sources.append(Source("mbox" if is_mbox else "eml", path))
    return sources


def _mbox_messages(path: Path, unreadable: list[str]) -> Iterator[FetchedMessage]:
    box = mailbox.mbox(path, create=False)
    try:
        for key in box.iterkeys():
            try:
                raw = box.get_bytes(key)
            except (OSError, mailbox.Error) as exc:
                unreadable.append(f"{path} message {key}: {exc}")
                continue
            yield FetchedMessage(uid=None, flags=_mbox_flags(raw), raw=raw)
    finally:
        box.close()


def _mbox_flags(raw: bytes) -> tuple[str, ...]:
    """mutt/Thunderbird keep flags in Status (R = read) and X-Status (F = flagged, T = draft)."""
    head = raw.split(b"\n\n", 1)[0]
    status = re.search(rb"^Status:\s*(\S+)", head, re.M | re.I)
    extra = re.search(rb"^X-Status:\s*(\S+)", head, re.M | re.I)
    flags = []
    if status and b"R" in status.group(1):
        flags.append("\\Seen")
    if extra and b"F" in extra.group(1):
        flags.append("\\Flagged")
    if extra and b"T" in extra.group(1):
        flags.append("\\Draft")
    return tuple(flags)


def _maildir_files(root: Path) -> Iterator[tuple[Path, str]]:
    for sub in ("new", "cur"):
        folder = root / sub
        for name in sorted(os.listdir(folder)):
            if not name.startswith("."):
                yield folder / name, sub


def _maildir_messages(root: Path, unreadable: list[str]) -> Iterator[FetchedMessage]:
    for path, sub in _maildir_files(root):
        try:
            raw = path.read_bytes()
            arrived = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
        except OSError as exc:
            unreadable.append(f"{path}: {exc.strerror or exc}")
            continue
        info = re.split(r"[:!]2,", path.name, maxsplit=1)
        letters = info[1] if sub == "cur" and len(info) == 2 else ""
        flags = tuple(flag for letter, flag in _MAILDIR_FLAGS.items() if letter in letters)
        yield FetchedMessage(uid=None, flags=flags, internal_date=arrived, raw=raw)
