"""The mail lists: one row per (thread, mailbox) and its full-text document (derived data, rebuilt by
mailsync.mailboxes)."""

from django.conf import settings
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVectorField
from django.db import models
from django.db.models import Q

from .mail import EmailMessage, EmailThread, Mailbox


class MailboxEntry(models.Model):
    """One row per (thread, mailbox) that holds at least one visible message of the thread's owner.

    The Inbox / Sent / Archive / Trash lists and their counts read only this table (one indexed query
    on 200k messages). Derived data: mailsync.mailbox.refresh_mailboxes rebuilds the rows of any thread
    whose messages change (placement, read state, deletion, blocking), so it is never edited by hand.
    """

    # Indexed by mailbox_entry_list_idx (owner first) and mailbox_entry_unique (thread first).
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", db_index=False)
    thread = models.ForeignKey(EmailThread, on_delete=models.CASCADE, related_name="mailbox_entries", db_index=False)
    mailbox = models.CharField(max_length=10, choices=Mailbox.choices)
    latest_date = models.DateTimeField(help_text="Date of the thread's latest visible message in this mailbox")
    latest_message = models.ForeignKey(EmailMessage, on_delete=models.CASCADE, related_name="+")
    message_count = models.PositiveIntegerField(default=0, help_text="Visible messages in this mailbox")
    unread_count = models.PositiveIntegerField(default=0, help_text="Unread visible messages in this mailbox")
    thread_message_count = models.PositiveIntegerField(default=0, help_text="Visible messages in the thread")
    has_attachments = models.BooleanField(default=False)

    class Meta:
        verbose_name_plural = "mailbox entries"
        constraints = [models.UniqueConstraint(fields=["thread", "mailbox"], name="mailbox_entry_unique")]
        indexes = [
            models.Index(fields=["owner", "mailbox", "-latest_date", "-thread"], name="mailbox_entry_list_idx"),
            models.Index(
                fields=["owner", "mailbox", "-latest_date", "-thread"],
                condition=Q(unread_count__gt=0),
                name="mailbox_entry_unread_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.thread_id} in {self.mailbox}"


class MailboxSearchDocument(models.Model):
    """Full-text document of one list row: the subjects, participants' names and addresses and bodies of
    the conversation's visible messages in that mailbox. Search in a list is then one table and a GIN
    index, whether a word is rare (the index) or common (the list order, stopping after a page).

    PostgreSQL only (a tsvector, `simple` configuration: mail is multilingual, and stemming for one
    language surprises the others). Other databases fall back to substring search, and this table does
    not exist there (required_db_vendor). Hence no cascade and no constraint: deleting a list row on
    SQLite must not look for its document. mailsync.mailbox writes the documents and removes those of
    deleted rows (index_for_search, rebuild_all).
    """

    entry = models.OneToOneField(
        MailboxEntry,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        primary_key=True,
        related_name="search_document",
    )
    document = SearchVectorField()

    class Meta:
        required_db_vendor = "postgresql"
        indexes = [GinIndex(fields=["document"], name="mailbox_search_gin_idx")]

    def __str__(self) -> str:
        return f"search document of {self.entry_id}"
