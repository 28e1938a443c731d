"""How an attachment's file name may be shown or offered for download (Attachment.display_name, the
download view in mailsync.workspace): pure string rules, kept beside the models that use them.
"""

# Bidi formatting characters: embeddings, overrides, isolates (U+202A-U+202E, U+2066-U+2069) and the
# direction marks (U+200E, U+200F, U+061C). A file name needs none of them, and with them it lies:
# "passwd\u202egnp.exe" shows as "passwdexe.png".
_BIDI_CONTROLS = dict.fromkeys(map(ord, "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"))
# Zero-width (non-)joiners shape Persian, Arabic and Indic names without reordering anything: kept.
_JOINERS = {"\u200c", "\u200d"}


def display_filename(name: str, *, fallback: str = "attachment") -> str:
    """A file name as it may be shown or offered for download: no bidi controls, no control or other
    invisible formatting characters, whitespace collapsed; `fallback` when nothing is left."""
    kept = "".join(
        " " if ch.isspace() else ch
        for ch in (name or "").translate(_BIDI_CONTROLS)
        if ch.isspace() or ch.isprintable() or ch in _JOINERS
    )
    return " ".join(kept.split()) or fallback
