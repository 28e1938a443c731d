"""`field__in=[...]` with a long list of plain values as one array parameter on PostgreSQL.

Django writes `col IN (%s, %s, ...)` with one parameter per value, and psycopg's client-side binding
then splits the query text and quotes every value: for the thousand-value lists of mail ingestion
(message keys, UIDs, message and thread ids) that was a visible part of a sync's CPU time (issue 18).
`col = ANY(%s)` with one array means the same thing (NULLs are dropped either way) and uses the same
indexes. Only long lists of plain ints or strings on integer or text columns take this path; every
other `__in` (subqueries, dates, UUIDs, short lists, other databases) is Django's own.

The array goes as one text parameter in PostgreSQL's array syntax, written by str.join: psycopg's
list adapter quotes each element in Python (a regular expression per string), which was still ~8% of
the sync's writing time (issue 18). Strings are written quoted ("NULL", "" and spaces stay strings);
a list with a double quote or a backslash in some string is left to psycopg, which escapes them.
"""

from django.db.models import Field, ForeignObject
from django.db.models.fields.related_lookups import RelatedIn
from django.db.models.lookups import In

ARRAY_MIN_VALUES = 100
_INTEGER_TYPES = {
    "AutoField",
    "BigAutoField",
    "SmallAutoField",
    "IntegerField",
    "BigIntegerField",
    "SmallIntegerField",
    "PositiveIntegerField",
    "PositiveBigIntegerField",
    "PositiveSmallIntegerField",
}
_TEXT_TYPES = {"CharField", "TextField", "EmailField", "SlugField"}
_ARRAY_RHS = "ANY(%s)"
_INTEGER_ARRAY_RHS = "ANY(%s::bigint[])"


def _array_literal(values: list) -> tuple[str, object]:
    """(right-hand side, its one parameter) for `col = ANY(...)` of these ints or strings."""
    if type(values[0]) is int:
        if min(values) < -(2**63) or max(values) >= 2**63:
            return _ARRAY_RHS, values  # beyond bigint (a hostile id): psycopg's numeric array matches nothing
        return _INTEGER_ARRAY_RHS, "{" + ",".join(map(str, values)) + "}"
    every = "".join(values)
    if '"' in every or "\\" in every:
        return _ARRAY_RHS, values  # rare: psycopg escapes them
    return _ARRAY_RHS, '{"' + '","'.join(values) + '"}'


class _ArrayIn:
    def _array_values(self, connection) -> list | None:
        if connection.vendor != "postgresql" or not self.rhs_is_direct_value():
            return None
        try:
            values = [value for value in dict.fromkeys(self.rhs) if value is not None]
        except TypeError:  # unhashable values: Django's way
            return None
        if len(values) < ARRAY_MIN_VALUES:
            return None
        field = getattr(self.lhs, "output_field", None)
        while field is not None and field.is_relation:
            field = field.target_field
        kind = field.get_internal_type() if field is not None else ""
        if kind in _INTEGER_TYPES and all(type(value) is int for value in values):
            return values
        if kind in _TEXT_TYPES and all(type(value) is str for value in values):
            return values
        return None

    def process_rhs(self, compiler, connection):
        values = self._array_values(connection)
        if values is None:
            return super().process_rhs(compiler, connection)
        rhs, parameter = _array_literal(values)
        return rhs, [parameter]

    def get_rhs_op(self, connection, rhs):
        if rhs in (_ARRAY_RHS, _INTEGER_ARRAY_RHS):
            return f"= {rhs}"
        return super().get_rhs_op(connection, rhs)


class ArrayIn(_ArrayIn, In):
    pass


class ArrayRelatedIn(_ArrayIn, RelatedIn):
    pass


def install() -> None:
    """Replace the `in` lookup of every field (CrmConfig.ready)."""
    Field.register_lookup(ArrayIn)
    ForeignObject.register_lookup(ArrayRelatedIn)
