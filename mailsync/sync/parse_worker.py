"""A parse worker process of ingest.ParsePool: `python -m mailsync.sync.parse_worker`.

Reads requests from stdin and writes answers to stdout, one at a time, each an 8-byte big-endian
length and a pickle: request (raws, own_addresses) -> answer list[ParsedEmail] (parsing.parse_many).
Imports no Django, holds no database connection.

It never outlives the process that started it, however that one ends (kill -9 included): it asks
the kernel for SIGKILL when its parent dies (Linux PR_SET_PDEATHSIG; elsewhere a thread watches the
parent id), and it exits when stdin reaches EOF, which the death of the parent also causes.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import pickle
import signal
import sys
import threading
import time
import types

PR_SET_PDEATHSIG = 1
HEADER_BYTES = 8
# No chunk of mail comes near this (a chunk is 50 messages; the server's own limits are far lower): a
# larger length is a garbled header, not a frame to allocate memory for.
MAX_FRAME_BYTES = 1 << 34


def die_with_parent(parent: int) -> None:
    """Exit as soon as `parent` (the process that started this one) is gone."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != parent:  # the parent died before prctl took effect
                    os._exit(0)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def read_exact(stream, size: int) -> bytes:
    """`size` bytes, or b"" at EOF (a short read at EOF also counts as EOF)."""
    chunks = []
    while size:
        chunk = stream.read(size)
        if not chunk:
            return b""
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def write_frame(stream, payload: bytes) -> None:
    stream.write(len(payload).to_bytes(HEADER_BYTES, "big"))
    stream.write(payload)
    stream.flush()


def read_frame(stream) -> bytes | None:
    header = read_exact(stream, HEADER_BYTES)
    if not header:
        return None
    size = int.from_bytes(header, "big")
    if size > MAX_FRAME_BYTES:
        raise ValueError(f"a frame of {size} bytes: the stream is out of step")
    payload = read_exact(stream, size)
    return payload if payload or header == bytes(HEADER_BYTES) else None


def import_parsing():
    """mailsync.sync.parsing, without running crm/__init__.py (it starts the Celery app: a second of imports
    that parsing, which only needs crm.addresses, has no use for)."""
    if "crm" not in sys.modules:
        spec = importlib.util.find_spec("crm")
        if spec is not None and spec.submodule_search_locations:
            package = types.ModuleType("crm")
            package.__path__ = list(spec.submodule_search_locations)
            sys.modules["crm"] = package
    from mailsync.sync import parsing

    return parsing


def main() -> None:
    parent = int(sys.argv[1]) if len(sys.argv) > 1 else os.getppid()
    die_with_parent(parent)
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but answers may reach the answer pipe
    parse_many = import_parsing().parse_many

    while True:
        request = read_frame(requests)
        if request is None:
            return  # EOF: the pool closed, or its process is gone
        raws, own_addresses = pickle.loads(request)  # noqa: S301 (from the parent, over a private pipe)
        try:
            write_frame(answers, pickle.dumps(parse_many(raws, own_addresses), protocol=pickle.HIGHEST_PROTOCOL))
        except BrokenPipeError:
            return


if __name__ == "__main__":
    main()
