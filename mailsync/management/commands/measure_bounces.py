"""`manage.py measure_bounces PATH [--labels FILE] [--verbose]`: how well ingestion recognises bounce reports.

Reads every bounce message under PATH (a copy of the shared corpus: the sisimai `lhost-*` / `rhost-*` files
and the files in a `bounce/` folder, plus any file the labels name) through `parsing.parse_message`, the
exact path of synced mail, and prints the share recognised as a bounce and the share recognised with the
right failed recipient(s) and the right permanent / temporary status, against a labels file written by
reading the messages (default tests/data/bounce_labels.tsv: path, recipient, permanent|temporary, one
line per failed recipient). A file is right only when the set of recipients found equals the labelled
set (an extra or a missing recipient is wrong) and every status matches; a recipient counts as found
under the address the sender used or its Final-Recipient. Files under PATH without a label are counted
as recognised or not, and listed with --verbose. Also prints how many other messages were read as bounces.
"""

from __future__ import annotations

import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from mailsync.sync.parsing import parse_message

DEFAULT_LABELS = Path(settings.BASE_DIR) / "tests" / "data" / "bounce_labels.tsv"


def read_labels(path: Path) -> dict[str, dict[str, str]]:
    labels: dict[str, dict[str, str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, recipient, kind = line.split("\t")
        labels.setdefault(name, {})[recipient.strip().lower()] = kind.strip()
    return labels


def is_bounce_file(relative: Path) -> bool:
    return relative.name.startswith(("lhost-", "rhost-")) or "bounce" in relative.parts[:-1]


def judge(raw: bytes, expected: dict[str, str] | None) -> tuple[bool, bool, dict[str, str]]:
    """(recognised as a bounce, right recipients and statuses, what was found: address -> kind)."""
    report = parse_message(raw).bounce
    if report is None:
        return False, False, {}
    found: dict[str, str] = {}
    aliases: dict[str, str] = {}
    for recipient in report.recipients:
        kind = "permanent" if recipient.permanent else "temporary"
        found[recipient.address] = kind
        if recipient.final_address:
            aliases[recipient.final_address] = recipient.address
    if expected is None:
        return True, False, found
    matched = {}
    for address, kind in expected.items():
        key = address if address in found else aliases.get(address)
        if key is not None:
            matched[key] = found[key] == kind
    right = len(matched) == len(expected) == len(found) and all(matched.values())
    return True, right, found


class Command(BaseCommand):
    help = "Share of the corpus's bounce reports recognised with the right recipient and permanent/temporary status."

    def add_arguments(self, parser):
        parser.add_argument("path", help="Folder of messages, e.g. ../shared/corpus")
        parser.add_argument("--labels", default=str(DEFAULT_LABELS), help="Labels file (path, recipient, kind)")
        parser.add_argument("--verbose", action="store_true", help="One line per bounce message")

    def handle(self, *args, path: str, labels: str, verbose: bool = False, **options):
        root = Path(path)
        if not root.is_dir():
            raise CommandError(f"{path} is not a folder.")
        expected_all = read_labels(Path(labels)) if Path(labels).exists() else {}
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(("LICENSE", "SOURCES")))
        bounces = recognised = labelled = right = others = other_hits = 0
        started = time.perf_counter()
        for file in files:
            relative = file.relative_to(root)
            key = relative.as_posix()
            expected = expected_all.get(key)
            if expected is None and not is_bounce_file(relative):
                others += 1
                if parse_message(file.read_bytes()).bounce is not None:
                    other_hits += 1
                    if verbose:
                        self.stdout.write(f"  read as a bounce (not in the bounce set): {key}")
                continue
            bounces += 1
            is_bounce, is_right, found = judge(file.read_bytes(), expected)
            recognised += is_bounce
            labelled += expected is not None
            right += is_right
            if verbose:
                verdict = "right" if is_right else ("no label" if expected is None else "WRONG")
                shown = ", ".join(f"{a} {k}" for a, k in found.items()) or "not recognised"
                self.stdout.write(f"  {verdict:8} {key}: {shown}")
        elapsed = time.perf_counter() - started
        self.stdout.write(
            f"Bounce messages: {bounces}; recognised as bounces: {recognised} ({_share(recognised, bounces)})"
        )
        self.stdout.write(
            f"Right recipient(s) and permanent/temporary status: {right} of {labelled} labelled "
            f"({_share(right, labelled)}; target >= 95%)"
        )
        self.stdout.write(f"Other messages read as bounces: {other_hits} of {others}")
        self.stdout.write(f"({len(files)} files in {elapsed:.1f} s)")


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"
