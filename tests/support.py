"""Helpers for tests that need real external programs (Dovecot, Chromium).

On a developer laptop without them such tests skip; in CI (CI=true) a missing program is a failure.
"""

import os
import shutil

import pytest

from devtools.net import free_port, wait_for_port  # noqa: F401  (re-exported for tests)

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require(condition: bool, reason: str) -> None:
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def require_program(path_or_name: str) -> str:
    found = shutil.which(path_or_name)
    require(found is not None, f"{path_or_name} is not installed")
    return found
