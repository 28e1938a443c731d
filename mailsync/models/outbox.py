"""Changes made in the CRM that the mail server must hear of (replayed by mailsync.sync.outbox)."""

from django.db import models

from .accounts import EmailAccount


class PendingServerAction(models.Model):
    """A bulk action still to be repeated in the mail account (mailsync.actions): an outbox row written in
    the same transaction as the CRM change. The task after the commit and every sync (before it reads the
    server's flags and folders) replay an account's rows in order; a row goes once the server has it. So
    a crash after the commit, a paused account, one needing re-authentication or a dead server delay the
    change and never lose it, and a sync cannot undo a read / unread the server has not heard of yet."""

    account = models.ForeignKey(EmailAccount, on_delete=models.CASCADE, related_name="pending_server_actions")
    action = models.CharField(max_length=10)
    message_ids = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["pk"]

    def __str__(self) -> str:
        return f"{self.action} x{len(self.message_ids)} on account {self.account_id}"
