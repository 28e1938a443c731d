"""Fixed-window counters in the cache (shared by every web process when DJANGO_CACHE_URL is set): how
often something happened in the current window, for the product's rate limits."""

import time

from django.core.cache import cache


def count_in_window(name: str, *, window: int) -> int:
    """Count one more event under `name` in the current `window`-second window; the count so far."""
    window = max(1, window)
    key = f"ratelimit:{name}:{int(time.time() // window)}"
    if cache.add(key, 1, timeout=window):
        return 1
    try:
        return cache.incr(key)
    except ValueError:  # expired between add() and incr()
        cache.set(key, 1, timeout=window)
        return 1
