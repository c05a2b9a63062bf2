"""What every CLI test runs in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The process environment for a CLI run: no eventmill setting of the machine's
    (``EVENTMILL_*``, ``RAZORPAY_WEBHOOK_SECRET``) leaks in, the data directory is the
    test's own, and tables are wide enough not to wrap."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("EVENTMILL_") and k != "RAZORPAY_WEBHOOK_SECRET"
    }
    return {**clean, "EVENTMILL_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "250"}
