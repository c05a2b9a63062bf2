"""The machine-readable line every benchmark ends with, read by ``benchmarks/run``.

A benchmark records figures with :func:`record` (or builds the dicts itself) and ends
with :func:`emit`, which prints ONE line of JSON as the last line of its stdout::

    {"bench": "brokers", "rows": [{...}, ...], "info": {...}}

Each row is one comparison (all keys but ``subject``, ``workload`` and ``ours`` optional):

``subject``  what is measured ("redis", "ingest", ...)
``workload`` the workload, in words ("(a) one awaiting publisher + group consumer")
``unit``     "msgs/s", "req/s", ... (default "msgs/s")
``ours``     eventmill's figure
``raw``      the raw client's figure on the same workload, same run
``raw_label`` what "raw" is ("redis-py XADD / XREADGROUP / XACK")
``raw2`` / ``raw2_label`` a second baseline (e.g. the raw client batching by hand)
``peer`` / ``peer_label`` a peer framework's figure ("FastStream 0.7")
``peer_note`` why there is no peer figure ("FastStream has no PostgreSQL broker")
``rounds``   every round's figures: ``{"ours": [...], "raw": [...], ...}``
``note``     anything else a reader needs (settings, how the clock ran)
``error``    the reason this row has no figures (the rest of the bench went on)

``info`` holds versions and settings (``{"redis-server": "7.2.4", ...}``). A bench
that prints no such line, or exits non-zero, shows as a failed row in the report.
"""

from __future__ import annotations

import atexit
import json
import sys
from pathlib import Path
from typing import Any

Row = dict[str, Any]

_rows: list[Row] = []
_emitted = False


def record(subject: str, workload: str, ours: float | None, **fields: Any) -> Row:
    """Keep one row for :func:`emit` (see the module docstring for the fields).

    A script that records rows and never calls :func:`emit` emits them when it exits
    (named after the script: ``bench_core.py`` is ``core``).
    """
    if not _rows:
        atexit.register(_emit_at_exit)
    row: Row = {"subject": subject, "workload": workload, "ours": ours, **fields}
    _rows.append(row)
    return row


def _emit_at_exit() -> None:
    if not _emitted:
        emit(Path(sys.argv[0]).stem.removeprefix("bench_"))


def rows() -> list[Row]:
    """The rows recorded so far."""
    return list(_rows)


def emit(bench: str, rows: list[Row] | None = None, **info: Any) -> None:
    """Print the final JSON line (the recorded rows unless ``rows`` is given)."""
    global _emitted
    _emitted = True
    line = json.dumps({"bench": bench, "rows": _rows if rows is None else rows, "info": info})
    sys.stdout.write("\n" + line + "\n")
    sys.stdout.flush()
