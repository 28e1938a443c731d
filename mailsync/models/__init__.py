"""Mail sync data: accounts, folders, messages (with their server locations), threads and links.

Identity rules (see DESIGN.md "Rules that keep mail safe" and mailsync.sync.ingest):
- a message is unique per account by (`message_key`, `content_hash`): the hash of its Message-ID (or of
  date+from+subject+size) and a fingerprint of its content that ignores line endings and trace headers.
  Different messages that reuse a Message-ID are stored apart; copies of one message are one row;
- a copy of it on the server is unique by (folder, uidvalidity, uid) in MessageLocation;
so the same mail in two folders is one EmailMessage with two locations, and re-running a sync is an upsert.

Owns: the tables of mail sync (app_label "mailsync", table names unchanged, migrations in
mailsync/migrations), one module per aggregate, every model re-exported here by name: `accounts`
(EmailAccount, AccountAddress, MailFolder), `mail` (EmailThread, EmailMessage, MessageLocation,
MessageParticipant, Attachment, ThreadReference), `mailboxes` (MailboxEntry, MailboxSearchDocument),
`linking` (ThreadLink, BlockedAddress), `preferences` (MailSettings), `outbox` (PendingServerAction),
`outgoing` (OutgoingMessage, OutgoingAttachment: drafts and mail on its way out),
`delivery` (DeliveryFailure: what bounce reports say about sent mail), `tracking` (TrackedLink,
TrackingEvent), `smart_bcc` (SmartBcc*), `templates` (EmailTemplate, Signature, SignatureImage),
`certificates` (TrustedCertificate), `watching` (SyncWatcher, WatcherLease: which IDLE watcher holds
which account; ConnectionSlot); beside them `crypto` (credentials at rest behind EmailAccount.set_secret
/ get_secret) and `filenames` (how an attachment's name may be shown). Fields, constraints and QuerySets
only: writes live in the services of the packages above.
May import: `protocols` (the classified error of unreadable credentials), Django and the CRM's models.
Nothing else of mail sync.
"""

from .accounts import AccountAddress, AuthKind, EmailAccount, MailFolder, Security
from .certificates import TrustedCertificate
from .delivery import DeliveryFailure
from .linking import BlockedAddress, ThreadLink
from .mail import Attachment, EmailMessage, EmailThread, Mailbox, MessageLocation, MessageParticipant, ThreadReference
from .mailboxes import MailboxEntry, MailboxSearchDocument
from .outbox import PendingServerAction
from .outgoing import OutgoingAttachment, OutgoingMessage
from .preferences import MailSettings
from .smart_bcc import SmartBccAddress, SmartBccDelivery, SmartBccSender
from .templates import EmailTemplate, Signature, SignatureImage
from .tracking import TrackedLink, TrackingEvent
from .watching import ConnectionSlot, SyncWatcher, WatcherLease

__all__ = [
    "AccountAddress",
    "Attachment",
    "AuthKind",
    "BlockedAddress",
    "ConnectionSlot",
    "DeliveryFailure",
    "EmailAccount",
    "EmailMessage",
    "EmailTemplate",
    "EmailThread",
    "MailFolder",
    "MailSettings",
    "Mailbox",
    "MailboxEntry",
    "MailboxSearchDocument",
    "MessageLocation",
    "MessageParticipant",
    "OutgoingAttachment",
    "OutgoingMessage",
    "PendingServerAction",
    "Security",
    "Signature",
    "SignatureImage",
    "SmartBccAddress",
    "SmartBccDelivery",
    "SmartBccSender",
    "SyncWatcher",
    "ThreadLink",
    "ThreadReference",
    "TrackedLink",
    "TrackingEvent",
    "TrustedCertificate",
    "WatcherLease",
]
