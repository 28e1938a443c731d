"""Accounts: a user's mail accounts and what the user does with them.

Owns:
- `services`: connect (with its settings resolved from a provider preset), test, re-authenticate,
  pause, resume and remove an account, reset a folder's sync state; the writes that start a sync
  enqueue it (`mailsync.sync.tasks`) after the commit;
- `providers`: presets of the common providers (servers, security, limits, app-password and OAuth needs)
  and detection by address or MX record;
- `health`: what an account's state means to its owner and to support (working, syncing, needs attention);
- `selectors`: the user's accounts, the one access check (`get_account_for_user`) and the status page's reads.

May import: `sync` (to start syncs and for the folder order), `connection`, `linking`, `mailboxes`,
`models`, `protocols`, and `crm`. Never `workspace`, `inbound`, `sending` or the entry points (admin,
urls, tasks): those sit above and call in.
"""
