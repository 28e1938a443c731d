"""A parse worker process of ingest.ParsePool: `python -m mailsync.sync.parse_worker`.

Reads requests from stdin and writes answers to stdout, one at a time, each an 8-byte big-endian
header and a pickle: request (raws, own_addresses) -> answer list[ParsedEmail] (parsing.parse_many).
Imports no Django, holds no database connection.

The pickles travel in the pipes, or (Linux) in an area of memory the two processes share (SharedSlots,
a memfd the parent passes down): a frame then writes only its header to the pipe. A pipe copies every
byte twice through the kernel; the shared area once, in this process (measured on 528 MB of raw mail
in frames of 50 messages: the CPU of both sides 0.9-1.1 -> 0.2-0.3 s).

It never outlives the process that started it, however that one ends (kill -9 included): it asks
the kernel for SIGKILL when its parent dies (Linux PR_SET_PDEATHSIG; elsewhere a thread watches the
parent id), and it exits when stdin reaches EOF, which the death of the parent also causes.
"""

from __future__ import annotations

import ctypes
import importlib.util
import mmap
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


# A header with this bit is a frame in the shared area: bits 40-47 its slot, bits 0-39 its size.
SHARED = 1 << 63
_SLOT_SHIFT = 40
_SIZE_MASK = (1 << _SLOT_SHIFT) - 1


class SharedSlots:
    """Memory both processes map: `count` request slots, then `count` answer slots, `slot_bytes` each.
    The parent writes a request into a free request slot; the worker answers a request of slot s in
    answer slot s. The parent frees slot s once it has read that answer, so neither side ever writes
    a slot the other may still be reading. A frame larger than a slot goes through the pipe."""

    def __init__(self, fd: int, count: int, slot_bytes: int):
        self.fd, self.count, self.slot_bytes = fd, count, slot_bytes
        self._area = mmap.mmap(fd, 2 * count * slot_bytes)

    @classmethod
    def create(cls, count: int, slot_bytes: int) -> SharedSlots | None:
        """A new area (Linux memfd: no file, gone with the last process that maps it), or None where
        there is none to be had: frames then go through the pipe."""
        make = getattr(os, "memfd_create", None)
        if make is None:
            return None
        fd = -1
        try:
            fd = make("crm-parse")
            os.ftruncate(fd, 2 * count * slot_bytes)
            return cls(fd, count, slot_bytes)
        except (OSError, ValueError):
            if fd >= 0:
                os.close(fd)
            return None

    def close(self) -> None:
        try:
            self._area.close()  # BufferError while a view is held: unmapped when the last one goes
        finally:
            os.close(self.fd)

    def write(self, slot: int, payload: bytes) -> None:
        start = slot * self.slot_bytes
        self._area[start : start + len(payload)] = payload

    def view(self, slot: int, size: int) -> memoryview:
        start = slot * self.slot_bytes
        return memoryview(self._area)[start : start + size]


def write_shared_frame(stream, shared: SharedSlots, slot: int, payload: bytes) -> None:
    """`payload` in `slot` of the area (0 <= slot < 2 * count), its header in the pipe; the caller has
    checked that it fits."""
    shared.write(slot, payload)
    stream.write((SHARED | slot << _SLOT_SHIFT | len(payload)).to_bytes(HEADER_BYTES, "big"))
    stream.flush()


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


def read_frame(stream, shared: SharedSlots | None = None) -> tuple[bytes | memoryview | None, int | None]:
    """The next frame and the slot it was in: bytes from the pipe (slot None), or a view of its slot in
    `shared` (release it once read); (None, None) at EOF. ValueError for a header that cannot be right
    (the stream is out of step)."""
    header = read_exact(stream, HEADER_BYTES)
    if not header:
        return None, None
    size = int.from_bytes(header, "big")
    if size & SHARED:
        slot, size = (size & ~SHARED) >> _SLOT_SHIFT, size & _SIZE_MASK
        if shared is None or slot >= 2 * shared.count or size > shared.slot_bytes:
            raise ValueError(f"a shared frame of {size} bytes in slot {slot}: the stream is out of step")
        return shared.view(slot, size), slot
    if size > MAX_FRAME_BYTES:
        raise ValueError(f"a frame of {size} bytes: the stream is out of step")
    payload = read_exact(stream, size)
    return (payload if payload or header == bytes(HEADER_BYTES) else None), None


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
    """argv: the parent's pid, then (optional) the shared area's fd, slot count and slot size."""
    parent = int(sys.argv[1]) if len(sys.argv) > 1 else os.getppid()
    die_with_parent(parent)
    shared = SharedSlots(*map(int, sys.argv[2:5])) if len(sys.argv) > 4 else None
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but answers may reach the answer pipe
    parse_many = import_parsing().parse_many

    while True:
        request, slot = read_frame(requests, shared)
        if request is None:
            return  # EOF: the pool closed, or its process is gone
        raws, own_addresses = pickle.loads(request)  # noqa: S301 (from the parent, over a private pipe)
        if slot is not None:
            request.release()
        answer = pickle.dumps(parse_many(raws, own_addresses), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            if slot is not None and slot < shared.count and len(answer) <= shared.slot_bytes:
                write_shared_frame(answers, shared, shared.count + slot, answer)  # request slot s -> answer slot s
            else:
                write_frame(answers, answer)
        except BrokenPipeError:
            return


if __name__ == "__main__":
    main()
