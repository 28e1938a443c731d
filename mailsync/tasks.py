"""Every Celery task of mail sync, for the worker to find: crm/celery.py autodiscovers `mailsync.tasks`.

The tasks themselves live at the top of the package whose work they do (thin: load by id, call a
service), so that a follow-up only ever points down the layers (see mailsync/__init__.py):
- mailsync.sync.tasks: sync_account, enqueue_due_syncs (beat), apply_server_actions (the outbox);
- mailsync.linking.tasks: link_threads, relink_record;
- mailsync.mailboxes.tasks: index_mailbox_for_search;
- mailsync.sending.tasks: send_outgoing, send_due_mail (beat).
Each keeps its registered name `mailsync.tasks.<name>` (explicit `name=`), the one it had when they were
all defined here: tasks queued before an upgrade still run, and the beat schedule in crm/settings.py
(`mailsync.tasks.enqueue_due_syncs`) is unchanged. The names below are aliases of the same task
objects; nothing in mail sync imports this module.
"""

from .linking.tasks import link_threads, relink_record
from .mailboxes.tasks import index_mailbox_for_search
from .sending.tasks import send_due_mail, send_outgoing
from .sync.tasks import apply_server_actions, enqueue_due_syncs, sync_account

__all__ = [
    "apply_server_actions",
    "enqueue_due_syncs",
    "index_mailbox_for_search",
    "link_threads",
    "relink_record",
    "send_due_mail",
    "send_outgoing",
    "sync_account",
]
