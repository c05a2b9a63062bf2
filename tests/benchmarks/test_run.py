"""``benchmarks/run``: every benchmark a subprocess; a failing one is a failed row.

Runs the runner's own functions on small scripts written here (no real benchmark, no
figures): the report must survive a benchmark that crashes, prints no JSON line, or
hangs past its timeout (which ends it with every process it started).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import io
import os
import sys
import textwrap
import time
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_runner() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("benchmarks_run", str(ROOT / "benchmarks/run"))
    spec = importlib.util.spec_from_loader("benchmarks_run", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmarks_run"] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module


run = _load_runner()


def _script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(
        f"import sys\nsys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n" + textwrap.dedent(body)
    )
    return str(path)  # absolute: Job.script is joined to benchmarks/, which it overrides


def _job(script: str, name: str, **kw: object) -> object:
    return run.Job(name, script, [], [], group="service", **kw)


GOOD = """
import _report
_report.record("ingest", "signed webhooks", 3000.0, unit="req/s", raw=4000.0,
               raw_label="bare FastAPI", short="memory bus")
print("some figures")
_report.emit("ingest", server="1.2.3")
"""


def test_a_failing_benchmark_is_a_failed_row_and_the_others_go_on(tmp_path: Path) -> None:
    jobs = [
        _job(_script(tmp_path, "good.py", GOOD), "ingest"),
        _job(_script(tmp_path, "crash.py", "raise RuntimeError('broker away')\n"), "delivery"),
        _job(_script(tmp_path, "silent.py", "print('no json here')\n"), "realtime"),
        _job(str(tmp_path / "absent.py"), "absent"),
    ]
    log = io.StringIO()
    outcomes = [run.run_job(job, True, log) for job in jobs]

    assert [o.status for o in outcomes] == ["ok", "failed", "failed", "missing"]
    assert outcomes[0].rows[0]["ours"] == 3000.0
    assert outcomes[0].info == {"server": "1.2.3"}
    assert "RuntimeError: broker away" in outcomes[1].reason
    assert "no JSON line" in outcomes[2].reason
    assert "broker away" in log.getvalue()  # the whole output is kept in the log

    meta = {
        "date": "today",
        "seconds": 1.0,
        "machine": run.machine(),
        "load_end": [0.0, 0.0, 0.0],
        "servers": {"server": "1.2.3"},
    }
    assert run.write_chart(tmp_path / "r.png", outcomes, "title")
    text = run.write_markdown(tmp_path / "r.md", outcomes, meta, True, "r.png")
    rows = [line for line in text.splitlines() if line.startswith("| ")][1:]
    assert rows[0].startswith("| ingest | signed webhooks | 3,000 req/s | 4,000 | **0.75x** |")
    assert rows[1].startswith("| delivery | FAILED |")
    assert rows[2].startswith("| realtime | FAILED |")
    assert rows[3].startswith("| absent | not yet built |")
    assert "QUICK RUN" in text
    assert (tmp_path / "r.png").stat().st_size > 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as gone
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def test_a_benchmark_past_its_timeout_is_ended_with_every_process_it_started(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "child.pid"
    body = f"""
    import subprocess, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    open({str(pid_file)!r}, "w").write(str(child.pid))
    print("started", flush=True)
    time.sleep(600)
    """
    job = _job(_script(tmp_path, "hang.py", body), "hang", quick_timeout=3.0)
    outcome = run.run_job(job, True, io.StringIO())

    assert outcome.status == "timeout"
    assert outcome.seconds < 60
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


@pytest.mark.parametrize("takes", [True, False])
def test_quick_is_passed_only_to_a_benchmark_that_takes_it(tmp_path: Path, takes: bool) -> None:
    option = "ap.add_argument('--quick', action='store_true')" if takes else ""
    body = f"""
    import argparse, _report
    ap = argparse.ArgumentParser()
    {option}
    args = ap.parse_args()
    _report.record("delivery", "quick" if getattr(args, "quick", False) else "full", 1.0)
    """
    job = run.Job("delivery", _script(tmp_path, "d.py", body), group="service")
    outcome = run.run_job(job, True, io.StringIO())
    assert outcome.status == "ok"
    assert outcome.rows[0]["workload"] == ("quick" if takes else "full")
    assert sys.executable  # the scripts ran under this interpreter


def test_update_keeps_the_report_rows_of_the_benchmarks_not_run_again(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    report.write_text(
        '{"date": "2026-12-06 01:58 UTC", "benchmarks": ['
        '{"name": "ingest", "status": "ok", "reason": "", "seconds": 60.0,'
        ' "rows": [{"subject": "ingest", "workload": "w", "ours": 1.0}], "info": {}},'
        '{"name": "delivery", "status": "failed", "reason": "printed no JSON line",'
        ' "seconds": 90.0, "rows": [], "info": {}}]}'
    )
    delivery = next(j for j in run.JOBS if j.name == "delivery")
    kept = run._kept_outcomes(report, [delivery])
    assert kept.pop("_date").reason == "2026-12-06 01:58 UTC"
    assert list(kept) == ["ingest"]  # delivery runs again: its old row is not kept
    assert kept["ingest"].rows[0]["ours"] == 1.0
    with pytest.raises(SystemExit, match="no report"):
        run._kept_outcomes(tmp_path / "absent.json", [delivery])
