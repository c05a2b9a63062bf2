"""The Router example in the README's "Router" section runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def test_router_example_runs_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    section = README.read_text().split("\n## Router\n", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    exec(compile(code.group(1), str(README), "exec"), {"__name__": "__main__"})
    assert capsys.readouterr().out == "invoice for order-1 req-42\n"
