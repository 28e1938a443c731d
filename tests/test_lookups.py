"""crm.lookups: long `__in` lists as one array on PostgreSQL, same rows as Django's IN."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from crm.lookups import ARRAY_MIN_VALUES
from crm.models import User
from mailsync.models import EmailThread
from tests.mail_factories import EmailThreadFactory

pytestmark = pytest.mark.django_db

ODD = ["a,b@x.test", "{brace}@x.test", 'quo"te@x.test', "it's@x.test", "back\\slash@x.test", "späce @x.test", "NULL"]


def _sql(action) -> str:
    with CaptureQueriesContext(connection) as queries:
        action()
    return queries.captured_queries[-1]["sql"]


def test_long_lists_of_strings_find_the_same_rows_whatever_their_characters():
    users = [User.objects.create(email=email) for email in ODD]
    wanted = [user.email for user in users] + [f"nobody{n}@x.test" for n in range(ARRAY_MIN_VALUES)] + [None]
    found = set(User.objects.filter(email__in=wanted).values_list("pk", flat=True))
    assert found == {user.pk for user in users}
    sql = _sql(lambda: list(User.objects.filter(email__in=wanted)))
    if connection.vendor == "postgresql":
        assert "= ANY(" in sql


def test_long_lists_of_ids_and_foreign_keys(alice):
    threads = [EmailThreadFactory(owner=alice) for _ in range(3)]
    ids = [thread.pk for thread in threads] + list(range(10**9, 10**9 + ARRAY_MIN_VALUES))
    assert set(EmailThread.objects.filter(pk__in=ids).values_list("pk", flat=True)) == set(ids[:3])
    assert EmailThread.objects.filter(owner_id__in=[alice.pk, *range(10**9, 10**9 + ARRAY_MIN_VALUES)]).count() == 3
    assert EmailThread.objects.exclude(pk__in=ids).filter(owner=alice).count() == 0


def test_short_lists_and_other_values_keep_djangos_in():
    assert "= ANY(" not in _sql(lambda: list(User.objects.filter(pk__in=[1, 2, 3])))
    assert "= ANY(" not in _sql(lambda: list(User.objects.filter(pk__in=User.objects.values("pk"))))
    assert list(User.objects.filter(pk__in=[None] * 5)) == []  # only NULLs: nothing, as Django does


def test_long_lists_go_as_one_array_literal_written_by_join():
    """Plain strings and ints are written in PostgreSQL's array syntax by str.join (each string quoted);
    a string with a double quote or a backslash leaves the list to psycopg's adapter."""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL arrays")
    plain = [f"person{n}@x.test" for n in range(ARRAY_MIN_VALUES)]
    sql = _sql(lambda: list(User.objects.filter(email__in=[*plain, "NULL", "", " spaced "])))
    assert '= ANY(\'{"person0@x.test","person1@x.test",' in sql and ',"NULL",""," spaced "}\')' in sql
    ids = list(range(1, ARRAY_MIN_VALUES + 1))
    assert "= ANY('{1,2,3," in _sql(lambda: list(User.objects.filter(pk__in=ids)))
    escaped = _sql(lambda: list(User.objects.filter(email__in=[*plain, 'quo"te@x.test'])))
    assert '\\"' in escaped  # psycopg's escaping


def test_strings_that_look_like_array_syntax_are_matched_literally(alice):
    odd = ["NULL", " spaced ", "", "{}", "a,b", "x}y{z", "tab\there", "new\nline", "ünï"]
    threads = [EmailThreadFactory(owner=alice, subject=subject) for subject in odd]
    filler = [f"nobody {n}" for n in range(ARRAY_MIN_VALUES)]
    found = set(EmailThread.objects.filter(subject__in=[*filler, *odd]).values_list("pk", flat=True))
    assert found == {thread.pk for thread in threads}
    assert not EmailThread.objects.filter(subject__in=[*filler, "null", "spaced", "{", "a", "b"]).exists()


def test_ids_beyond_bigint_match_nothing_instead_of_failing(alice):
    thread = EmailThreadFactory(owner=alice)
    ids = [thread.pk, 2**70, *range(10**9, 10**9 + ARRAY_MIN_VALUES)]
    assert list(EmailThread.objects.filter(pk__in=ids).values_list("pk", flat=True)) == [thread.pk]
