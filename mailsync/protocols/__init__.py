"""Protocols: the only code in mail sync that talks to servers outside the CRM.

Owns:
- `imap`: IMAP sessions (login, folders and their roles, CONDSTORE / QRESYNC changes, IDLE, MOVE);
- `smtp`: SMTP login checks (and, with the sending work, delivery);
- `oauth`: the OAuth2 token endpoints of Google and Microsoft, and the XOAUTH2 strings both protocols use;
- `errors`: every failure classified (`errors.MailError`), with the message and the fix users see.

May import: the standard library and third-party clients. Nothing else of mail sync and no Django ORM:
what a session needs (host, port, login, secret, trusted CA) comes in as a plain config object, so this
layer is tested against real servers without a database. Everything else in mail sync may import it.
"""
