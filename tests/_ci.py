"""What a test does when something it needs is missing (Chromium, PostgreSQL, Node).

Under CI (`$CI` set) nothing a test needs may be missing: the test fails
with the reason. On a developer's machine it is skipped with the reason, so
a partial set-up still runs the rest of the suite.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def skip_or_fail(reason: str) -> NoReturn:
    """Fail the test under CI, skip it otherwise, saying why."""
    if os.environ.get("CI"):
        pytest.fail(reason + " (CI is set: this test may not be skipped)", pytrace=False)
    pytest.skip(reason)
