"""Run every benchmark in this folder, one after another, and print their figures.

Usage: ``python benchmarks/run_all.py [name ...]`` (names without ``bench_`` and ``.py``,
e.g. ``core redis``). Benchmarks for a server that is not reachable report it and go on.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    if argv:
        wanted = {f"bench_{name}.py" for name in argv}
        scripts = [s for s in scripts if s.name in wanted]
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    py = platform.python_version()
    print(f"# machine: {platform.machine()} {cpu}, {os.cpu_count()} cores, Python {py}")
    failed = 0
    for script in scripts:
        print(f"\n## {script.name}", flush=True)
        rc = subprocess.call([sys.executable, str(script)], cwd=HERE.parent)
        if rc != 0:
            print(f"!! {script.name} exited with {rc}")
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
