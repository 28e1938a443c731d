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
