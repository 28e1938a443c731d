"""Query planning and storage for the bulk writes of mail (PostgreSQL): what one transaction sets for
itself (SET LOCAL: that transaction only, no schema change; neither changes a result).

- No JIT: PostgreSQL compiles a query to machine code when its estimated cost is high, as it is for
  set-based statements over a large message table, yet these run in tens of milliseconds: the
  compilation took longer than the work. Measured on an initial sync of 5,000 messages (issue 18):
  ~40 ms of JIT per search-document INSERT and per thread-counter SELECT; 8.7 s -> 6.8 s in all.
- lz4 for bodies (ingestion): bodies are TOASTed; lz4 compresses them several times faster than the
  default pglz (measured: message inserts take half the time). Values remember their method, so
  reading needs nothing. Skipped when the server lacks lz4.
"""

from django.db import connection

_LZ4_AVAILABLE: bool | None = None


def without_jit() -> None:
    """No JIT compilation until the end of the current transaction (call inside transaction.atomic)."""
    tune_bulk_write(lz4_bodies=False)


def tune_bulk_write(*, lz4_bodies: bool) -> None:
    """No JIT, and with `lz4_bodies` lz4 TOAST compression, until the end of the current transaction:
    one statement (plus, once per process, the question whether the server has lz4)."""
    global _LZ4_AVAILABLE
    if connection.vendor != "postgresql" or not connection.in_atomic_block:
        return
    with connection.cursor() as cursor:
        if lz4_bodies and _LZ4_AVAILABLE is None:
            cursor.execute("SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'")
            row = cursor.fetchone()
            _LZ4_AVAILABLE = bool(row and row[0])
        if lz4_bodies and _LZ4_AVAILABLE:
            cursor.execute(
                "SELECT set_config('jit', 'off', true), set_config('default_toast_compression', 'lz4', true)"
            )
        else:
            cursor.execute("SELECT set_config('jit', 'off', true)")
