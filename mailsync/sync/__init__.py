"""Sync: a mail account's server -> the database, exactly once, and the CRM's changes -> the server.

Owns:
- `engine`: one sync run of one account (folders and their roles, incremental CONDSTORE / QRESYNC
  passes, the initial and past-email windows, server deletions) and which accounts are due;
- `lock`: one sync per account at a time (PostgreSQL advisory lock, or a lease row on SQLite);
- `outbox`: replay of the CRM's changes that the server must hear of (read state, archive, delete),
  in order, before every sync reads the server and from its own task;
- `ingest`: raw messages (fetched, imported from files, or filed by Smart BCC) -> stored mail:
  identity, upserts, attachments, locations, then list placement and the follow-up work;
- `threads`: conversation threading (references, provider thread ids, subjects);
- `parsing`: raw RFC 5322 bytes -> ParsedEmail, pure Python (no Django), safe on hostile input;
- `bounces`: is a message a delivery failure report, for which recipients, how final, about which
  message (pure, run by parsing in the parse workers; a contract keeps it free of Django);
- `delivery_reports`: at ingestion, a report's failures -> DeliveryFailure rows matched to the owner's
  sent message (also when the sent copy comes later), the person's address marked as bouncing. It lives
  here, not in `sending`, because ingestion must do it and sync never imports sending; what sending shows
  of it is a read (`sending.selectors.delivery_failures_of`);
- `watcher`: the IDLE watcher (`manage.py sync_mail`): its share of the accounts held in IDLE in one
  loop; a change enqueues a sync within a second (it never syncs itself);
- `leases`: which watcher watches which account (database leases, heartbeat, takeover, fair share);
- `tasks`: the Celery tasks of sync (`sync_account` on the "sync" / "sync-bulk" queues,
  `enqueue_due_syncs`, `apply_server_actions`).

May import: `linking` (follow-up linking and blocking after ingestion), `mailboxes`, `connection` (how
to reach an account's server and record a failure), `models`, `protocols`, and `crm` / `contacts`.
Never `accounts`, `inbound`, `sending`, `workspace` or the entry points: they start syncs, sync
never calls them.
"""
