"""Settings > Email sync > "Sync past emails" in real Chromium against the test Dovecot (S4).

The sync runs the way it does in production: the page's POST enqueues the sync_account task
(mailsync.sync.tasks) on commit, and a real Celery worker (in a thread of this process, in-memory broker)
runs it while the page polls its progress bar. Nothing is eager here, so the bar is seen moving, not just finished.
"""

import datetime as dt
import time

import pytest

from conftest import browser_login
from mailsync.models import EmailAccount
from mailsync.sync import engine, tasks
from tests.test_sync import deliver, live, make_account

pytestmark = [pytest.mark.browser, pytest.mark.dovecot, pytest.mark.django_db(transaction=True)]

# Enough mail for several fetch batches (engine.FETCH_BATCH), so the bar has steps between 0 and 100.
PAST_MESSAGES = 3000
RECENT_MESSAGES = 3


@pytest.fixture
def celery_worker_thread(transactional_db):
    """A real Celery worker in a thread (memory broker) instead of the suite's eager mode."""
    from celery.contrib.testing.worker import start_worker

    from crm.celery import app

    saved = {name: app.conf[name] for name in ("task_always_eager", "broker_url", "broker_transport_options")}
    app.conf.update(task_always_eager=False, broker_url="memory://", broker_transport_options={})
    _forget_broker_connections(app)
    try:
        # Every queue, as `make run`'s worker and the production workers consume them (a past-email sync
        # goes to "sync-bulk").
        queues = ["celery", tasks.SYNC_QUEUE, tasks.BULK_QUEUE]
        with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=60, queues=queues):
            yield app
    finally:
        app.conf.update(saved)
        _forget_broker_connections(app)


def _forget_broker_connections(app) -> None:
    """Earlier tests may have made Celery open its producer pool on the configured broker (var/broker);
    without this, .delay() would keep publishing there and the memory-broker worker would wait forever."""
    app._pool = None
    app.amqp._producer_pool = None


def test_past_sync_progress_bar_moves_to_100(page, alice, dovecot, mail_user, celery_worker_thread, monkeypatch):
    account = make_account(alice, mail_user, dovecot)
    deliver(dovecot, mail_user, RECENT_MESSAGES, days_ago=1, prefix="Recent")
    deliver(dovecot, mail_user, PAST_MESSAGES, days_ago=40, prefix="Older")
    deliver(dovecot, mail_user, 2, days_ago=200, prefix="Ancient")
    engine.sync_account(account.pk)  # the initial sync: only the last 3 days
    assert live(account).count() == RECENT_MESSAGES

    # The bar is polled every second; a fast machine syncs these 3,000 messages in less. Each batch is
    # held a moment after it is written, so the bar's steps are seen whatever the machine's speed.
    write = engine._write

    def write_then_wait(*args, **kwargs):
        write(*args, **kwargs)
        time.sleep(0.4)

    monkeypatch.setattr(engine, "_write", write_then_wait)

    browser_login(page, alice)
    page.goto("/mail/settings/")
    section = page.locator(f"#past-sync-{account.pk}")
    section.locator("select[name=months]").select_option("3")
    started = time.monotonic()
    section.locator("button", has_text="Sync past emails").click()

    bar = page.locator(f"#past-sync-progress-{account.pk}")
    status = page.locator(f"#past-sync-status-{account.pk}")
    seen: list[int] = []
    texts: set[str] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        value = int(bar.get_attribute("value"))
        if not seen or seen[-1] != value:
            seen.append(value)
            texts.add(status.inner_text().strip())
        if value == 100:
            break
        page.wait_for_timeout(100)
    elapsed = time.monotonic() - started

    assert seen and seen[-1] == 100, (seen, texts)
    assert any(0 < value < 100 for value in seen), (seen, texts)  # the bar moved while the worker fetched
    assert seen == sorted(seen)  # never backwards
    assert any(f"of ~{PAST_MESSAGES:,} messages" in text for text in texts), texts
    assert f"Done: {PAST_MESSAGES:,} messages of the last 3 months" in status.inner_text()
    assert page.locator(f"#past-sync-{account.pk}[hx-trigger]").count() == 0  # polling stopped

    account.refresh_from_db()
    assert account.past_sync_state == "done" and account.past_sync_done == PAST_MESSAGES
    assert live(account).count() == RECENT_MESSAGES + PAST_MESSAGES
    assert not live(account).filter(subject__startswith="Ancient").exists()
    print(f"\npast sync of {PAST_MESSAGES} messages seen in the browser: {elapsed:.1f} s, bar values {seen}")
    assert account.past_sync_finished_at - account.past_sync_started_at < dt.timedelta(seconds=120)
    assert EmailAccount.objects.get(pk=account.pk).state == EmailAccount.State.SYNCING
