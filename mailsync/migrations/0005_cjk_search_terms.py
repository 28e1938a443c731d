"""Search in Chinese, Japanese and Korean text (PostgreSQL only).

PostgreSQL's parser keeps a run of CJK characters as one word ("明日の会議について"), so no word of it
could be found. mailsync_cjk_terms(text) returns every two-character piece of each run, plus its last
character, which the search documents add to the text (mailsync.mailboxes.search) and the query side matches
(mailsync.workspace.inbox.search). Documents written before this migration get the pieces when they are rebuilt
(`manage.py rebuild_mailboxes`).
"""

from django.db import migrations

# Hiragana + Katakana, CJK extension A, CJK unified ideographs, compatibility ideographs, Hangul syllables.
# Kept in step with mailsync.workspace.inbox.CJK_RUN_RE.
CJK_CLASS = r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]"

CREATE = rf"""
CREATE OR REPLACE FUNCTION mailsync_cjk_terms(t text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT coalesce(string_agg(substr(r.m[1], i, 2), ' '), '')
  FROM regexp_matches(t, '{CJK_CLASS}{{2,}}', 'g') AS r(m)
  CROSS JOIN LATERAL generate_series(1, char_length(r.m[1])) AS i
$$;
"""

DROP = "DROP FUNCTION IF EXISTS mailsync_cjk_terms(text);"


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [
        ("mailsync", "0004_pending_server_actions"),
    ]

    operations = [migrations.RunPython(create, drop)]
