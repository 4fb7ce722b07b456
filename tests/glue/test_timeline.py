"""The phase marks a run writes (timeline.json) and how ednerf-bench e2e reads them."""

from __future__ import annotations

import json

from ednerf_ns import timeline


def test_phases_between_process_start_and_exit(tmp_path, monkeypatch):
    monkeypatch.setattr(timeline, "_marks", {})
    clock = iter([10.0, 12.0, 12.5, 13.0, 20.0, 20.5])
    monkeypatch.setattr(timeline.time, "time", lambda: next(clock))
    for name in ("plugin_imported", "setup_start", "dataset_read", "setup_done", "steps_done", "saved"):
        timeline.mark(name)
    marks = json.loads(timeline.write(tmp_path).read_text())["marks"]
    phases = timeline.phases(marks, start=8.0, end=21.0)
    # missing marks (model, latents, first step...) fold into the next phase that has one
    assert phases == {
        "imports": 2.0, "configuration": 2.0, "dataset": 0.5, "trainer setup": 0.5, "steps": 7.0,
        "final save": 0.5, "exit": 0.5,
    }  # fmt: skip
    assert sum(phases.values()) == 21.0 - 8.0


def test_a_mark_made_again_keeps_its_last_time(monkeypatch):
    monkeypatch.setattr(timeline, "_marks", {})
    clock = iter([1.0, 2.0, 3.0])
    monkeypatch.setattr(timeline.time, "time", lambda: next(clock))
    timeline.mark("a")
    timeline.mark("b")
    timeline.mark("a")
    assert list(timeline.marks().items()) == [("b", 2.0), ("a", 3.0)]
