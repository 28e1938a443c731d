"""`manage.py bench_tracking [--requests N]`: the median server time of the tracking endpoints (target < 5 ms).

Creates a user, an account and a tracked sent message with a link (all deleted again at the end, also when it
fails); then N requests to the pixel and N to a link, through the whole
middleware stack (Django's test client, no network), each from its own address so that every one is
recorded (one SELECT and one INSERT, committed, each). Prints the median and the 95th percentile of each.
"""

from __future__ import annotations

import statistics
import time
import uuid

from django.core.management.base import BaseCommand
from django.test import Client
from django.utils import timezone

from crm.models import User
from mailsync.models import EmailAccount, OutgoingMessage, TrackedLink, TrackingEvent
from mailsync.sending import tracking

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"


class Command(BaseCommand):
    help = "Median server time of the open and click tracking endpoints."

    def add_arguments(self, parser):
        parser.add_argument("--requests", type=int, default=500)

    def handle(self, *args, requests: int = 500, **options):
        user = User.objects.create_user(email=f"bench-{uuid.uuid4().hex[:8]}@bench.test", password=None)
        try:
            self._run(user, max(10, requests))
        finally:
            user.delete()  # its account, message, links and events go with it

    def _run(self, user: User, count: int) -> None:
        account = EmailAccount.objects.create(user=user, email_address=user.email, username=user.email, smtp_host="x")
        outgoing = OutgoingMessage.objects.create(
            owner=user,
            account=account,
            subject="Bench",
            tracking=True,
            state=OutgoingMessage.State.SENT,
            delivered_at=timezone.now(),
        )
        TrackedLink.objects.create(outgoing=outgoing, index=0, url="https://example.com/pricing", label="pricing")
        client = Client()
        open_path = tracking.open_url(outgoing.pk).split("/t/", 1)[1]
        click_path = tracking.click_url(outgoing.pk, 0).split("/t/", 1)[1]
        for name, path, status in (("open (pixel)", open_path, 200), ("click (redirect)", click_path, 302)):
            client.get("/t/" + path, HTTP_USER_AGENT=BROWSER, REMOTE_ADDR="192.0.2.1")  # warm-up
            timings = []
            for number in range(count):
                address = f"10.{number // 65536 % 256}.{number // 256 % 256}.{number % 256}"
                started = time.perf_counter()
                response = client.get("/t/" + path, HTTP_USER_AGENT=BROWSER, REMOTE_ADDR=address)
                timings.append((time.perf_counter() - started) * 1000)
                assert response.status_code == status
            timings.sort()
            p95 = timings[int(len(timings) * 0.95) - 1]
            self.stdout.write(
                f"{name:17} median {statistics.median(timings):.2f} ms, p95 {p95:.2f} ms "
                f"over {count} requests (target: median < 5 ms)"
            )
        recorded = TrackingEvent.objects.filter(outgoing=outgoing).count()
        self.stdout.write(f"rows recorded: {recorded} (one per request)")
