"""Ids and numbers from URLs and forms, parsed one way everywhere.

`str.isdigit()` is true for "²" and "①", which `int()` refuses (a 500), and `int()` reads "٣" or " 3"
too. Only ASCII digits are a number here, and at most 18 of them (a PostgreSQL bigint): anything else
is "no number", which each view turns into its own answer (ignored, page 1, 400 or 404).
"""

import re
from collections.abc import Iterable

_NUMBER = re.compile(r"[0-9]{1,18}")


def parse_id(raw: object) -> int | None:
    """The non-negative integer `raw` spells in ASCII digits, else None."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw if 0 <= raw < 10**18 else None
    if not isinstance(raw, str) or not _NUMBER.fullmatch(raw):
        return None
    return int(raw)


def parse_ids(raw_values: Iterable[object]) -> set[int]:
    """The valid ids among `raw_values` (the others are ignored)."""
    return {value for value in map(parse_id, raw_values) if value is not None}
