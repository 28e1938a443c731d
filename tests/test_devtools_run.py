"""`make run`'s supervisor (devtools/run.py): Ctrl-C stops every program once, and one dying stops all."""

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

# A stand-in program: records every stop signal it gets in its file, and exits on the first one.
CHILD = textwrap.dedent(
    """
    import signal, sys, time
    log = open(sys.argv[1], "a", buffering=1)
    def stop(signum, frame):
        log.write(signal.Signals(signum).name + "\\n")
        time.sleep(0.3)  # finishing its work: a second signal now would be the bug
        sys.exit(0)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    log.write("started\\n")
    if len(sys.argv) > 2:
        time.sleep(float(sys.argv[2]))
        sys.exit(3)
    while True:
        time.sleep(0.1)
    """
)


def supervise(tmp_path: Path, *, die_after: float | None = None) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    logs = [tmp_path / f"{name}.log" for name in ("worker", "watcher", "web")]
    extra = [] if die_after is None else [str(die_after)]
    commands = [
        ("worker", [sys.executable, str(script), str(logs[0])], int(signal.SIGTERM)),
        ("watcher", [sys.executable, str(script), str(logs[1]), *extra], int(signal.SIGINT)),
        ("web", [sys.executable, str(script), str(logs[2])], int(signal.SIGINT)),
    ]
    code = f"import sys, devtools.run as run; run.programs = lambda python, port: {commands!r}; sys.exit(run.main([]))"
    process = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parents[1], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while not all(log.exists() and "started" in log.read_text() for log in logs):
        assert time.monotonic() < deadline, "the programs did not start"
        time.sleep(0.05)
    return process


def logs_of(tmp_path: Path) -> dict[str, list[str]]:
    return {name: (tmp_path / f"{name}.log").read_text().split() for name in ("worker", "watcher", "web")}


def test_ctrl_c_stops_each_program_exactly_once(tmp_path):
    process = supervise(tmp_path)
    process.send_signal(signal.SIGINT)  # the terminal's Ctrl-C
    time.sleep(0.05)
    process.send_signal(signal.SIGINT)  # an impatient second Ctrl-C changes nothing
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0
    assert logs_of(tmp_path) == {
        "worker": ["started", "SIGTERM"],
        "watcher": ["started", "SIGINT"],
        "web": ["started", "SIGINT"],
    }
    assert stderr.decode().count("Stopped.") == 1


def test_a_program_that_dies_stops_the_others(tmp_path):
    process = supervise(tmp_path, die_after=0.5)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 3
    assert "watcher exited with status 3" in stderr.decode()
    logs = logs_of(tmp_path)
    assert logs["worker"] == ["started", "SIGTERM"] and logs["web"] == ["started", "SIGINT"]


def test_the_worker_of_make_run_consumes_every_queue_and_the_watcher_runs(settings):
    from devtools import run
    from mailsync.sync import tasks

    commands = {name: command for name, command, _ in run.programs(sys.executable, 8000)}
    worker = commands["worker"]
    queues = {q for arg in worker if arg.startswith("--queues=") for q in arg.split("=", 1)[1].split(",")}
    routed = {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()}
    assert {settings.CELERY_TASK_DEFAULT_QUEUE, tasks.SYNC_QUEUE, tasks.BULK_QUEUE} | routed <= queues
    assert "--beat" in worker
    assert commands["watcher"][-1] == "sync_mail"
