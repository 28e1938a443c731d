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
# The same words in ASCII text, found about 4x faster than by a regular expression: lower-cased
# bytes, every byte but a-z and 0-9 made a space, split on spaces.
_ASCII_NOT_WORD = bytes(byte if 48 <= byte <= 57 or 97 <= byte <= 122 else 32 for byte in range(256))
# Hiragana + Katakana, CJK extension A, CJK unified ideographs, compatibility ideographs, Hangul
# syllables; the same class as mailsync_cjk_terms (migration 0005), which older documents used.
CJK_RUN_RE = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]+")

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
        words = dict.fromkeys(text.encode("ascii").lower().translate(_ASCII_NOT_WORD).split())  # in order, once
        if words and max(map(len, words)) > SEARCH_WORD_CHARS:
            words = [word for word in words if len(word) <= SEARCH_WORD_CHARS]
        return b" ".join(words).decode("ascii")
    text = text.lower()
    terms = dict.fromkeys(SEARCH_WORD_RE.findall(text))
    for word in [word for word in terms if len(word) > SEARCH_WORD_CHARS]:
        del terms[word]
    for run in CJK_RUN_RE.findall(text):
        for start in range(len(run)):
            terms[run[start : start + 2]] = None
    return " ".join(terms)


def message_terms(subject: str, people: Iterable[tuple[str, str]], text: str) -> str:
    """distinct_terms of one message: its subject, the names and addresses of its first
    SEARCH_PARTICIPANTS participants (From, Sender, Reply-To, To, Cc, Bcc), the start of its text."""
    names = " ".join(f"{name} {address}" for name, address in itertools.islice(people, SEARCH_PARTICIPANTS))
    return distinct_terms(f"{subject} {names} {text[:SEARCH_BODY_CHARS]}")
