"""A first sync keeps the planner's statistics of the tables it fills fresh (mailboxes.tuning)."""

import pytest
from django.apps import apps
from django.db import connection, transaction

from crm.models import User
from mailsync.mailboxes import tuning
from mailsync.models import EmailThread

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="planner statistics are PostgreSQL's"),
]


def _estimated_rows(table: str) -> float:
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples FROM pg_class WHERE relname = %s", [table])
        return cursor.fetchone()[0]


def _flush_table_counters() -> None:
    """Row counters reach pg_stat_user_tables when the session goes idle, at most once a second."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def test_tables_grown_past_their_statistics_are_analyzed_and_only_those():
    owner = User.objects.create_user(email="stats@company.test", password="x")
    tuning.refresh_statistics()
    EmailThread.objects.bulk_create(EmailThread(owner=owner, subject=f"t{n}") for n in range(3 * tuning.STALE_ROWS))
    _flush_table_counters()

    assert "mailsync_emailthread" in tuning.refresh_statistics()
    assert _estimated_rows("mailsync_emailthread") >= 3 * tuning.STALE_ROWS
    _flush_table_counters()
    assert tuning.refresh_statistics() == []  # nothing changed since: no second ANALYZE

    EmailThread.objects.bulk_create(EmailThread(owner=owner, subject=f"u{n}") for n in range(tuning.STALE_ROWS))
    _flush_table_counters()
    assert tuning.refresh_statistics() == []  # a third more rows: the plans stay right

    EmailThread.objects.bulk_create(EmailThread(owner=owner, subject=f"v{n}") for n in range(tuning.STALE_ROWS))
    _flush_table_counters()
    assert tuning.refresh_statistics() == ["mailsync_emailthread"]  # two thirds more: analyzed again
    assert _estimated_rows("mailsync_emailthread") >= 5 * tuning.STALE_ROWS


def test_nothing_is_analyzed_inside_a_transaction():
    with transaction.atomic():
        assert tuning.refresh_statistics() == []


def test_the_message_table_is_analyzed_without_its_bodies():
    statement = tuning._analyze_statement("mailsync_emailmessage")
    assert '"message_key"' in statement and '"account_id"' in statement
    assert '"body_text"' not in statement and '"body_html"' not in statement and '"search_terms"' not in statement
    assert '"snippet"' not in statement and '"from_name"' not in statement  # free text nobody looks up
    assert '"message_id"' in statement and '"from_address"' in statement and '"thread_id"' in statement
    with connection.cursor() as cursor:
        cursor.execute(statement)  # valid SQL for the current schema
        cursor.execute(tuning._analyze_statement("mailsync_messageparticipant"))
    for table, columns in tuning._NOT_LOOKED_UP.items():  # each still a column of its table
        model = next(m for m in apps.get_app_config("mailsync").get_models() if m._meta.db_table == table)
        assert columns <= {field.column for field in model._meta.concrete_fields}, table


def test_a_failed_analyze_never_fails_the_sync(monkeypatch, caplog):
    owner = User.objects.create_user(email="stats@company.test", password="x")
    EmailThread.objects.bulk_create(EmailThread(owner=owner, subject=f"t{n}") for n in range(3 * tuning.STALE_ROWS))
    _flush_table_counters()
    monkeypatch.setattr(tuning, "_analyze_statement", lambda table: f"ANALYZE {table} (no_such_column)")
    assert tuning.refresh_statistics() == []
    assert "could not refresh the planner's statistics" in caplog.text
    assert EmailThread.objects.count() == 3 * tuning.STALE_ROWS  # the connection still works


def test_rows_written_just_before_are_counted_without_waiting_for_the_statistics():
    """A session's row counts reach pg_stat_user_tables at most once a second unless flushed: the rows of
    the batch just written are counted all the same (refresh_statistics flushes them first)."""
    owner = User.objects.create_user(email="stats@company.test", password="x")
    tuning.refresh_statistics()
    _flush_table_counters()  # the session's last flush is now: the next one would wait a second
    EmailThread.objects.bulk_create(EmailThread(owner=owner, subject=f"t{n}") for n in range(3 * tuning.STALE_ROWS))
    assert "mailsync_emailthread" in tuning.refresh_statistics()


def _setting(name: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting(%s)", [name])
        return cursor.fetchone()[0]


def test_bulk_write_transactions_price_index_lookups_as_in_memory_and_only_they():
    before = _setting("random_page_cost")
    with transaction.atomic():
        tuning.tune_planner()
        assert float(_setting("random_page_cost")) == tuning.INDEX_LOOKUP_PAGE_COST
        assert _setting("jit") == "off"
    assert _setting("random_page_cost") == before  # SET LOCAL: the session's own value is back
    with transaction.atomic():
        tuning.tune_bulk_write(lz4_bodies=True)
        assert float(_setting("random_page_cost")) == tuning.INDEX_LOOKUP_PAGE_COST
    tuning.tune_bulk_write(lz4_bodies=False)  # outside a transaction: nothing to set
    assert _setting("random_page_cost") == before


def test_a_lower_random_page_cost_of_the_server_is_kept():
    with connection.cursor() as cursor:
        cursor.execute("SET random_page_cost = 0.5")
    try:
        with transaction.atomic():
            tuning.tune_planner()
            assert float(_setting("random_page_cost")) == 0.5
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET random_page_cost")
