"""Sanitising what users write (temporary home until the composer's MIME module lands; see mime.sanitize_body)."""

import re

import nh3

_TAGS = {
    "a", "b", "blockquote", "br", "code", "div", "em", "h1", "h2", "h3", "hr", "i", "img", "li", "mark", "ol",
    "p", "pre", "s", "span", "strong", "sub", "sup", "table", "tbody", "td", "th", "thead", "tr", "u", "ul",
}  # fmt: skip
_ATTRIBUTES = {"*": {"dir", "lang", "title"}, "a": {"href"}, "img": {"src", "alt", "width", "height"}}
_BLOCK_TAG = re.compile(r"<(p|div|li|blockquote|h1|h2|h3|pre|td|th)(\s[^>]*)?>", re.IGNORECASE)


def sanitize_body(html: str) -> str:
    cleaned = nh3.clean(
        html or "",
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        url_schemes={"http", "https", "mailto", "cid", "tel"},
        link_rel="noopener noreferrer",
        strip_comments=True,
    )

    def add_dir(match: re.Match) -> str:
        attrs = match.group(2) or ""
        if re.search(r"\sdir\s*=", attrs, re.IGNORECASE):
            return match.group(0)
        return f'<{match.group(1)} dir="auto"{attrs}>'

    return _BLOCK_TAG.sub(add_dir, cleaned).strip()
