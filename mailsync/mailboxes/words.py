"""What a word is to search (pure Python: the sync's parse workers import it, without Django).

One definition for the search documents (their words are computed from each message when it is
parsed: mailsync.sync.parsing.search_terms_of) and for the search box (mailsync.workspace.inbox), so
that what is typed is what was indexed: lower-cased runs of letters and digits (str.lower, Unicode
aware; "_" and punctuation separate words, as PostgreSQL's query parser does). Chinese, Japanese and
Korean are written without spaces: a run of their characters also counts each of its two-character
pieces (and its last character), which a query's CJK words are split into.
"""

import itertools
import re
from collections.abc import Iterable

SEARCH_WORD_RE = re.compile(r"[^\W_]+")
# The same words in ASCII text, found about 4x faster than by a regular expression: the bytes through
# one table (A-Z made a-z, a-z and 0-9 kept, every other byte a space; lower-casing in the same pass
# as the rest: 59 -> 45 us for 10,000 characters), split on spaces.
_ASCII_NOT_WORD = bytes(
    byte + 32 if 65 <= byte <= 90 else byte if 48 <= byte <= 57 or 97 <= byte <= 122 else 32 for byte in range(256)
)
# The same for the UTF-8 bytes of other text: bytes of non-ASCII characters (128-255) are kept.
_NON_ASCII_KEPT = bytes(byte if 48 <= byte <= 57 or 97 <= byte <= 122 or byte >= 128 else 32 for byte in range(256))
# Hiragana + Katakana, CJK extension A, CJK unified ideographs, compatibility ideographs, Hangul
# syllables; the same class as mailsync_cjk_terms (migration 0005), which older documents used.
CJK_RUN_RE = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]+")
_FIRST_CJK = "\u3040"  # no text below it holds a CJK run

SEARCH_BODY_CHARS = 10_000  # the start of a message's text: quoted history makes bodies long
SEARCH_PARTICIPANTS = 100  # a mail to thousands stays a bounded document
SEARCH_WORD_CHARS = 100  # a longer run (an encoded blob, a hash) is nothing anyone types


def search_words(text: str) -> list[str]:
    """The words of `text` as search sees them, in order, with repeats."""
    return SEARCH_WORD_RE.findall(text.lower())


def distinct_terms(text: str) -> str:
    """The distinct search words of `text` and the pieces of its CJK runs, space-separated (what a
    message's search document is made of: MailboxSearchDocument)."""
    if text.isascii():
        words = dict.fromkeys(text.encode("ascii").translate(_ASCII_NOT_WORD).split())  # in order, once
        if words and max(map(len, words)) > SEARCH_WORD_CHARS:
            words = [word for word in words if len(word) <= SEARCH_WORD_CHARS]
        return b" ".join(words).decode("ascii")
    text = text.lower()
    try:
        terms, cjk_runs = _mixed_text_words(text)
    except UnicodeEncodeError:  # a lone surrogate: not from the parser, which never returns one
        terms, cjk_runs = dict.fromkeys(SEARCH_WORD_RE.findall(text)), CJK_RUN_RE.findall(text)
    for word in [word for word in terms if len(word) > SEARCH_WORD_CHARS]:
        del terms[word]
    for run in cjk_runs:
        for start in range(len(run)):
            terms[run[start : start + 2]] = None
    return " ".join(terms)


def _mixed_text_words(lowered: str) -> tuple[dict[str, None], list[str]]:
    """(dict.fromkeys(SEARCH_WORD_RE.findall(lowered)), the CJK runs whose pieces it adds, in order) for
    text with some non-ASCII characters, 2-3x faster on mostly Latin text: its UTF-8 bytes are split at
    ASCII characters that are not a-z or 0-9 (never inside a word nor a CJK run), as the ASCII shortcut
    does; pieces of plain ASCII are words, and only the pieces holding other characters go through the
    expressions, each distinct piece once. Same words and pieces, in the same order (first occurrence):
    a repeated piece only repeats words and runs already taken."""
    pieces = dict.fromkeys(lowered.encode("utf-8").translate(_NON_ASCII_KEPT).split())
    words: dict[str, None] = {}
    cjk_runs: list[str] = []
    for piece in pieces:
        if piece.isascii():
            words[piece.decode("ascii")] = None
            continue
        piece_text = piece.decode("utf-8")
        for word in SEARCH_WORD_RE.findall(piece_text):
            words[word] = None
        if max(piece_text) >= _FIRST_CJK:
            cjk_runs += CJK_RUN_RE.findall(piece_text)
    return words, cjk_runs


def message_terms(subject: str, people: Iterable[tuple[str, str]], text: str) -> str:
    """distinct_terms of one message: its subject, the names and addresses of its first
    SEARCH_PARTICIPANTS participants (From, Sender, Reply-To, To, Cc, Bcc), the start of its text."""
    names = " ".join(f"{name} {address}" for name, address in itertools.islice(people, SEARCH_PARTICIPANTS))
    return distinct_terms(f"{subject} {names} {text[:SEARCH_BODY_CHARS]}")
