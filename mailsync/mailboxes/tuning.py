"""Query planning and storage for the bulk writes of mail (PostgreSQL): what one transaction sets for
itself (SET LOCAL: that transaction only, no schema change; neither changes a result).

- No JIT: PostgreSQL compiles a query to machine code when its estimated cost is high, as it is for
  set-based statements over a large message table, yet these run in tens of milliseconds: the
  compilation took longer than the work. Measured on an initial sync of 5,000 messages (issue 18):
  ~40 ms of JIT per search-document INSERT and per thread-counter SELECT; 8.7 s -> 6.8 s in all.
- lz4 for bodies (ingestion): bodies are TOASTed; lz4 compresses them several times faster than the
  default pglz (measured: message inserts take half the time). Values remember their method, so
  reading needs nothing. Skipped when the server lacks lz4.
- Index lookups priced as what they are during a sync: a batch looks up its 1,000 Message-ID keys,
  thread references and the participants of the threads it touched, in tables it has just read or
  written (in memory). With the default random_page_cost (4: a disk seek per row fetched) the planner
  read the whole growing table instead (at 50,000 messages most of these lookups were sequential
  scans, 5-25 ms each). random_page_cost is lowered to 1.1 (the usual value for SSDs and cached
  data), never raised: a server configured lower keeps its value. Measured on an initial sync of
  50,000 messages (issue 18), alternating runs: the database's CPU 15.2-15.9 s -> 13.9 s with the
  setting for the whole database, 14.5-15.1 s with it set here (the transactions of mail only).
- Fresh statistics during a first sync (refresh_statistics, between batches): see SYNC_TABLES.
"""

import logging

from django.apps import apps
from django.db import DatabaseError, connection, models

logger = logging.getLogger(__name__)

_LZ4_AVAILABLE: bool | None = None


def tune_planner() -> None:
    """No JIT compilation and index lookups at their in-memory price until the end of the current
    transaction (call inside transaction.atomic): for mail's reads and writes that store no bodies."""
    tune_bulk_write(lz4_bodies=False)


# random_page_cost for the transactions of mail's bulk reads and writes (see the module's docstring).
INDEX_LOOKUP_PAGE_COST = 1.1
_PLANNING = (
    "set_config('jit', 'off', true), set_config('random_page_cost', "
    "least(current_setting('random_page_cost')::float8, %s)::text, true)"
)


def tune_bulk_write(*, lz4_bodies: bool) -> None:
    """No JIT, random_page_cost at most INDEX_LOOKUP_PAGE_COST, and with `lz4_bodies` lz4 TOAST
    compression, until the end of the current transaction: one statement (plus, once per process, the
    question whether the server has lz4)."""
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
                f"SELECT {_PLANNING}, set_config('default_toast_compression', 'lz4', true)", [INDEX_LOOKUP_PAGE_COST]
            )
        else:
            cursor.execute(f"SELECT {_PLANNING}", [INDEX_LOOKUP_PAGE_COST])


# The tables an initial sync fills and reads again in the same run (matching copies, threads, list rows,
# search documents, linking). The planner picks plans from the row counts of the last ANALYZE: when a
# first sync has grown a table far past them, it takes a 1,000-UID lookup for a few rows and filters
# every row of the folder through the list instead of using the index (measured at 50,000 messages:
# 0.6 ms for the first batch, 366 ms for the last; 2 ms with statistics). Autovacuum analyzes tables
# too, but at most once a minute per database, and behind its other work.
SYNC_TABLES = (
    "mailsync_emailmessage",
    "mailsync_messagelocation",
    "mailsync_messageparticipant",
    "mailsync_threadreference",
    "mailsync_emailthread",
    "mailsync_mailboxentry",
    "mailsync_mailboxsearchdocument",
)
STALE_ROWS = 2_000  # below this many changed rows, the plans are right whatever the statistics say


# Free text a sync never looks up (only the search box's icontains, whose estimates these statistics
# barely change): sorting the sampled values of each is as long as sampling the rows. Left out of the
# ANALYZEs during a sync (measured at 5,000 messages: 71 -> 41 ms an ANALYZE of the message table); an
# ANALYZE of some columns does not reset the table's count of changes, so autovacuum's next ANALYZE,
# of every column, still comes.
_NOT_LOOKED_UP = {
    "mailsync_emailmessage": {"snippet", "from_name", "in_reply_to", "raw"},
    "mailsync_messageparticipant": {"name"},
}


def _analyze_statement(table: str) -> str:
    """ANALYZE of the table's columns that are not TextFields (bodies and search words are never in a
    condition, and reading them, decompressing each sampled value, was most of the time of an ANALYZE
    of the message table: 722 ms -> see the README's figures) nor free text the sync never looks up."""
    model = next(model for model in apps.get_app_config("mailsync").get_models() if model._meta.db_table == table)
    skipped = _NOT_LOOKED_UP.get(table, set())
    columns = [
        connection.ops.quote_name(field.column)
        for field in model._meta.concrete_fields
        if not isinstance(field, models.TextField) and field.column not in skipped
    ]
    return f"ANALYZE (SKIP_LOCKED) {table} ({', '.join(columns)})"


def refresh_statistics() -> list[str]:
    """ANALYZE the tables of SYNC_TABLES grown by more than half the rows the planner thinks they hold
    (and by at least STALE_ROWS) since their last ANALYZE: after each batch a sync stores, outside its
    transaction. Sizes grow by half between two runs, so a mailbox of n messages costs about
    log1.5(n / STALE_ROWS) ANALYZEs (8 at 50,000), each a sample of at most 30,000 rows (measured at
    50,000 messages: 1,401-1,436 msg/s when waiting for a table to double, 1,461-1,490 with half). A
    table another ANALYZE (autovacuum) holds is left to it. Returns the tables analyzed."""
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        return []
    try:
        with connection.cursor() as cursor:
            if connection.pg_version >= 150000:
                # This session's counts of the batch it just wrote reach the statistics at most once a
                # second unless asked (PostgreSQL 15+: at the end of this statement); without it the
                # rows counted below lagged the table by several batches.
                cursor.execute("SELECT pg_stat_force_next_flush()")
            cursor.execute(
                "SELECT s.relname FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid "
                # n_live_tup, not n_mod_since_analyze: an ANALYZE of some columns does not reset the latter.
                "WHERE s.relname = ANY(%s) AND s.n_live_tup - GREATEST(c.reltuples, 0) > GREATEST(%s, c.reltuples / 2)",
                [list(SYNC_TABLES), STALE_ROWS],
            )
            stale = sorted(row[0] for row in cursor.fetchall())
            for table in stale:
                cursor.execute(_analyze_statement(table))
    except DatabaseError:  # a statement timeout, say: slower plans, never a failed sync
        logger.warning("could not refresh the planner's statistics", exc_info=True)
        return []
    return stale
