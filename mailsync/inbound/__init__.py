"""Smart BCC (SPEC B1, B2): mail sent from any client with the user's personal address in BCC is filed.

This package owns:
- the personal addresses, alternate sender addresses and their signed confirmation links (services,
  selectors, the settings page in views);
- the two inbound paths: django-anymail inbound webhooks (Mailgun, Postmark, SendGrid, Amazon SES) in
  `webhooks`, and the built-in SMTP receiver (`manage.py smart_bcc_server`, aiosmtpd) in `smtp_server`;
- the verdicts on SPF / DKIM for the From domain (`authentication`);
- `filing.file_message`: who may file (login address, connected accounts, confirmed alternates), the
  "Not filed" list with its reasons, and the hand-over to the ingest pipeline.

It may import: `mailsync.models`, the ingest pipeline (`mailsync.sync.ingest`, which threads, places and
links the mail the same way as synced mail) and `mailsync.sync.parsing` (pure, the input of ingest), and
any other layer below it (accounts, sync, linking, mailboxes, connection, models, protocols; see
.importlinter), plus `crm` and third-party libraries. Never the workspace, `sending` (its independent
sibling) or the entry points: nothing outside this package and the URL configuration imports it.
"""
