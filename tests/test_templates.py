"""Template hygiene: mistakes that render as visible garbage on every page and no view test notices."""

from pathlib import Path

import pytest
from django.conf import settings
from django.urls import reverse

TEMPLATE_DIRS = [Path(d) for d in settings.TEMPLATES[0]["DIRS"]]


def template_files():
    for directory in TEMPLATE_DIRS:
        yield from sorted(directory.rglob("*.html"))


def test_there_are_templates_to_check():
    assert len(list(template_files())) > 20


@pytest.mark.parametrize("path", list(template_files()), ids=lambda p: str(p.relative_to(p.parents[2])))
def test_comments_close_on_their_own_line(path):
    """Django's {# #} comments are single-line: a multi-line one is printed as text."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        opened = line.count("{#")
        assert opened == line.count("#}"), f"{path}:{number}: a {{# comment must close on its line"


@pytest.mark.django_db
def test_no_template_syntax_leaks_into_a_page(alice_client):
    for url in (reverse("home"), reverse("mailsync:inbox"), reverse("mailsync:settings")):
        html = alice_client.get(url).content.decode()
        assert "{#" not in html and "#}" not in html and "{%" not in html, url
