"""Workspace: the pages of mail sync and the writes behind them.

Owns:
- the mail lists (Inbox, Sent, Archive, Trash): `inbox` (filters, search, pages), `inbox_views`,
  `inbox_urls`, and the bulk actions (`actions`: read / unread, archive, move to inbox, delete);
- conversations: `conversation_services` (link / unlink, visibility, blocking, clean-up),
  `conversation_views`, `conversation_urls`, and `display` (sanitised HTML in a sandboxed frame);
- writing mail: `compose_views`, `compose_urls` (the composer, drafts, the page of a message on its way
  out with Undo / Retry), calling mailsync.sending;
- Settings > Email sync and the status page: `settings_views`, `settings_urls`, `forms`, and
  `preferences` (folder choice, past-email sync, "Sync now", linking mode and default sharing).

May import: every domain package below (`inbound`, `sending`, `accounts`, `sync`, `linking`,
`mailboxes`, `connection`, `models`, `protocols`) and `crm`. Nothing imports the workspace except the
URL configuration (`mailsync.urls`): it is the top of mail sync's domain.
"""
