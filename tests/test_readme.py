"""The README's library quickstart runs exactly as written and prints what it says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _quickstart() -> tuple[str, str]:
    text = README.read_text()
    match = re.search(
        r"<!-- quickstart:[^>]*-->\n```python\n(.*?)```\n\nIt prints:\n\n```\n(.*?)```",
        text,
        re.S,
    )
    assert match is not None, "README quickstart block not found"
    return match.group(1), match.group(2)


def test_readme_quickstart_runs_as_written(tmp_path: Path) -> None:
    code, expected = _quickstart()
    script = tmp_path / "quickstart.py"
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected
