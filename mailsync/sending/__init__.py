"""Sending: everything that writes mail out, through the user's own mailbox.

Owns: drafts and the outgoing messages (models.outgoing), with
- `addresses`: recipient lists as typed -> checked addresses (W4: the bad character is named);
- `mime`: the bytes of a message (pure: multipart text + HTML, cid: inline images, attachments,
  In-Reply-To / References / Thread-Index, nh3-sanitised HTML with dir="auto", no header injection);
- `selectors`: reads with the access rule (an outgoing message is its owner's alone), autocomplete;
- `services`: drafts, attachments, queueing (Message-ID and MIME fixed before anything leaves), undo,
  send later, retry, limits of the provider (size, recipients);
- `delivery`: the worker side (never twice, never lost: the delivery lock, recovery through the Sent
  folder, the Sent copy exactly once, the CRM's copy ingested at once);
- `cleanup`: drafts nobody typed in (opened from a link and left) go after a day;
- `tasks`: send_outgoing and the beat sweep send_due_mail.
Delivery failures (bounces) are recognised and matched at ingestion (`sync.bounces`, `sync.delivery_reports`);
`selectors.delivery_failures_of` reads them for the pages.
- `tracking`: open and click tracking (links rewritten and the pixel added at queue time, signed URLs,
  the people-or-machines classifier, summaries), `tracking_views` / `tracking_urls`: its endpoints.

May import: `accounts` (provider presets: limits, an automatically filed Sent copy), `sync` (to ingest
the Sent copy like any other message, the session lock), `linking`, `mailboxes`, `connection` (the
SMTP settings and credentials of an account, and recording a failure on it), `models`, `protocols`,
and `crm`. The pages that compose and reply live in `workspace` and call in; nothing below imports
sending, and `inbound` (Smart BCC) is its independent sibling.
"""
