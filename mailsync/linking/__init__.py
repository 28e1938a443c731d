"""Linking: which CRM records a conversation belongs to, who may see it, and what is blocked.

Owns:
- `rules`: automatic linking of threads to people, organizations, deals, leads and projects (L1-L7),
  sticky manual links and unlinks, relinking when a CRM record changes;
- `blocking`: blocked addresses and domains (F1): the patterns and the `is_blocked` flags of messages;
- `access`: visibility (P1-P3): the threads, messages, attachments and timelines a user may see, and
  the one access check per object (`get_thread_for_user`, `get_attachment_for_user`);
- `tasks`: the Celery tasks of linking, and the helpers the CRM apps call after their writes.

May import: `mailboxes` (blocking changes what the lists show), `models`, and the CRM apps (contacts,
deals, leads, projects, crm). Never `sync`, `accounts`, `workspace` or anything above: ingestion calls
in here after its commit, not the other way round.
"""
