"""The unit layer (make test-unit): one test file per module, mirroring the packages; no Spark (the suite's
autouse check fails a test that starts it unmarked), real local files and the local S3 server only."""

from __future__ import annotations

import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(items):
    """Every test under tests/unit/ is a `unit` test."""
    for item in items:
        if str(item.fspath).startswith(HERE + os.sep):
            item.add_marker(pytest.mark.unit)
