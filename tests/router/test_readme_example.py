"""The Router example in docs/readme/router.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "readme" / "router.md"


def test_router_example_runs_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert code is not None
    exec(compile(code.group(1), str(DOC), "exec"), {"__name__": "__main__"})
    assert capsys.readouterr().out == "invoice for order-1 req-42\n"
