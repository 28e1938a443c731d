"""`make run`: the web server, a Celery worker with beat, and the IDLE watcher in one terminal.

Ctrl-C stops them once and cleanly. Each program runs in a session of its own, so the terminal's
Ctrl-C reaches only this supervisor, which then asks each program to stop exactly once (the worker with
SIGTERM: a warm shutdown; the watcher and the web server with SIGINT, their Ctrl-C) and waits for them.
(A shell `trap 'kill 0'` re-signalled the whole group, itself included, in a loop: the worker printed
"Warm shutdown" thousands of times until its signal handler overflowed the stack.) If one program
dies, the others are stopped too and the exit status says so.

    python -m devtools.run [--port 8000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time

STOP_TIMEOUT = 15.0  # seconds a program may take to finish its work before it is killed


def programs(python: str, port: int) -> list[tuple[str, list[str], int]]:
    """(name, command, the signal that stops it cleanly)."""
    celery = os.path.join(os.path.dirname(python), "celery")
    return [
        (
            "worker",
            [
                celery,
                "-A",
                "crm",
                "worker",
                "--beat",
                "--loglevel=INFO",
                "--concurrency=2",
                "--pool=threads",
                # Every queue (crm/settings.py): Celery's default, new-mail syncs, initial / past syncs.
                "--queues=celery,sync,sync-bulk",
            ],
            signal.SIGTERM,
        ),
        ("watcher", [python, "manage.py", "sync_mail"], signal.SIGINT),
        ("web", [python, "manage.py", "runserver", f"127.0.0.1:{port}"], signal.SIGINT),
    ]


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(process.pid, signum)


def stop_all(running: dict[str, tuple[subprocess.Popen, int]]) -> None:
    for process, stop_signal in running.values():
        if process.poll() is None:
            _signal_group(process, stop_signal)
    deadline = time.monotonic() + STOP_TIMEOUT
    for name, (process, _) in running.items():
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"  {name} did not stop within {STOP_TIMEOUT:.0f} s: killed", file=sys.stderr)
            _signal_group(process, signal.SIGKILL)
            process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    options = parser.parse_args(argv)

    stopping = False

    def request_stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    running: dict[str, tuple[subprocess.Popen, int]] = {}
    status = 0
    try:
        for name, command, stop_signal in programs(sys.executable, options.port):
            running[name] = (subprocess.Popen(command, start_new_session=True), stop_signal)
        while not stopping:
            for name, (process, _) in running.items():
                if process.poll() is not None:
                    print(f"\n  {name} exited with status {process.returncode}: stopping the others", file=sys.stderr)
                    status = process.returncode or 1
                    stopping = True
                    break
            else:
                time.sleep(0.2)
    finally:
        # A second Ctrl-C while stopping must not interrupt the clean stop.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("\n  Stopping the web server, the worker and the watcher...", file=sys.stderr)
        stop_all(running)
        print("  Stopped.", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
