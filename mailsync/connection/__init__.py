"""Connection: how to reach a saved account's mail servers, and what happened when that failed.

Owns:
- `config`: an account's settings (AccountSettings) -> the IMAP / SMTP configs of mailsync.protocols,
  with the decrypted secret (an OAuth2 token refreshed and stored when about to expire) and the trusted
  CAs; the connection checks (`check_connection`, `check_account`);
- `state`: a failure recorded on the account (message, fix, retry backoff, "needs re-authentication")
  and its clearing; logged once per change of state or error;
- `limits`: the cap on simultaneous IMAP connections per mailbox, a database semaphore shared by every
  watcher and worker (the caps of the provider presets are registered at start by mailsync.apps).

Why a package of its own: the sync engine, the IDLE watcher, the outbox replay and sending all connect
to an account's servers, while the account services (mailsync.accounts) start syncs. With this shared
piece below them, sync never has to import accounts and the imports point one way.

May import: `models`, `protocols`, and Django. Nothing else of mail sync.
"""
