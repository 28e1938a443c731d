"""Mailboxes: which list (Inbox, Sent, Archive, Trash) each message is in, the list rows and their search.

Owns:
- `placement`: a message's mailbox (`place`), the list rows (MailboxEntry) recomputed by every write
  that changes what a list shows (`refresh_mailboxes`), and the repair (`rebuild_all`);
- `search`: the full-text documents of the list rows (PostgreSQL), written after the commit;
- `words`: what a word is to search, for the documents and the search box (pure Python: parsing uses it);
- `locks`: the per-owner mail lock that ingestion, list placement and the bulk actions all take;
- `tuning`: what the transactions of bulk mail writes set for themselves (no JIT);
- `tasks`: the Celery task that indexes changed rows for search.

May import: `models` and `crm`. Nothing else of mail sync: ingestion (`sync`), blocking (`linking`)
and the bulk actions (`workspace`) call in after their writes.
"""
