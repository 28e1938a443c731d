"""Mail sync: the CRM's email, one package per sub-domain, imports pointing down this list only.

    admin, apps, checks, urls, tasks, management, templatetags   entry points (nothing imports them)
    workspace        the pages and the writes behind them
    inbound, sending Smart BCC | compose and send (independent siblings)
    accounts         an account's life: connect, test, re-authenticate, pause, resume, remove; health
    sync             engine, lock, outbox replay, ingest, threads, parsing, watcher
    linking          linking rules, blocking, visibility
    mailboxes, connection   list placement and search | how to reach an account's servers
    models           the tables
    protocols        IMAP, SMTP, OAuth2, classified errors; no Django

The contract is `.importlinter` at the project's root (checked by `make test`); the reasons for the cut
are in README.md ("Architecture"); each package's __init__.py says what it owns and may import.
"""
