"""The shape of mailsync: one package per sub-domain, imports pointing one way (.importlinter), stable task names.

`make test` runs `lint-imports` on the real code; these tests prove that the contracts bite: a copy of
the code with one deliberately bad import fails, naming the importing and the imported module.
"""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
ROOT_PACKAGES = ("mailsync", "crm", "contacts", "deals", "leads", "projects")
OLD_TASK_NAMES = {
    "mailsync.tasks.sync_account",
    "mailsync.tasks.enqueue_due_syncs",
    "mailsync.tasks.apply_server_actions",
    "mailsync.tasks.link_threads",
    "mailsync.tasks.relink_record",
    "mailsync.tasks.index_mailbox_for_search",
}
# Tasks added since, under the same naming scheme (mailsync.sending.tasks).
NEW_TASK_NAMES = {"mailsync.tasks.send_outgoing", "mailsync.tasks.send_due_mail"}


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(cwd / ".importlinter")],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(cwd), "NO_COLOR": "1", "COLUMNS": "200"},
    )


@pytest.fixture(scope="module")
def code_copy(tmp_path_factory) -> Path:
    """The project's packages and import contract, copied so that a test can break them."""
    target = tmp_path_factory.mktemp("architecture")
    shutil.copy(ROOT / ".importlinter", target / ".importlinter")
    for package in ROOT_PACKAGES:
        shutil.copytree(ROOT / package, target / package, ignore=shutil.ignore_patterns("__pycache__"))
    return target


@pytest.fixture
def broken(code_copy):
    """Append a line to a module of the copy; the original comes back after the test."""
    changed: dict[Path, str | None] = {}

    def add(module: str, line: str) -> None:
        path = code_copy / (module.replace(".", "/") + ".py")
        changed.setdefault(path, path.read_text() if path.exists() else None)
        path.write_text((path.read_text() if path.exists() else "") + "\n" + line + "\n")

    yield add
    for path, text in changed.items():
        if text is None:
            path.unlink()
        else:
            path.write_text(text)


def test_the_real_code_keeps_every_contract():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_untouched_copy_keeps_every_contract(code_copy):
    result = lint_imports(code_copy)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "line", "expected"),
    [
        # A lower layer importing a higher one, hidden inside a function: still refused.
        (
            "mailsync.protocols.imap",
            "def _lazy():\n    from mailsync.sync import engine  # noqa",
            [
                "mailsync.protocols is not allowed to import mailsync.sync",
                "mailsync.protocols.imap -> mailsync.sync.engine",
            ],
        ),
        # The knot this layout untied: accounts starts syncs, so sync may not call back into accounts.
        (
            "mailsync.sync.engine",
            "def _lazy():\n    from mailsync.accounts import services  # noqa",
            [
                "mailsync.sync is not allowed to import mailsync.accounts",
                "mailsync.sync.engine -> mailsync.accounts.services",
            ],
        ),
        # Domain code enqueueing through the top-level task registry would point up again.
        (
            "mailsync.mailboxes.placement",
            "def _lazy():\n    from mailsync import tasks  # noqa",
            [
                "mailsync.mailboxes is not allowed to import mailsync.tasks",
                "mailsync.mailboxes.placement -> mailsync.tasks",
            ],
        ),
        # Independent siblings stay independent.
        (
            "mailsync.mailboxes.placement",
            "from mailsync.connection import config  # noqa",
            ["mailsync.mailboxes is not allowed to import mailsync.connection"],
        ),
        # A cycle inside one package (the engine holds the lock; the lock must not need the engine).
        (
            "mailsync.sync.lock",
            "def _lazy():\n    from mailsync.sync import engine  # noqa",
            [
                "No cycles are allowed in mailsync.sync",
                ".lock -> .engine",
            ],
        ),
        # Parsing runs in parse workers without Django settings.
        (
            "mailsync.sync.parsing",
            "def _lazy():\n    from django.conf import settings  # noqa",
            [
                "mailsync.sync.parsing is not allowed to import django",
                "mailsync.sync.parsing -> django (l.",
            ],
        ),
        # The protocols know nothing of the ORM.
        (
            "mailsync.protocols.smtp",
            "from mailsync.models import EmailAccount  # noqa",
            [
                "mailsync.protocols is not allowed to import mailsync.models",
                "mailsync.protocols.smtp -> mailsync.models",
            ],
        ),
    ],
    ids=["lazy-upward", "sync-to-accounts", "task-registry", "independent", "cycle-in-package", "parsing", "protocols"],
)
def test_a_bad_import_fails_naming_both_modules(broken, code_copy, module, line, expected):
    broken(module, line)
    result = lint_imports(code_copy)
    assert result.returncode != 0
    output = " ".join(result.stdout.split())
    for text in expected:
        assert text in output, result.stdout


def test_a_new_module_at_the_top_must_be_placed_in_a_layer(broken, code_copy):
    broken("mailsync.helpers", "X = 1")
    result = lint_imports(code_copy)
    assert result.returncode != 0
    assert "mailsync.helpers" in result.stdout


def test_every_import_of_a_mailsync_module_resolves():
    """import-linter cannot see an import of a module that does not exist (it drops it), so a stale path
    left inside a function after a move would slip past the contracts and fail only when it runs."""
    import importlib.util

    missing = []
    for path in sorted((ROOT / "mailsync").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        package = parts[:-1]  # a module and a package's __init__ both import relative to their package
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = list(package[: len(package) - node.level + 1]) if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                names = [f"{module}.{alias.name}" for alias in node.names] if not node.module else []
            elif isinstance(node, ast.Import):
                module, names = "", [alias.name for alias in node.names]
            else:
                continue
            for name in ([module] if module else []) + names:
                if not name.startswith("mailsync"):
                    continue
                if importlib.util.find_spec(name) is None and (name in names and importlib.util.find_spec(module)):
                    continue  # `from package import name` where name is an attribute, not a module
                if importlib.util.find_spec(name) is None:
                    missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert missing == []


def test_mailsync_keeps_at_most_eight_flat_modules_and_documents_every_package():
    package = ROOT / "mailsync"
    flat = sorted(path.name for path in package.glob("*.py"))
    assert len(flat) <= 8, flat
    subpackages = [path for path in package.iterdir() if (path / "__init__.py").exists()]
    domain = {"accounts", "connection", "linking", "mailboxes", "models", "protocols", "sending", "sync", "workspace"}
    assert domain <= {path.name for path in subpackages}
    for name in domain:
        docstring = ast.get_docstring(ast.parse((package / name / "__init__.py").read_text())) or ""
        assert "May import" in docstring and ("Owns" in docstring or "Will own" in docstring), name


def test_task_names_are_the_ones_queued_before_the_split():
    from crm.celery import app

    app.autodiscover_tasks(force=True)
    registered = {name for name in app.tasks if name.startswith("mailsync.")}
    assert registered == OLD_TASK_NAMES | NEW_TASK_NAMES
    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        assert entry["task"] in app.tasks

    from mailsync import tasks
    from mailsync.linking import tasks as linking_tasks
    from mailsync.sync import tasks as sync_tasks

    # The old module path still names the same task objects (compatibility for code and shells).
    def real(task):
        return task._get_current_object()

    assert real(tasks.sync_account) is real(sync_tasks.sync_account) is app.tasks["mailsync.tasks.sync_account"]
    assert real(tasks.link_threads) is real(linking_tasks.link_threads) is app.tasks["mailsync.tasks.link_threads"]
