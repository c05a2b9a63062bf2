"""The service's garbage-collection policy: full collections walk only what is new since
the last; garbage cycles among frozen objects are reclaimed once the frozen objects
grew by a quarter; pauses are reported. Each case runs in a Python process of its own
(the policy changes collection for the whole process); ``eventmill serve`` runs it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eventmill.web.garbage import SurvivorFreezer
from tests.ingest.support import Server


def _run(code: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; it prints one JSON object last. Automatic
    collections are off there: only the code's own ``gc.collect()`` calls run (the
    policy follows those just the same), so each case's steps are exact."""
    script = (
        "import gc, json, weakref\n"
        "from eventmill.web.garbage import SurvivorFreezer\n"
        "gc.disable()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_full_collection_leaves_its_survivors_out_of_the_next() -> None:
    result = _run(
        """
        base = [[i] for i in range(100_000)]  # frozen by install()
        freezer = SurvivorFreezer()
        freezer.install()
        keep = [[i] for i in range(20_000)]  # long-lived containers, promoted below
        gc.collect()
        frozen_after_first = gc.get_freeze_count()
        in_oldest = len(gc.get_objects(generation=2))
        more = [[i] for i in range(5_000)]
        gc.collect()
        print(json.dumps({
            "frozen_after_first": frozen_after_first,
            "in_oldest": in_oldest,
            "frozen_after_second": gc.get_freeze_count(),
            "complete": freezer.complete,
        }))
        """
    )
    assert result["frozen_after_first"] >= 120_000  # type: ignore[operator]
    assert result["in_oldest"] == 0  # nothing left for the next full collection to walk
    # only what was new was walked, and frozen in its turn
    assert result["frozen_after_second"] >= result["frozen_after_first"] + 5_000  # type: ignore[operator]
    assert result["complete"] == 0


def test_without_the_policy_survivors_stay_in_the_oldest_generation() -> None:
    # The check above fails for CPython's own behaviour: the contrast shows what it tests.
    result = _run(
        """
        keep = [[i] for i in range(20_000)]
        gc.collect()
        print(json.dumps({"frozen": gc.get_freeze_count(),
                          "in_oldest": len(gc.get_objects(generation=2))}))
        """
    )
    assert result["frozen"] == 0
    assert result["in_oldest"] >= 20_000  # type: ignore[operator]


def test_a_garbage_cycle_among_frozen_objects_is_reclaimed_once_they_grew_by_a_quarter() -> None:
    result = _run(
        """
        class Node:
            peer = None

        freezer = SurvivorFreezer(growth=0.25)
        freezer.install()
        a, b = Node(), Node()
        a.peer, b.peer = b, a
        probe = weakref.ref(a)
        gc.collect()  # a and b survive (still referred to): frozen
        del a, b  # now a garbage cycle, frozen
        gc.collect()
        waits = probe() is not None
        grown = [[i] for i in range(int(gc.get_freeze_count() * 0.3) + 100)]
        gc.collect()  # frozen objects grew by more than a quarter: unfrozen
        unfrozen = freezer.limit is None and gc.get_freeze_count() == 0
        gc.collect()  # walks everything
        print(json.dumps({
            "waits": waits,
            "unfrozen": unfrozen,
            "reclaimed": probe() is None,
            "complete": freezer.complete,
            "frozen_again": gc.get_freeze_count() > len(grown),
        }))
        """
    )
    assert result == {
        "waits": True,
        "unfrozen": True,
        "reclaimed": True,
        "complete": 1,
        "frozen_again": True,
    }


def test_pauses_are_measured_and_uninstall_restores_collection() -> None:
    result = _run(
        """
        from prometheus_client import CollectorRegistry, generate_latest

        base = [[i] for i in range(100_000)]
        registry = CollectorRegistry()
        freezer = SurvivorFreezer(registry)
        freezer.install()
        keep = [[i] for i in range(10_000)]
        gc.collect()
        text = generate_latest(registry).decode()
        longest = freezer.longest_pause(2)
        freezer.uninstall()
        freezer.uninstall()  # idempotent
        print(json.dumps({
            "text": text,
            "longest": longest,
            "frozen_after_uninstall": gc.get_freeze_count(),
            "callbacks": len(gc.callbacks),
        }))
        """
    )
    families = {f.name: f for f in text_string_to_metric_families(str(result["text"]))}
    counts = {
        s.labels["generation"]: s.value
        for s in families["eventmill_gc_pause_seconds"].samples
        if s.name.endswith("_count")
    }
    assert counts["2"] >= 1
    [frozen] = families["eventmill_gc_frozen_objects"].samples
    assert frozen.value >= 110_000
    assert result["longest"] > 0  # type: ignore[operator]
    assert result["frozen_after_uninstall"] == 0
    assert result["callbacks"] == 0


def test_a_scrape_reads_the_frozen_count_of_the_last_full_collection() -> None:
    """``gc.get_freeze_count()`` walks every frozen object (~10 ms with 10,000
    connections, every event waiting meanwhile): ``/metrics`` reports the count the
    last full collection took instead of walking them again."""
    result = _run(
        """
        import sys
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry()
        freezer = SurvivorFreezer(registry)
        freezer.install()
        keep = [[i] for i in range(10_000)]
        gc.collect()
        at_collection = gc.get_freeze_count()
        later = [[i] for i in range(5_000)]
        gc.freeze()  # frozen outside a collection: not counted until the next one
        walks = []

        def watch(frame, event, arg):
            if event == "c_call" and arg is gc.get_freeze_count:
                walks.append(1)

        sys.setprofile(watch)
        text = generate_latest(registry).decode()
        sys.setprofile(None)
        gc.collect()
        after_next = generate_latest(registry).decode()
        print(json.dumps({
            "text": text, "after_next": after_next, "walks": len(walks),
            "at_collection": at_collection, "now": gc.get_freeze_count(),
        }))
        """
    )

    def frozen(text: object) -> float:
        families = {f.name: f for f in text_string_to_metric_families(str(text))}
        [sample] = families["eventmill_gc_frozen_objects"].samples
        return sample.value

    assert result["walks"] == 0
    assert frozen(result["text"]) == result["at_collection"]
    assert frozen(result["after_next"]) == result["now"]
    assert result["now"] >= result["at_collection"] + 5_000  # type: ignore[operator]


def test_growth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="growth must be positive"):
        SurvivorFreezer(growth=0)


def test_eventmill_serve_runs_the_policy_and_reports_it(tmp_path: Path) -> None:
    server = Server.embedded(tmp_path)
    server.start()
    try:
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
    finally:
        server.stop()
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["eventmill_gc_frozen_objects"] > 10_000  # the process's modules at least
    assert "eventmill_gc_pause_seconds_count" in samples
