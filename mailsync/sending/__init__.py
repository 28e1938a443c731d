"""Sending (the next issues): the place for everything that writes mail out.

Will own: drafts, MIME building, the outbox of messages to send (written in the same transaction as
the draft that is sent), delivery through `mailsync.protocols.smtp`, the copy in the Sent folder,
templates, signatures, tracking and bounces, with their tasks in `sending/tasks.py`.

May import: `accounts` (provider presets: limits, an automatically filed Sent copy), `sync` (to ingest
the Sent copy like any other message and to enqueue a sync), `linking`, `mailboxes`, `connection` (the
SMTP settings and credentials of an account, and recording a failure on it), `models`, `protocols`,
and `crm`. The pages that compose and reply live in `workspace` and call in; nothing below imports
sending, and `inbound` (Smart BCC) is its independent sibling.
"""
