"""The layer rules hold, and `lint-imports` (run by `make lint`) catches a break of them:
a module importing a higher layer, a feature importing another, an import cycle."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the package and its import contracts."""
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _append(tree: Path, module: str, line: str) -> None:
    path = tree / "src" / Path(*module.split(".")).with_suffix(".py")
    path.write_text(path.read_text() + f"\n{line}\n")


def test_the_package_keeps_every_contract(tree: Path) -> None:
    done = _lint(tree)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("eventmill.pubsub.memory", "import eventmill.store  # noqa", "Layers"),
        ("eventmill.store.events", "from eventmill.web import errors  # noqa", "Layers"),
        ("eventmill.delivery.fanout", "import eventmill.ingest  # noqa", "Layers"),
        ("eventmill.events.envelope", "import eventmill.events.registry  # noqa", "cycles"),
    ],
)
def test_a_violation_breaks_the_lint(tree: Path, module: str, line: str, broken: str) -> None:
    _append(tree, module, line)
    done = _lint(tree)
    assert done.returncode != 0
    assert "0 broken" not in done.stdout
    assert broken in done.stdout.split("Broken contracts", 1)[1]
